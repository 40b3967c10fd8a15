/**
 * chunked: a device stored as a directory of fixed-size chunk files, each created when first
 * written and deleted when discarded whole: easy to copy, sync, back up or ship piecemeal
 * (rsync, an object store's sync tool), and sparse at two levels (missing chunks, holes).
 *
 *   bdus run chunked DIR --size 100G [--chunk 4M]
 *
 * DIR/bdus-chunked.json records the device's size and chunk size when DIR is first used (give
 * --size then); later runs take them from there (a different --size is an error: `bdus resize`
 * changes it). Chunk
 * N is DIR/chunk-N (N in hex, zero-padded), `chunk` bytes long, sparse. A chunk that does not
 * exist reads as zeros; discard and write-zeroes delete the chunks they cover whole and punch
 * holes in the others. Flush (and terminate) fsyncs the chunks written since the last one, then DIR.
 *
 * Recoverable: every byte is in DIR before its request is answered (written to the files, which
 * outlive the process), and each operation is idempotent.
 */
import { closeSync, constants, existsSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import type { Context, Driver } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { DriverFactory, DriverOptions } from '../driver/module.js';
import { fallocate } from '../native.js';
import { parseSize } from '../util/units.js';
import { FileIo } from './file-io.js';

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
/**
 * Chunk files kept open at once; more are closed, least recently used first. Opening one costs a
 * path lookup on the request's way, so the hot chunks should fit: 1024 hold 4 GiB of the
 * default 4 MiB chunks, far within a process's descriptors (Node raises its soft limit to the
 * hard one, 20000 here, often more).
 */
const OPEN_CHUNKS = 1024;
const META = 'bdus-chunked.json';

export const usage = 'DIR';
export const description = 'a directory of fixed-size chunk files, created as written, deleted when discarded (recoverable)';
export const options = {
  chunk: { type: 'string', description: 'the chunk size when DIR is new (default 4M)' },
} as const satisfies DriverOptions;

export interface ChunkedOptions {
  /** The chunk size when the directory is new (default 4 MiB). */
  chunk?: number;
}

interface Layout {
  size: number;
  chunk: number;
}

interface Chunks {
  /** The chunk files' reads, writes and fdatasyncs (io_uring; at once in a directory in memory). */
  io: FileIo;
  /** Open chunk files by index, least recently used first. */
  open: Map<number, OpenChunk>;
  /** Chunks written since the last flush, open or closed since. */
  dirty: Set<number>;
}

/**
 * An open chunk file and the transfers that use it. One in use is never closed under them: a
 * transfer queued on the ring (or waiting in the thread pool) names the descriptor by number,
 * and a number closed and given to the next chunk opened would take it to the wrong file (seen
 * before 2026-12-05 with 4 KiB chunks: 16 concurrent 1 MiB transfers opened more than
 * OPEN_CHUNKS chunks meanwhile).
 */
interface OpenChunk {
  fd: number;
  /** Transfers (and fdatasyncs) using the descriptor now. */
  users: number;
  /** Forgotten (its file deleted) while in use: closed by its last user. */
  closing: boolean;
}

export function chunked(dir: string, options: ChunkedOptions = {}): Driver<Chunks> {
  if (!dir) throw new DriverError('EINVAL', 'usage: bdus run chunked DIR --size SIZE [--chunk SIZE]');
  const metaPath = `${dir}/${META}`;
  // An existing directory says its layout; a new one gets it at initialize, from the device's size.
  let layout: Layout | undefined = existsSync(metaPath) ? (JSON.parse(readFileSync(metaPath, 'utf8')) as Layout) : undefined;
  const chunk = layout?.chunk ?? options.chunk ?? 4 << 20;
  if (layout && options.chunk !== undefined && options.chunk !== layout.chunk) {
    throw new DriverError('EINVAL', `chunked: ${dir} holds ${layout.chunk}-byte chunks; it cannot change to ${options.chunk}`);
  }
  if (chunk < 4096 || (chunk & (chunk - 1)) !== 0) throw new DriverError('EINVAL', `chunked: --chunk ${chunk} must be a power of two from 4096`);
  const path = (index: number) => `${dir}/chunk-${index.toString(16).padStart(10, '0')}`;

  function saveLayout(): void {
    mkdirSync(dir, { recursive: true });
    writeFileSync(`${metaPath}.new`, `${JSON.stringify(layout)}\n`);
    renameSync(`${metaPath}.new`, metaPath);
  }

  /**
   * The chunk's open file, held for one more user until release(); undefined if it does not
   * exist and `create` is false. Beyond OPEN_CHUNKS open files, the least recently used one that
   * nobody uses is closed; if it is dirty, the next flush opens it again to sync it (an fsync
   * here would stall every request behind a disk's write-back).
   */
  function hold(state: Chunks, index: number, create: boolean): OpenChunk | undefined {
    let found = state.open.get(index);
    if (found !== undefined) {
      state.open.delete(index);
      state.open.set(index, found);
      found.users++;
      return found;
    }
    let fd: number;
    try {
      fd = openSync(path(index), constants.O_RDWR | (create ? constants.O_CREAT : 0), 0o600);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT' && !create) return undefined;
      throw error;
    }
    if (create) ftruncateSync(fd, chunk);
    found = { fd, users: 1, closing: false };
    state.open.set(index, found);
    if (state.open.size > OPEN_CHUNKS) {
      for (const [oldest, open] of state.open) {
        if (open.users > 0) continue;
        closeSync(open.fd);
        state.open.delete(oldest);
        break;
      }
    }
    return found;
  }

  function release(open: OpenChunk): void {
    if (--open.users === 0 && open.closing) closeSync(open.fd);
  }

  /** `fn` with the chunk's descriptor, held meanwhile; nothing if the chunk does not exist. */
  async function using(state: Chunks, index: number, fn: (fd: number) => Promise<void>): Promise<void> {
    const open = hold(state, index, false);
    if (!open) return;
    try {
      await fn(open.fd);
    } finally {
      release(open);
    }
  }

  function forget(state: Chunks, index: number): void {
    const open = state.open.get(index);
    if (open !== undefined) {
      state.open.delete(index);
      if (open.users > 0) open.closing = true;
      else closeSync(open.fd);
    }
    state.dirty.delete(index);
    try {
      unlinkSync(path(index));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }

  /**
   * One piece of a read or write, within one chunk, with the chunk held until it ends; made at
   * once (no promise) where FileIo makes it at once. A write marks its chunk dirty once done,
   * not before: a flush meanwhile would sync it too early and forget it.
   */
  function transfer(state: Chunks, index: number, writing: boolean, view: Buffer, at: number): Promise<void> | void {
    const open = hold(state, index, writing);
    if (!open) return void view.fill(0); // a chunk never written (reads only: writes create it)
    let pending: Promise<void> | void;
    try {
      pending = writing ? state.io.write(open.fd, view, at) : state.io.read(open.fd, view, at);
    } catch (error) {
      release(open);
      throw error;
    }
    if (!pending) {
      if (writing) state.dirty.add(index);
      return release(open);
    }
    return pending.then(
      () => {
        if (writing) state.dirty.add(index);
        release(open);
      },
      (error: unknown) => {
        release(open);
        throw error;
      },
    );
  }

  /** A read or write: one transfer where it lies within one chunk (almost always), else piece by piece. */
  function transfers(state: Chunks, writing: boolean, buffer: Buffer, offset: number): Promise<void> | void {
    const at = offset % chunk;
    if (at + buffer.length <= chunk) return transfer(state, (offset - at) / chunk, writing, buffer, at);
    return pieces(offset, buffer.length, (index, at, done, length) => transfer(state, index, writing, buffer.subarray(done, done + length), at));
  }

  /** Calls `fn` for each piece of [offset, offset + size) within one chunk. */
  async function pieces(offset: number, size: number, fn: (index: number, at: number, done: number, length: number) => Promise<void> | void): Promise<void> {
    for (let done = 0; done < size; ) {
      const at = (offset + done) % chunk;
      const length = Math.min(size - done, chunk - at);
      await fn((offset + done - at) / chunk, at, done, length);
      done += length;
    }
  }

  /** Syncs the chunks written since the last sync, then the directory (new chunks' names). */
  async function sync(state: Chunks): Promise<void> {
    const dirty = [...state.dirty];
    state.dirty.clear();
    // OPEN_CHUNKS at a time, each held while it syncs (opened again if it was closed since it
    // was written: fsync syncs the file, whichever descriptor), so that none is closed, and
    // its number reused, meanwhile. One deleted since (discarded, or by hand) is skipped.
    for (let first = 0; first < dirty.length; first += OPEN_CHUNKS) {
      const held: OpenChunk[] = [];
      try {
        for (const index of dirty.slice(first, first + OPEN_CHUNKS)) {
          const open = hold(state, index, false);
          if (open) held.push(open);
        }
        await Promise.all(held.map((open) => state.io.datasync(open.fd)));
      } finally {
        held.forEach(release);
      }
    }
    const directory = openSync(dir, constants.O_RDONLY);
    try {
      fsyncSync(directory);
    } finally {
      closeSync(directory);
    }
  }

  async function zero(offset: number, size: number, ctx: Context<Chunks>): Promise<void> {
    await pieces(offset, size, async (index, at, _done, length) => {
      if (length === chunk) return forget(ctx.state, index);
      await using(ctx.state, index, async (file) => {
        await fallocate(file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, length);
        ctx.state.dirty.add(index);
      });
    });
  }

  return {
    attributes: { ...(layout ? { size: layout.size } : {}), maxConcurrentCallbacks: 16 },

    initialize(ctx) {
      if (!layout) {
        layout = { size: ctx.attributes.size, chunk };
        saveLayout();
      } else if (ctx.attributes.size !== layout.size) {
        throw new DriverError('EINVAL', `chunked: ${dir} is a ${layout.size}-byte device, not ${ctx.attributes.size} (bdus resize changes it)`);
      }
      ctx.state = { io: new FileIo(dir, `${dir}: a chunk file is shorter than a chunk`), open: new Map(), dirty: new Set() };
    },

    // What a flush does, then the ring and the files closed (the ring first: a transfer still in
    // flight, abandoned, keeps its memory; FileIo.close).
    async terminate(ctx) {
      try {
        await sync(ctx.state);
      } finally {
        ctx.state.io.close();
        for (const { fd } of ctx.state.open.values()) closeSync(fd);
      }
    },

    read: (buffer, offset, ctx) => transfers(ctx.state, false, buffer, offset),
    write: (data, offset, ctx) => transfers(ctx.state, true, data, offset),
    flush: (ctx) => sync(ctx.state),

    writeZeros: (offset, size, _mayUnmap, ctx) => zero(offset, size, ctx),
    discard: (offset, size, ctx) => zero(offset, size, ctx),

    // Growing: new chunks do not exist yet (zeros). Shrinking: what lies past the end goes.
    async resize(size, ctx) {
      const old = ctx.attributes.size;
      if (size < old) await zero(size, Math.ceil(old / chunk) * chunk - size, ctx);
      layout = { size, chunk };
      saveLayout();
    },
  };
}

const factory: DriverFactory<Chunks> = (args, values) => {
  if (args.length !== 1) throw new DriverError('EINVAL', 'usage: bdus run chunked DIR [--size SIZE] [--chunk SIZE]');
  return chunked(args[0]!, { chunk: values.chunk === undefined ? undefined : parseSize(String(values.chunk), '--chunk') });
};
export default factory;
