/**
 * cache: keeps recently used blocks of the driver below in memory, bounded, and answers reads
 * from them: for a slow store (a network, an object store) under a hot working set.
 *
 *   bdus run nbd nbd://far/disk --filter cache:size=256M,mode=writeback,readahead=1M
 *
 * The device is cut into blocks (`block`, default 64 KiB); at most `size` bytes of them stay,
 * the least recently used leaving first. A read of a block not cached reads it whole from below
 * (and, when this read continues the previous one, `readahead` bytes past it too). Modes:
 *
 * - `writethrough`: a write goes below before it is answered; the cache keeps a copy.
 * - `writeback` (default): a write is answered once it is in the cache; dirty blocks go below
 *   when they leave the cache, and all of them at a flush, which then flushes below. A FUA
 *   write goes below at once (and is flushed there). So `flush` and FUA make data durable below
 *   before they answer, as a disk's volatile write cache does.
 *
 * Write-zeroes and discard go below at once; the blocks they cover whole leave the cache, and the
 * zeros are laid over the others.
 *
 * Recovery and hot swap: write-back holds acknowledged writes only in this process until a flush,
 * so a driver that dies loses them: a recoverable device refuses it (validate), and takes
 * `writethrough`, which is recoverable when the driver below is. On a hot swap bdus flushes the
 * old driver before the new one starts, so nothing is lost; the new cache starts empty.
 */
import { DriverError } from '../driver/errors.js';
import type { Context, Driver } from '../driver/driver.js';
import type { Filter } from '../filter/filter.js';
import { layer } from '../filter/filter.js';
import { BlockTurns } from '../filter/turns.js';
import type { Parameters } from '../filter/parameters.js';
import { readInto } from '../driver/read-data.js';

export const description = 'a bounded cache of blocks in memory, write-back or write-through, with read-ahead';

export const parameters = {
  size: { type: 'size', description: 'bytes of blocks kept (default 64M)' },
  block: { type: 'size', description: 'the unit cached, a power of two from 4K (default 64K)' },
  mode: { type: 'string', description: 'writeback (default: flush and FUA write through) or writethrough' },
  readahead: { type: 'size', description: 'bytes read past a read that continues the last one (default 0)' },
} as const satisfies Parameters;

export interface CacheOptions {
  size?: number;
  block?: number;
  mode?: string;
  readahead?: number;
}

interface Entry {
  data: Buffer;
  dirty: boolean;
}

