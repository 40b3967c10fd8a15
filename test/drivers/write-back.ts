/**
 * A deliberately broken driver for `bdus check`: a write-back cache in front of a file.
 *
 *   write-back.js IMAGE
 *
 * Writes land in a cache in memory and are acknowledged at once; reads see the cache first. A
 * flush is acknowledged at once too, and writes the cache back to IMAGE afterwards, in the
 * background. terminate writes the cache back and waits for it, so a hot swap loses nothing.
 *
 * What is wrong: a crash loses the cache, so writes the client saw acknowledged are gone (a
 * recoverable device must never forget them); and since a flush is acknowledged before its data
 * is down, even writes covered by a completed flush are lost.
 */
import { constants, promises as fsp, statSync } from 'node:fs';
import type { Driver } from '../../src/index.js';

const BLOCK = 4096;

interface State {
  file: fsp.FileHandle;
  /** Block offset -> its data; and what is being written back (read under the cache). */
  cache: Map<number, Buffer>;
  flushing: Map<number, Buffer>;
  writing: Promise<void>;
  pending: boolean;
}

async function writeBack(state: State): Promise<void> {
  state.flushing = state.cache;
  state.cache = new Map();
  for (const [offset, data] of state.flushing) await state.file.write(data, 0, data.length, offset);
  await state.file.datasync();
  state.flushing = new Map();
}

function overlay(buffer: Buffer, offset: number, entries: Map<number, Buffer>): void {
  for (const [at, data] of entries) {
    const from = Math.max(at, offset);
    const to = Math.min(at + data.length, offset + buffer.length);
    if (from < to) data.copy(buffer, from - offset, from - at, to - at);
  }
}

export default function writeBackDriver(args: readonly string[]): Driver<State> {
  const path = args[0]!;
  const size = statSync(path).size;
  return {
    attributes: { size, maxConcurrentCallbacks: 8, logicalBlockSize: 4096 },
    async initialize(ctx) {
      ctx.state = { file: await fsp.open(path, constants.O_RDWR), cache: new Map(), flushing: new Map(), writing: Promise.resolve(), pending: false };
    },
    async terminate(ctx) {
      await ctx.state.writing;
      await writeBack(ctx.state);
      await ctx.state.file.close();
    },
    async read(buffer, offset, ctx) {
      // The maps as they are now: what is written back meanwhile stays in them (maps are replaced, never cleared).
      const { flushing, cache } = ctx.state;
      await ctx.state.file.read(buffer, 0, buffer.length, offset);
      overlay(buffer, offset, flushing);
      overlay(buffer, offset, cache);
    },
    write(data, offset, ctx) {
      // Cached by 4 KiB block, so that a later write replaces exactly what it overwrites.
      for (let at = 0; at < data.length; at += BLOCK) {
        const piece = data.subarray(at, Math.min(at + BLOCK, data.length));
        ctx.state.cache.delete(offset + at); // the latest last
        ctx.state.cache.set(offset + at, Buffer.from(piece));
      }
    },
    flush(ctx) {
      // Acknowledged now; down later.
      const state = ctx.state;
      if (state.pending) return; // the write-back to come takes this flush's writes too
      state.pending = true;
      state.writing = state.writing
        .then(() => new Promise((resolve) => setTimeout(resolve, 200)))
        .then(() => {
          state.pending = false;
          return writeBack(state);
        });
    },
  };
}
