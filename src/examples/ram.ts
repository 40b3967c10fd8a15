/**
 * ram: a device backed by this process's memory, committed only as it is written.
 *
 *   bdus run ram [--size 1G]
 *
 * The memory is anonymous mappings (not Node buffers): an untouched page costs nothing and reads
 * as zeros, and discard and write-zeroes hand whole pages back to the system at once
 * (madvise(MADV_DONTNEED)), so mkfs's discard of the whole device frees memory instead of
 * touching every page, and `blkdiscard` takes what it takes on the kernel's own loop device.
 *
 * Not recoverable: its contents die with the process, and a new instance (`bdus rerun`) starts
 * with a device full of zeros.
 */
import type { Context, Driver } from '../driver/driver.js';
import { native } from '../native.js';

export const description = 'a device in this process\'s memory, committed only as written (give --size; default 1 GiB)';

/**
 * Memory is kept in chunks: one Buffer cannot exceed 4 GiB. Each is mapped whole, whatever the
 * size: an unwritten page costs nothing, and a resize within a chunk maps nothing new.
 */
const CHUNK = 1 << 30;
const PAGE = native.pageSize;

type Ram = Buffer[];

function forEachPiece(offset: number, size: number, fn: (chunk: Buffer, at: number, done: number, length: number) => void, ctx: Context<Ram>): void {
  let done = 0;
  while (done < size) {
    const position = offset + done;
    const at = position % CHUNK;
    const length = Math.min(size - done, CHUNK - at);
    fn(ctx.state[Math.floor(position / CHUNK)]!, at, done, length);
    done += length;
  }
}

/** Zeros [at, at + length) of a chunk: whole pages are dropped, the partial pages at its ends filled. */
function zero(chunk: Buffer, at: number, _done: number, length: number): void {
  const first = Math.ceil(at / PAGE) * PAGE;
  const last = Math.floor((at + length) / PAGE) * PAGE;
  if (last <= first) {
    chunk.fill(0, at, at + length);
    return;
  }
  chunk.fill(0, at, first);
  native.dropPages(chunk, first, last - first);
  chunk.fill(0, last, at + length);
}

const ram: Driver<Ram> = {
  attributes: { size: 1 << 30, maxConcurrentCallbacks: 64 },

  initialize(ctx) {
    ctx.state = [];
    while (ctx.state.length * CHUNK < ctx.attributes.size) ctx.state.push(native.mapAnonymous(CHUNK));
  },

  // Growing maps chunks (the new range reads as zeros); shrinking drops what lies past the end.
  resize(size, ctx) {
    const old = ctx.attributes.size;
    if (size < old) forEachPiece(size, old - size, zero, ctx);
    while (ctx.state.length * CHUNK < size) ctx.state.push(native.mapAnonymous(CHUNK));
    ctx.state.length = Math.ceil(size / CHUNK);
  },

  read(buffer, offset, ctx) {
    if ((offset % CHUNK) + buffer.length <= CHUNK) {
      ctx.state[Math.floor(offset / CHUNK)]!.copy(buffer, 0, offset % CHUNK, (offset % CHUNK) + buffer.length);
      return;
    }
    forEachPiece(offset, buffer.length, (chunk, at, done, length) => chunk.copy(buffer, done, at, at + length), ctx);
  },

  write(data, offset, ctx) {
    if ((offset % CHUNK) + data.length <= CHUNK) {
      data.copy(ctx.state[Math.floor(offset / CHUNK)]!, offset % CHUNK);
      return;
    }
    forEachPiece(offset, data.length, (chunk, at, done, length) => data.copy(chunk, at, done, done + length), ctx);
  },

  writeZeros(offset, size, _mayUnmap, ctx) {
    forEachPiece(offset, size, zero, ctx);
  },

  discard(offset, size, ctx) {
    forEachPiece(offset, size, zero, ctx);
  },
};

export default ram;
