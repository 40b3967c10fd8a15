/**
 * zero: a read-only device of zeros, like /dev/zero with a size.
 *
 *   bdus run zero [--size 1G]
 *
 * Safely recoverable: its contents never change, so any driver instance can take over.
 */
import type { Driver } from '../driver/driver.js';

const zero: Driver = {
  attributes: { size: 1 << 30, maxConcurrentCallbacks: 64 },
  read(buffer) {
    buffer.fill(0);
  },
};

export default zero;
