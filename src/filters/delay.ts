/**
 * delay: adds latency to requests, as dm-delay does in the kernel: for testing how a filesystem,
 * database or application behaves on a slow disk.
 *
 *   bdus run ram --size 1G --filter delay:read=2ms,write=5ms
 *   bdus filter /dev/bdus-0 delay write=50ms        # while it runs
 *
 * Each request waits its operation's delay, then goes to the inner driver; requests wait side by
 * side (up to maxConcurrentCallbacks), so latency grows but throughput at a deep queue does not
 * fall with it. Changeable at run time (src/filter/settings.ts).
 *
 * Recovery and hot swap: keeps the inner driver's recoverability (it holds nothing); a new
 * driver instance reads the settings file, so delays set at run time stay.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Filter } from '../filter/filter.js';
import { around, eachRequest, FILTER_OP_OF, layer } from '../filter/filter.js';
import type { Parameters } from '../filter/parameters.js';
import { LiveSettings } from '../filter/settings.js';

export const description = 'adds latency to requests (like dm-delay); changeable with bdus filter';

export const live = true;

export const parameters = {
  read: { type: 'duration', description: 'delay of each read' },
  write: { type: 'duration', description: 'delay of each write, FUA write and write-same' },
  zero: { type: 'duration', description: 'delay of each write-zeroes' },
  discard: { type: 'duration', description: 'delay of each discard and secure erase' },
  flush: { type: 'duration', description: 'delay of each flush' },
  extents: { type: 'duration', description: 'delay of each block-status query (NBD exports)' },
} as const satisfies Parameters;

/** Milliseconds per operation; absent is none. */
export interface DelayOptions {
  read?: number;
  write?: number;
  zero?: number;
  discard?: number;
  flush?: number;
  extents?: number;
}


export default function delay(options: DelayOptions = {}): Filter {
  return (next) => {
    const live = new LiveSettings<DelayOptions>('delay', parameters, options);
    return layer(next, {
      ...around(next, (ctx) => live.start(ctx), () => live.stop()),
      ...eachRequest(next, async (name, _offset, _size, _ctx, call) => {
        const which = FILTER_OP_OF[name];
        const ms = which && live.values[which];
        if (ms) await sleep(ms);
        return call();
      }),
    });
  };
}
