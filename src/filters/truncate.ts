/**
 * truncate: gives the driver below another size, larger or smaller, as nbdkit's truncate filter:
 *
 *   bdus run file disk.img --filter truncate:size=10G         # grow (or shrink) to 10 GiB
 *   bdus run file disk.img --filter truncate:round-up=1M      # the next multiple of 1 MiB
 *   bdus run file disk.img --filter truncate:round-down=1M    # the multiple of 1 MiB below
 *
 * Past the end of the driver below, the device reads as zeros and reports a hole; a write there
 * that is all zeros succeeds and stores nothing (so mkfs, which zeros, works), and one that is
 * not fails with ENOSPC: the bytes have nowhere to go, and ENOSPC says so to a filesystem
 * better than EIO. Write-zeroes and discard there succeed and do nothing. Shrinking hides the
 * end of the driver below, as `offset:size=` does.
 *
 * The driver below must state its size (a `size` attribute); `round-up`/`round-down` are powers
 * of two and at least the device's physical block size. Resize is refused: the size is the
 * command line's.
 *
 * Recovery and hot swap: keeps the inner driver's recoverability; holds nothing.
 */
import { DriverError } from '../driver/errors.js';
import type { Extent } from '../driver/driver.js';
import type { Filter } from '../filter/filter.js';
import { InnerContexts, layer } from '../filter/filter.js';
import type { Parameters } from '../filter/parameters.js';
import { readInto } from '../driver/read-data.js';

export const description = 'another size for the driver below: past its end reads zeros (nbdkit\'s truncate)';

export const parameters = {
  size: { type: 'size', description: 'the device\'s size, larger or smaller than the driver below' },
  'round-up': { type: 'size', description: 'round the size below up to a multiple of this' },
  'round-down': { type: 'size', description: 'round the size below down to a multiple of this' },
} as const satisfies Parameters;

export interface TruncateOptions {
  size?: number;
  'round-up'?: number;
  'round-down'?: number;
}

export default function truncate(options: TruncateOptions = {}): Filter {
  const given = [options.size, options['round-up'], options['round-down']].filter((v) => v !== undefined);
  if (given.length !== 1) throw new DriverError('EINVAL', 'filter truncate: give one of size=, round-up= or round-down=');
  for (const name of ['round-up', 'round-down'] as const) {
    const to = options[name];
    if (to !== undefined && (to <= 0 || (to & (to - 1)) !== 0)) throw new DriverError('EINVAL', `filter truncate: ${name}=${to} is not a power of two`);
  }
  return (next) => {
    const below = next.attributes?.size;
    if (below === undefined) throw new DriverError('EINVAL', 'filter truncate: the driver below does not state its size (give it one)');
    const up = options['round-up'];
    const down = options['round-down'];
    const size = options.size ?? (up ? Math.ceil(below / up) * up : Math.floor(below / down!) * down!);
    if (size <= 0) throw new DriverError('EINVAL', `filter truncate: ${below} bytes rounded down leave nothing`);
    const inner = new InnerContexts(() => below);
    /** How much of [at, at+length) lies inside the driver below. */
    const inside = (at: number, length: number): number => Math.max(0, Math.min(length, below - at));

    return layer(
      next,
      {
        async validate(ctx) {
          if (size % ctx.attributes.physicalBlockSize !== 0) {
            throw new DriverError('EINVAL', `filter truncate: ${size} bytes is not a multiple of the physical block size (${ctx.attributes.physicalBlockSize})`);
          }
          await next.validate?.(inner.of(ctx));
        },
        initialize: (ctx) => next.initialize?.(inner.of(ctx)),
        onDeviceAvailable: next.onDeviceAvailable && ((ctx) => next.onDeviceAvailable!(inner.of(ctx))),
        terminate: (ctx) => next.terminate?.(inner.of(ctx)),
        resize() {
          throw new DriverError('EOPNOTSUPP', 'filter truncate: the size is fixed by the command line');
        },
        async read(buffer, at, ctx) {
          const n = inside(at, buffer.length);
          if (n === buffer.length) return next.read!(buffer, at, inner.of(ctx));
          if (n > 0) {
            const part = buffer.subarray(0, n);
            await readInto(next.read!(part, at, inner.of(ctx)), part);
          }
          buffer.fill(0, n);
        },
        write: (data, at, ctx) => written(data, at, (part) => next.write!(part, at, inner.of(ctx))),
        fuaWrite: (data, at, ctx) => written(data, at, (part) => next.fuaWrite!(part, at, inner.of(ctx))),
        async writeSame(block, at, length, ctx) {
          const n = inside(at, length);
          if (n < length && block.some((b) => b !== 0)) throw past(at + n);
          if (n > 0) await next.writeSame!(block, at, n, inner.of(ctx));
        },
        async writeZeros(at, length, mayUnmap, ctx) {
          const n = inside(at, length);
          if (n > 0) await next.writeZeros!(at, n, mayUnmap, inner.of(ctx));
        },
        async discard(at, length, ctx) {
          const n = inside(at, length);
          if (n > 0) await next.discard!(at, n, inner.of(ctx));
        },
        async secureErase(at, length, ctx) {
          const n = inside(at, length);
          if (n > 0) await next.secureErase!(at, n, inner.of(ctx));
        },
        flush: (ctx) => next.flush!(inner.of(ctx)),
        async extents(at, length, ctx) {
          const n = inside(at, length);
          const extents: Extent[] = n > 0 ? [...(await next.extents!(at, n, inner.of(ctx)))] : [];
          const covered = extents.reduce((sum, e) => sum + e.length, 0);
          // The driver below may answer less than asked; only a full answer reaches the zeros past its end.
          if (covered >= n && n < length) extents.push({ length: length - n, hole: true, zero: true });
          return extents;
        },
        ioctl: (command, argument, ctx) => next.ioctl!(command, argument, inner.of(ctx)),
      },
      { attributes: { ...next.attributes, size } },
    );

    async function written(data: Buffer, at: number, write: (part: Buffer) => Promise<void> | void): Promise<void> {
      const n = inside(at, data.length);
      if (n < data.length && !isZero(data, n)) throw past(at + n);
      if (n > 0) await write(n === data.length ? data : data.subarray(0, n));
    }

    function past(at: number): DriverError {
      return new DriverError('ENOSPC', `filter truncate: data written at byte ${at}, past the end of the driver below (${below} bytes)`);
    }
  };
}

function isZero(data: Buffer, from: number): boolean {
  for (let i = from; i < data.length; i++) if (data[i] !== 0) return false;
  return true;
}
