/**
 * rate: limits bandwidth and requests per second, as a slow or shared disk would.
 *
 *   bdus run ram --size 1G --filter rate:bandwidth=10M,iops=500
 *   bdus filter /dev/bdus-0 rate bandwidth=1M       # while it runs
 *
 * Requests of the limited operations take turns on one clock: each starts when the previous
 * ones' share of the budget has passed (bytes / bandwidth, 1 / iops, whichever is longer), so the
 * device moves at most `bandwidth` bytes and `iops` requests per second, evenly, with no burst
 * beyond `burst` (default: 100 ms of budget) saved while idle. Changeable at run time.
 *
 * Recovery and hot swap: keeps the inner driver's recoverability; the clock starts over in a new
 * driver instance, and it reads the settings file.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { performance } from 'node:perf_hooks';
import { DriverError } from '../driver/errors.js';
import type { Filter } from '../filter/filter.js';
import { around, eachRequest, FILTER_OP_OF, layer } from '../filter/filter.js';
import type { Parameters } from '../filter/parameters.js';
import { LiveSettings } from '../filter/settings.js';

export const description = 'limits bandwidth and IOPS; changeable with bdus filter';

export const live = true;

export const parameters = {
  bandwidth: { type: 'size', description: 'bytes per second (default: no limit)' },
  iops: { type: 'number', description: 'requests per second (default: no limit)' },
  burst: { type: 'duration', description: 'budget saved while idle (default 100ms)' },
  ops: { type: 'list', description: 'operations limited (default read+write): read, write, zero, discard, flush' },
} as const satisfies Parameters;

export interface RateOptions {
  bandwidth?: number;
  iops?: number;
  burst?: number;
  ops?: string[];
}

const OPS = ['read', 'write', 'zero', 'discard', 'flush'];

function check(options: RateOptions): void {
  for (const op of options.ops ?? []) if (!OPS.includes(op)) throw new DriverError('EINVAL', `filter rate: ops: '${op}' is not one of ${OPS.join(', ')}`);
  if (options.iops !== undefined && !(options.iops >= 0)) throw new DriverError('EINVAL', `filter rate: iops=${options.iops} must not be negative`);
}

export default function rate(options: RateOptions = {}): Filter {
  check(options);
  return (next) => {
    let ops = new Set(options.ops ?? ['read', 'write']);
    const live = new LiveSettings<RateOptions>('rate', parameters, options, (values) => {
      try {
        check(values);
        ops = new Set(values.ops ?? ['read', 'write']);
      } catch (problem) {
        process.stderr.write(`bdus: ${(problem as Error).message}\n`);
      }
    });
    /** When the budget is next free, in performance.now() milliseconds. */
    let free = 0;

    function turn(op: string, bytes: number): Promise<unknown> | undefined {
      if (!ops.has(op)) return undefined;
      const { bandwidth, iops, burst = 100 } = live.values;
      const cost = Math.max(bandwidth ? (bytes * 1000) / bandwidth : 0, iops ? 1000 / iops : 0);
      if (cost === 0) return undefined;
      const now = performance.now();
      const start = Math.max(free, now - burst);
      free = start + cost;
      return start > now ? sleep(start - now) : undefined;
    }

    return layer(next, {
      ...around(next, (ctx) => live.start(ctx), () => live.stop()),
      ...eachRequest(next, async (name, _offset, size, _ctx, call) => {
        const op = FILTER_OP_OF[name];
        // Zeroing and discards move no bytes: they cost a request each.
        if (op && op !== 'extents') await turn(op, op === 'read' || op === 'write' ? size : 0);
        return call();
      }),
    });
  };
}
