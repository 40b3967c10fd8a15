/**
 * zero: a read-only device of zeros, like /dev/zero with a size.
 *
 *   bdus run zero [--size 1G]
 *
 * Safely recoverable: its contents never change, so any driver instance can take over.
 */
import type { Driver } from '../driver/driver.js';

export const description = 'a read-only device of zeros (give --size; default 1 GiB)';

const zero: Driver = {
  attributes: { size: 1 << 30, maxConcurrentCallbacks: 64 },
  read(buffer) {
    buffer.fill(0);
  },
  resize() {
    // zeros of any size
  },
  // NBD clients (qemu-img map, nbdcopy) see that nothing is stored, and copy nothing.
  extents(_offset, size) {
    return [{ length: size, hole: true, zero: true }];
  },
};

export default zero;
