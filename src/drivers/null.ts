/**
 * null: a device that reads as zeros and drops what is written, like /dev/null with a size: for
 * measuring bdus itself (no store behind it) and for testing what sits above a device.
 *
 *   bdus run null --size 1T
 *
 * Recoverable in the only sense that matters here: it holds nothing to lose.
 */
import type { Driver } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { DriverFactory } from '../driver/module.js';

export const description = 'reads zeros, drops writes (give --size): for measuring what is above it';

export function nullDriver(): Driver {
  return {
    attributes: { maxConcurrentCallbacks: 256 },
    // It keeps nothing, so any number of instances agree.
    laneSafe: true,
    read(buffer) {
      buffer.fill(0);
    },
    write() {},
    writeZeros() {},
    discard() {},
    flush() {},
    extents(_offset, size) {
      return [{ length: size, hole: true, zero: true }];
    },
  };
}

const factory: DriverFactory = (args) => {
  if (args.length > 0) throw new DriverError('EINVAL', 'usage: bdus run null --size SIZE (it takes no arguments)');
  return nullDriver();
};
export default factory;
