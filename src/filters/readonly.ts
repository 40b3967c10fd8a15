/**
 * readonly: the device refuses writes, whatever the driver below can do.
 *
 *   bdus run file disk.img --filter readonly
 *
 * It drops every write-type callback (write, FUA write, write-same, write-zeroes, discard, secure
 * erase) and resize, so the device is read-only by bdus's rule: the kernel marks it so and
 * refuses writes before they reach a driver. Flush, extents and ioctl pass through.
 *
 * Recovery and hot swap: keeps the inner driver's recoverability. A rerun must keep every
 * callback of the current driver: a writable device cannot be given a readonly driver by
 * rerun, nor the reverse (the check names the missing callbacks).
 */
import { WRITE_CALLBACKS } from '../driver/callbacks.js';
import type { Filter } from '../filter/filter.js';
import { layer } from '../filter/filter.js';
import type { Parameters } from '../filter/parameters.js';

export const description = 'refuses writes: the device is read-only whatever the driver below';

export const parameters = {} as const satisfies Parameters;

export default function readonly(): Filter {
  return (next) => layer(next, {}, { removes: [...WRITE_CALLBACKS, 'resize'] });
}
