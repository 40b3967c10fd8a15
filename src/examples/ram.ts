/**
 * ram: a device backed by this process's memory, committed only as it is written.
 *
 *   bdus run ram [--size 1G]
 *
 * The memory is anonymous mappings (not Node buffers): an untouched page costs nothing and reads
 * as zeros, and discard and write-zeroes hand whole pages back to the system at once
 * (madvise(MADV_DONTNEED)), so mkfs's discard of the whole device frees memory instead of
 * touching every page, and `blkdiscard` takes what it takes on the kernel's own loop device.
 * Without lanes the mapping asks for transparent huge pages (MADV_HUGEPAGE, where the kernel
 * has them): memory is then committed 2 MiB at a time (mkfs.ext4 of 2 GiB leaves 17 MiB
 * resident instead of 2), but a first write costs one fault per 2 MiB rather than 512, and
 * the kernel's copies out of it walk one entry per 2 MiB: 1 MiB reads 1.23-1.26x
 * (docs/performance.md).
 *
 * Over NBD (an export, kernel NBD) a write of 32 KiB and more is received straight into the
 * memory (writeTarget): the socket's copy is the only one. On ublk, writeTarget makes the device
 * use user copy: every write is read from the request straight into the memory, and reads are
 * written to it from there (docs/performance.md, "ublk with user copy").
 *
 * Lane-safe (`--lanes N`): the lanes share one memory (a memfd per GiB, mapped by each thread).
 *
 * Not recoverable: its contents die with the process, and a new instance (`bdus rerun`) starts
 * with a device full of zeros.
 */
import { closeSync } from 'node:fs';
import type { Context, Driver } from '../driver/driver.js';
import { native } from '../native.js';

export const description = 'a device in this process\'s memory, committed only as written (give --size; default 1 GiB)';

/**
 * Memory is kept in chunks: one Buffer cannot exceed 4 GiB. Each is mapped whole, whatever the
 * size: an unwritten page costs nothing, and a resize within a chunk maps nothing new.
 */
const CHUNK = 1 << 30;
const PAGE = native.pageSize;

/** What lane 0 hands the other lanes for each chunk (laneShare): the memory and its page map. */
interface SharedChunk {
  readonly fd: number;
  readonly written: SharedArrayBuffer;
}

/**
 * A chunk of memory, and which of its pages hold data: a read of pages that all do answers with
 * a view of them (the kernel then copies the data once, not twice), but a view of pages never
 * written would make the kernel commit them (it pins them to copy from), so those are copied
 * (as zeros) or answered from a shared buffer of zeros.
 *
 * Without lanes the memory is private to the process's main thread (an anonymous mapping). With
 * lanes every thread maps one memfd per chunk and shares the page map (a SharedArrayBuffer
 * whose bits change atomically: two lanes writing neighbouring pages must not lose each
 * other's bit).
 */
class Chunk {
  readonly memory: Buffer;
  readonly written: Uint8Array;
  /** The memfd (lanes only), or -1. */
  readonly fd: number;

  constructor(mode: 'private' | 'lanes' | SharedChunk) {
    const bytes = CHUNK / PAGE / 8;
    if (mode === 'private') {
      this.fd = -1;
      this.memory = native.mapAnonymous(CHUNK, true);
      this.written = new Uint8Array(bytes);
    } else {
      this.fd = mode === 'lanes' ? native.memfd('bdus-ram', CHUNK) : mode.fd;
      this.memory = native.mapShared(this.fd, CHUNK);
      this.written = new Uint8Array(mode === 'lanes' ? new SharedArrayBuffer(bytes) : mode.written);
    }
  }

  /** 1: every page of [at, at + length) holds data; 0: none does; -1: some do. */
  state(at: number, length: number): number {
    const first = this.has(Math.floor(at / PAGE));
    for (let page = Math.floor(at / PAGE) + 1; page * PAGE < at + length; page++) if (this.has(page) !== first) return -1;
    return first ? 1 : 0;
  }

  /** Marks the pages of [at, at + length) as holding data, or (`data` false) as dropped. */
  mark(at: number, length: number, data: boolean): void {
    let page = Math.floor(at / PAGE);
    const end = Math.ceil((at + length) / PAGE);
    for (; page < end && page & 7; page++) this.markOne(page, data);
    // Whole bytes: every page in them is this request's, so no other lane's bit is lost.
    if (page < (end & ~7)) {
      this.written.fill(data ? 0xff : 0, page >> 3, end >> 3);
      page = end & ~7;
    }
    for (; page < end; page++) this.markOne(page, data);
  }

  /** Copies [at, at + length) into `buffer` at `done`, pages never written as zeros (untouched). */
  copyOut(buffer: Buffer, at: number, done: number, length: number): void {
    for (let end = at + length; at < end; ) {
      const next = Math.min(end, (Math.floor(at / PAGE) + 1) * PAGE);
      if (this.has(Math.floor(at / PAGE))) this.memory.copy(buffer, done, at, next);
      else buffer.fill(0, done, done + next - at);
      done += next - at;
      at = next;
    }
  }

