/**
 * pattern: a read-only device whose data says where it is: each 8-byte word holds its own
 * offset, big-endian (nbdkit's pattern plugin writes the same), so any block read anywhere can
 * be checked without a copy of the device, and a misplaced read shows where it came from.
 *
 *   bdus run pattern --size 1G
 *   import { pattern, patternAt } from 'bdus/drivers';
 *
 * Recoverable: it holds nothing.
 */
import type { Driver } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { DriverFactory } from '../driver/module.js';

export const description = 'read-only: each 8-byte word holds its own offset, big-endian (give --size)';

/** Fills `buffer` with the pattern's bytes from device offset `offset` (a multiple of 8). */
export function patternAt(buffer: Buffer, offset: number): void {
  for (let i = 0; i < buffer.length; i += 8) {
    const word = offset + i;
    buffer.writeUInt32BE(Math.floor(word / 2 ** 32), i);
    buffer.writeUInt32BE(word >>> 0, i + 4);
  }
}

export function pattern(): Driver {
  return {
    attributes: { maxConcurrentCallbacks: 64 },
    // Nothing to share: every instance computes the same bytes.
    laneSafe: true,
    read(buffer, offset) {
      patternAt(buffer, offset);
    },
  };
}

const factory: DriverFactory = (args) => {
  if (args.length > 0) throw new DriverError('EINVAL', 'usage: bdus run pattern --size SIZE (it takes no arguments)');
  return pattern();
};
export default factory;
