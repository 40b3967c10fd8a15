/**
 * memory: a sparse device in this process's memory that allocates as it is written, and says
 * where its holes are.
 *
 *   bdus run memory --size 1T
 *   import { memory } from 'bdus/drivers';  run(memory(), { attributes: { size: 2 ** 40 } })
 *
 * Memory is kept in pages of 64 KiB, allocated on the first write that is not all zeros and
 * freed when write-zeroes or discard covers them whole, so a 1 TiB device costs what was written.
 * Reads of an unallocated page are zeros, and NBD block-status queries report those pages as
 * holes (the `ram` example maps all of its size instead, and reports everything as data).
 *
 * Not recoverable: its contents die with the process.
 */
import type { Context, Driver, Extent } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { DriverFactory } from '../driver/module.js';

export const description = 'a sparse device in memory: allocates 64 KiB pages as written, reports holes (give --size)';

const PAGE = 64 << 10;
/** What an unallocated page reads as; read callbacks answer with views of it, and nothing writes it. */
const ZEROS = Buffer.alloc(PAGE);

type Pages = Map<number, Buffer>;

function allZero(data: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (data[i] !== 0) return false;
  return true;
}

export function memory(): Driver<Pages> {
  /** Calls `fn` for each page-sized piece of [offset, offset + size). */
  function pieces(offset: number, size: number, fn: (page: number, at: number, done: number, length: number) => void): void {
    for (let done = 0; done < size; ) {
      const position = offset + done;
      const at = position % PAGE;
      const length = Math.min(size - done, PAGE - at);
      fn((position - at) / PAGE, at, done, length);
      done += length;
    }
  }

  function zero(offset: number, size: number, ctx: Context<Pages>): void {
    pieces(offset, size, (page, at, _done, length) => {
      if (length === PAGE) ctx.state.delete(page);
      else ctx.state.get(page)?.fill(0, at, at + length);
    });
  }

  return {
    attributes: { maxConcurrentCallbacks: 64 },

    initialize(ctx) {
      ctx.state = new Map();
    },

    // A read within one page answers with a view of it (or of the zeros): the frontend hands
    // that memory to the kernel, which copies the data once.
    read(buffer, offset, ctx) {
      const start = offset % PAGE;
      if (start + buffer.length <= PAGE) return (ctx.state.get((offset - start) / PAGE) ?? ZEROS).subarray(start, start + buffer.length);
      pieces(offset, buffer.length, (page, at, done, length) => {
        const stored = ctx.state.get(page);
        if (stored) stored.copy(buffer, done, at, at + length);
        else buffer.fill(0, done, done + length);
      });
    },

    write(data, offset, ctx) {
      pieces(offset, data.length, (page, at, done, length) => {
        let stored = ctx.state.get(page);
        if (!stored) {
          if (allZero(data, done, done + length)) return;
          stored = Buffer.alloc(PAGE);
          ctx.state.set(page, stored);
        }
        data.copy(stored, at, done, done + length);
      });
    },

    writeZeros(offset, size, _mayUnmap, ctx) {
      zero(offset, size, ctx);
    },

    discard(offset, size, ctx) {
      zero(offset, size, ctx);
    },

    // Growing: the new range has no pages (zeros). Shrinking: pages past the end go.
    resize(size, ctx) {
      const old = ctx.attributes.size;
      if (size < old) zero(size, Math.ceil(old / PAGE) * PAGE - size, ctx);
    },

    extents(offset, size, ctx) {
      const extents: Extent[] = [];
      pieces(offset, size, (page, _at, _done, length) => {
        const hole = !ctx.state.has(page);
        const last = extents[extents.length - 1];
        if (last && (last.hole ?? false) === hole) extents[extents.length - 1] = { ...last, length: last.length + length };
        else extents.push(hole ? { length, hole: true, zero: true } : { length });
      });
      return extents;
    },
  };
}

const factory: DriverFactory<Pages> = (args) => {
  if (args.length > 0) throw new DriverError('EINVAL', 'usage: bdus run memory --size SIZE (it takes no arguments)');
  return memory();
};
export default factory;