  /** Gives the pages of [at, at + length) (whole pages) back to the system: they read as zeros. */
  drop(at: number, length: number): void {
    native.dropPages(this.memory, at, length, this.fd >= 0);
    this.mark(at, length, false);
  }

  private markOne(page: number, data: boolean): void {
    if (data) Atomics.or(this.written, page >> 3, 1 << (page & 7));
    else Atomics.and(this.written, page >> 3, ~(1 << (page & 7)));
  }

  private has(page: number): boolean {
    return (this.written[page >> 3]! & (1 << (page & 7))) !== 0;
  }
}

type Ram = Chunk[];

/** Zeros that read callbacks answer with (views of it); grown to the largest read, never written. */
let zeros = Buffer.alloc(0);

function forEachPiece(offset: number, size: number, fn: (chunk: Chunk, at: number, done: number, length: number) => void, ctx: Context<Ram>): void {
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
function zero(chunk: Chunk, at: number, _done: number, length: number): void {
  const first = Math.ceil(at / PAGE) * PAGE;
  const last = Math.floor((at + length) / PAGE) * PAGE;
  if (last <= first) {
    chunk.memory.fill(0, at, at + length);
    return;
  }
  chunk.memory.fill(0, at, first);
  chunk.drop(first, last - first);
  chunk.memory.fill(0, last, at + length);
}

function store(data: Buffer, chunk: Chunk, at: number, done: number, length: number): void {
  // Data received straight into the chunk (writeTarget) is in place already.
  if (data.buffer !== chunk.memory.buffer || data.byteOffset + done !== chunk.memory.byteOffset + at) data.copy(chunk.memory, at, done, done + length);
  chunk.mark(at, length, true);
}

const ram: Driver<Ram> = {
  attributes: { size: 1 << 30, maxConcurrentCallbacks: 64 },

  // With lanes, each lane maps lane 0's memory (Chunk): every lane sees every write.
  laneSafe: true,

  initialize(ctx) {
    const shared = ctx.laneShared as SharedChunk[] | undefined;
    if (shared) {
      ctx.state = shared.map((chunk) => new Chunk(chunk));
      return;
    }
    ctx.state = [];
    while (ctx.state.length * CHUNK < ctx.attributes.size) ctx.state.push(new Chunk(ctx.lane === 0 ? 'lanes' : 'private'));
  },

  laneShare(ctx): SharedChunk[] {
    return ctx.state.map(({ fd, written }) => ({ fd, written: written.buffer as SharedArrayBuffer }));
  },

  // Lane 0 owns the memfds; the other lanes have stopped (and unmapped as they are collected).
  terminate(ctx) {
    if (ctx.lane === 0) for (const chunk of ctx.state) closeSync(chunk.fd);
  },

  // Growing maps chunks (the new range reads as zeros); shrinking drops what lies past the end.
  // With lanes, lane 0 does it; the other lanes then map what its laneShare now names.
  resize(size, ctx) {
    const shared = ctx.laneShared as SharedChunk[] | undefined;
    if (shared) {
      while (ctx.state.length < shared.length) ctx.state.push(new Chunk(shared[ctx.state.length]!));
      ctx.state.length = shared.length;
      return;
    }
    const old = ctx.attributes.size;
    if (size < old) forEachPiece(size, old - size, zero, ctx);
    while (ctx.state.length * CHUNK < size) ctx.state.push(new Chunk(ctx.lane === 0 ? 'lanes' : 'private'));
    // A lane still maps a chunk dropped here until its own resize: the mapping keeps the memory.
    for (const dropped of ctx.state.splice(Math.ceil(size / CHUNK))) if (dropped.fd >= 0) closeSync(dropped.fd);
  },

  // A read within one chunk answers with memory of its own where it can (see Chunk).
  read(buffer, offset, ctx) {
    const at = offset % CHUNK;
    const chunk = ctx.state[Math.floor(offset / CHUNK)]!;
    if (at + buffer.length <= CHUNK) {
      const state = chunk.state(at, buffer.length);
      if (state === 1) return chunk.memory.subarray(at, at + buffer.length);
      if (state === 0) {
        if (zeros.length < buffer.length) zeros = Buffer.alloc(buffer.length);
        return zeros.subarray(0, buffer.length);
      }
    }
    forEachPiece(offset, buffer.length, (c, from, done, length) => c.copyOut(buffer, from, done, length), ctx);
  },

  // A write within one chunk has its data received where it will live (NBD: the socket reads
  // straight into the chunk; ublk: the request's data is read into it), and write() then only
  // marks the pages.
  writeTarget(offset, size, ctx) {
    const at = offset % CHUNK;
    return at + size <= CHUNK ? ctx.state[Math.floor(offset / CHUNK)]!.memory.subarray(at, at + size) : undefined;
  },

  write(data, offset, ctx) {
    forEachPiece(offset, data.length, (chunk, at, done, length) => store(data, chunk, at, done, length), ctx);
  },

  writeZeros(offset, size, _mayUnmap, ctx) {
    forEachPiece(offset, size, zero, ctx);
  },

  discard(offset, size, ctx) {
    forEachPiece(offset, size, zero, ctx);
  },
};

export default ram;