export default function cache(options: CacheOptions = {}): Filter {
  const block = options.block ?? 64 << 10;
  if (block < 4096 || (block & (block - 1)) !== 0) throw new DriverError('EINVAL', `filter cache: block=${block} must be a power of two from 4096`);
  const mode = options.mode ?? 'writeback';
  if (mode !== 'writeback' && mode !== 'writethrough') throw new DriverError('EINVAL', `filter cache: mode=${mode}: writeback or writethrough`);
  const capacity = Math.max(1, Math.floor((options.size ?? 64 << 20) / block));
  const readahead = Math.ceil((options.readahead ?? 0) / block);

  return <State>(next: Driver<State>): Driver<State> => {
    if (!next.read) throw new DriverError('EINVAL', 'filter cache: the driver below cannot be read');
    /** Cached blocks, least recently used first (a Map keeps insertion order). */
    const entries = new Map<number, Entry>();
    /** Blocks being filled, written back or changed: one at a time per block. */
    const turns = new BlockTurns();
    const turn = <T>(b: number, fn: () => Promise<T>) => turns.run(b, fn);
    let lastReadEnd = -1;

    const blockLength = (b: number, ctx: Context<State>) => Math.min(block, ctx.attributes.size - b * block);

    function touch(b: number, entry: Entry): void {
      entries.delete(b);
      entries.set(b, entry);
    }

    /** Makes room: the least recently used blocks leave, dirty ones written below first. */
    async function evict(ctx: Context<State>): Promise<void> {
      while (entries.size > capacity) {
        const [b, entry] = entries.entries().next().value!;
        entries.delete(b);
        if (entry.dirty) {
          await turn(b, async () => {
            // A write may have brought the block back meanwhile: its copy is newer.
            if (entries.has(b)) return;
            try {
              await next.write!(entry.data, b * block, ctx);
            } catch (error) {
              entries.set(b, entry); // kept dirty, for the next flush to try again
              throw error;
            }
          });
        }
      }
    }

    /**
     * Reads block `b` (and up to `more` blocks after it, none cached or busy) from below into the
     * cache; the caller holds `b`'s turn. Blocks after `b` are cached only if nothing touched
     * them meanwhile (a write's copy is newer).
     */
    async function load(b: number, more: number, ctx: Context<State>): Promise<Entry> {
      let count = 1;
      while (count <= more && (b + count) * block < ctx.attributes.size && !entries.has(b + count) && !turns.has(b + count)) count++;
      const length = Math.min(count * block, ctx.attributes.size - b * block);
      const data = Buffer.allocUnsafeSlow(length);
      await readInto(next.read!(data, b * block, ctx), data);
      for (let i = 1; i < count; i++) {
        if (!entries.has(b + i) && !turns.has(b + i)) entries.set(b + i, { data: data.subarray(i * block, Math.min((i + 1) * block, length)), dirty: false });
      }
      const made = { data: count > 1 ? data.subarray(0, block) : data, dirty: false };
      entries.set(b, made);
      return made;
    }

    /** Block `b` from the cache, loaded if it is not there. */
    async function fill(b: number, more: number, ctx: Context<State>): Promise<Entry> {
      const cached = entries.get(b);
      if (cached) {
        touch(b, cached);
        return cached;
      }
      const entry = await turn(b, () => Promise.resolve(entries.get(b) ?? load(b, more, ctx)));
      await evict(ctx);
      return entry;
    }

    /** Calls `fn` for each block-sized piece of [offset, offset + size). */
    async function pieces(offset: number, size: number, fn: (b: number, at: number, done: number, length: number) => Promise<void>): Promise<void> {
      for (let done = 0; done < size; ) {
        const at = (offset + done) % block;
        const length = Math.min(size - done, block - at);
        await fn((offset + done - at) / block, at, done, length);
        done += length;
      }
    }

    async function writeBack(ctx: Context<State>): Promise<void> {
      const dirty = [...entries].filter(([, e]) => e.dirty).sort(([a], [b]) => a - b);
      await Promise.all(
        dirty.map(([b, entry]) =>
          turn(b, async () => {
            if (!entry.dirty) return;
            entry.dirty = false;
            try {
              await next.write!(entry.data, b * block, ctx);
            } catch (error) {
              entry.dirty = true;
              throw error;
            }
          }),
        ),
      );
    }

    /** Lays `data` over the cached copies of its blocks, after it went below: the cache must not be older. */
    async function update(data: Buffer, offset: number): Promise<void> {
      await pieces(offset, data.length, (b, at, done, length) =>
        turn(b, async () => {
          const entry = entries.get(b);
          if (entry) data.copy(entry.data, at, done, done + length);
        }),
      );
    }

    /** Zeroing: whole blocks leave the cache (dirty or not: zeros replace them), the zeros are laid over the others. */
    async function forget(offset: number, size: number): Promise<void> {
      await pieces(offset, size, (b, at, _done, length) =>
        turn(b, async () => {
          const entry = entries.get(b);
          if (entry && length === entry.data.length) entries.delete(b);
          else entry?.data.fill(0, at, at + length);
        }),
      );
    }

    return layer(next, {
      validate(ctx) {
        if (mode === 'writeback' && ctx.attributes.recoverable) {
          throw new DriverError('EINVAL', 'filter cache: write-back loses acknowledged writes if its driver dies; a recoverable device takes mode=writethrough');
        }
        return next.validate?.(ctx);
      },
      async terminate(ctx) {
        await writeBack(ctx);
        await next.terminate?.(ctx);
      },
      async read(buffer, offset, ctx) {
        const more = readahead > 0 && offset === lastReadEnd ? readahead : 0;
        lastReadEnd = offset + buffer.length;
        await pieces(offset, buffer.length, async (b, at, done, length) => {
          const entry = await fill(b, more, ctx);
          entry.data.copy(buffer, done, at, at + length);
        });
      },
      async write(data, offset, ctx) {
        if (mode === 'writethrough') {
          await next.write!(data, offset, ctx);
          return update(data, offset);
        }
        await pieces(offset, data.length, (b, at, done, length) =>
          turn(b, async () => {
            let entry = entries.get(b);
            if (!entry && length === blockLength(b, ctx)) {
              entry = { data: Buffer.allocUnsafeSlow(length), dirty: true };
              entries.set(b, entry);
            }
            entry ??= await load(b, 0, ctx);
            data.copy(entry.data, at, done, done + length);
            entry.dirty = true;
            touch(b, entry);
          }),
        );
        await evict(ctx);
      },
      async fuaWrite(data, offset, ctx) {
        await next.fuaWrite!(data, offset, ctx);
        await update(data, offset);
      },
      // Write-back must be told to write back: it flushes even if the driver below has no flush.
      async flush(ctx) {
        await writeBack(ctx);
        await next.flush?.(ctx);
      },
      // Before (no write-back of old data lands after the zeros) and after (no read that raced
      // the zeroing left old data cached).
      async writeZeros(offset, size, mayUnmap, ctx) {
        await forget(offset, size);
        await next.writeZeros!(offset, size, mayUnmap, ctx);
        await forget(offset, size);
      },
      async discard(offset, size, ctx) {
        await forget(offset, size);
        await next.discard!(offset, size, ctx);
        await forget(offset, size);
      },
    }, { provides: mode === 'writeback' && next.write ? ['flush'] : [] });
  };
}
