/**
 * offset: exposes a window of the driver below: from `offset`, `size` bytes (default: to its end).
 *
 *   bdus run file disk.img --filter offset:offset=1M              # all but the first MiB
 *   bdus run file disk.img --filter offset:offset=1M,size=512M    # 512 MiB from 1 MiB
 *   bdus run file disk.img --filter offset:size=1G                # truncated to 1 GiB
 *
 * `offset` and `size` must be multiples of the device's physical block size, and the window must
 * lie inside the driver below when its size is known (its size attribute). The driver below
 * sees its own geometry in `ctx.attributes.size`, not the window's. Resize moves the window's end
 * (the driver below grows or shrinks with it) when no `size` was given, and is refused otherwise.
 *
 * Recovery and hot swap: keeps the inner driver's recoverability; the window is fixed by the
 * command line, so a new driver instance must be given the same one (the rerun's size check
 * refuses a different size, not a different offset: give the same flags).
 */
import { DriverError } from '../driver/errors.js';
import type { Filter } from '../filter/filter.js';
import { InnerContexts, layer } from '../filter/filter.js';
import type { Parameters } from '../filter/parameters.js';

export const description = 'exposes a window of the driver below (offset, size): skip a header, truncate';

export const parameters = {
  offset: { type: 'size', description: 'where the window starts in the driver below (default 0)' },
  size: { type: 'size', description: 'the window\'s size (default: to the end of the driver below)' },
} as const satisfies Parameters;

export interface OffsetOptions {
  offset?: number;
  size?: number;
}

export default function offset(options: OffsetOptions = {}): Filter {
  const start = options.offset ?? 0;
  return (next) => {
    const below = next.attributes?.size;
    if (below !== undefined && start + (options.size ?? 0) > below) {
      throw new DriverError('EINVAL', `filter offset: the window (offset ${start}, size ${options.size ?? 0}) ends past the driver below (${below} bytes)`);
    }
    const size = options.size ?? (below === undefined ? undefined : below - start);
    if (size === 0) throw new DriverError('EINVAL', `filter offset: offset ${start} leaves nothing of the driver below (${below} bytes)`);
    // Below: a window to the end moves with the end (resize); a fixed one sits in what the driver declared.
    const inner = new InnerContexts((outer) => (options.size === undefined ? start + outer : (below ?? start + outer)));
    return layer(
      next,
      {
        async validate(ctx) {
          const block = ctx.attributes.physicalBlockSize;
          if (start % block !== 0) throw new DriverError('EINVAL', `filter offset: offset ${start} is not a multiple of the physical block size (${block})`);
          if (below !== undefined && start + ctx.attributes.size > below) {
            throw new DriverError('EINVAL', `filter offset: the window (offset ${start}, size ${ctx.attributes.size}) ends past the driver below (${below} bytes)`);
          }
          await next.validate?.(inner.of(ctx));
        },
        initialize: (ctx) => next.initialize?.(inner.of(ctx)),
        onDeviceAvailable: next.onDeviceAvailable && ((ctx) => next.onDeviceAvailable!(inner.of(ctx))),
        terminate: (ctx) => next.terminate?.(inner.of(ctx)),
        async resize(newSize, ctx) {
          if (options.size !== undefined) throw new DriverError('EOPNOTSUPP', 'filter offset: the window has a fixed size');
          await next.resize!(start + newSize, inner.of(ctx));
        },
        read: (buffer, at, ctx) => next.read!(buffer, start + at, inner.of(ctx)),
        write: (data, at, ctx) => next.write!(data, start + at, inner.of(ctx)),
        fuaWrite: (data, at, ctx) => next.fuaWrite!(data, start + at, inner.of(ctx)),
        writeSame: (block, at, length, ctx) => next.writeSame!(block, start + at, length, inner.of(ctx)),
        writeZeros: (at, length, mayUnmap, ctx) => next.writeZeros!(start + at, length, mayUnmap, inner.of(ctx)),
        discard: (at, length, ctx) => next.discard!(start + at, length, inner.of(ctx)),
        secureErase: (at, length, ctx) => next.secureErase!(start + at, length, inner.of(ctx)),
        flush: (ctx) => next.flush!(inner.of(ctx)),
        extents: (at, length, ctx) => next.extents!(start + at, length, inner.of(ctx)),
        ioctl: (command, argument, ctx) => next.ioctl!(command, argument, inner.of(ctx)),
      },
      { attributes: { ...next.attributes, ...(size === undefined ? {} : { size }) } },
    );
  };
}
