/**
 * error: fails requests on purpose, as dm-flakey and dm-dust do in the kernel: for testing how a
 * filesystem, database or application survives a failing disk.
 *
 *   bdus run ram --size 1G --filter error:ops=write+flush,rate=0.01
 *   bdus run ram --size 1G --filter error:offset=64M,length=1M,ops=read      # a bad range
 *   bdus run ram --size 1G --filter error:up=20s,down=5s                     # flakey
 *   bdus run ram --size 1G --filter error:after=1000,count=1,error=ENOSPC    # the 1000th request
 *   bdus filter /dev/bdus-0 error rate=0                                     # heal it
 *
 * A request fails when every condition given holds: its operation is one of `ops`; it overlaps
 * [offset, offset+length); the schedule is in a down phase (`down` after each `up`, from the
 * filter's start); it is at least the `after`th matching request and fewer than `count` have
 * failed; and a draw falls under `rate` (default 1: always). It fails with `error`: EIO,
 * ENOSPC, ENOLINK, ETIMEDOUT, or `timeout`, which holds the request past the device's request
 * timeout (the client sees ETIMEDOUT) before failing it.
 *
 * The request layer calls a failing read or write up to transferTries times (default 5) before
 * its client sees EIO: with rate < 1 most injected EIOs are absorbed that way. Give
 * `--transfer-tries 1` for every injected failure to reach the client.
 *
 * Recovery and hot swap: keeps the inner driver's recoverability; a new driver instance starts
 * the schedule and the counts over, and reads the settings file (`bdus filter`), so what was
 * set at run time stays.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Context } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { Filter } from '../filter/filter.js';
import { around, eachRequest, FILTER_OP_OF, FILTER_OPS, layer, type FilterOp } from '../filter/filter.js';
import type { Parameters } from '../filter/parameters.js';
import { LiveSettings } from '../filter/settings.js';

export const description = 'fails requests on purpose (like dm-flakey, dm-dust); changeable with bdus filter';

export const live = true;

export const parameters = {
  error: { type: 'string', description: 'EIO (default), ENOSPC, ENOLINK, ETIMEDOUT, or timeout' },
  rate: { type: 'number', description: 'the probability a matching request fails, 0 to 1 (default 1)' },
  ops: { type: 'list', description: `operations that may fail (default all): ${FILTER_OPS.join('+')}` },
  offset: { type: 'size', description: 'only requests that overlap the range from here' },
  length: { type: 'size', description: '... of this many bytes (default: to the end)' },
  up: { type: 'duration', description: 'flakey: the device works this long ...' },
  down: { type: 'duration', description: '... then fails this long, and again' },
  after: { type: 'number', description: 'the first matching request that may fail is the Nth (default 1)' },
  count: { type: 'number', description: 'at most this many requests fail (default: no limit)' },
} as const satisfies Parameters;

const CODES = ['EIO', 'ENOSPC', 'ENOLINK', 'ETIMEDOUT', 'timeout'] as const;

export interface ErrorOptions {
  error?: string;
  rate?: number;
  ops?: string[];
  offset?: number;
  length?: number;
  up?: number;
  down?: number;
  after?: number;
  count?: number;
}

/** The options checked once, in the shape a request's check wants. */
interface Rules {
  readonly code: (typeof CODES)[number];
  readonly rate: number;
  readonly ops: ReadonlySet<FilterOp>;
  readonly from: number;
  readonly to: number;
  readonly up: number;
  readonly down: number;
  readonly after: number;
  readonly count: number;
}

function rules(options: ErrorOptions): Rules {
  const code = (options.error ?? 'EIO') as Rules['code'];
  if (!CODES.includes(code)) throw new DriverError('EINVAL', `filter error: error=${code}: expected one of ${CODES.join(', ')}`);
  const rate = options.rate ?? 1;
  if (!(rate >= 0 && rate <= 1)) throw new DriverError('EINVAL', `filter error: rate=${rate}: expected a probability from 0 to 1`);
  for (const op of options.ops ?? []) {
    if (!(FILTER_OPS as readonly string[]).includes(op)) throw new DriverError('EINVAL', `filter error: ops: '${op}' is not one of ${FILTER_OPS.join(', ')}`);
  }
  if ((options.up === undefined) !== (options.down === undefined)) throw new DriverError('EINVAL', 'filter error: up and down go together');
  const from = options.offset ?? 0;
  return {
    code,
    rate,
    ops: new Set((options.ops ?? FILTER_OPS) as FilterOp[]),
    from,
    to: options.length === undefined ? Infinity : from + options.length,
    up: options.up ?? 0,
    down: options.down ?? 0,
    after: options.after ?? 1,
    count: options.count ?? Infinity,
  };
}

export default function error(options: ErrorOptions = {}): Filter {
  rules(options); // a mistake fails the command, before any device exists
  return (next) => {
    let current = rules(options);
    let matched = 0;
    let failed = 0;
    let started = 0;
    const live = new LiveSettings<ErrorOptions>('error', parameters, options, (values) => {
      try {
        current = rules(values);
        matched = failed = 0;
      } catch (problem) {
        process.stderr.write(`bdus: ${(problem as Error).message}; keeping the previous settings\n`);
      }
    });

    /** Throws if this request is to fail; `size` 0 is a request without a range (flush). */
    async function check(op: FilterOp, offset: number, size: number, ctx: Context<unknown>): Promise<void> {
      const r = current;
      if (!r.ops.has(op)) return;
      if (size > 0 ? offset + size <= r.from || offset >= r.to : r.from > 0 || r.to !== Infinity) return;
      if (r.down > 0 && (Date.now() - started) % (r.up + r.down) < r.up) return;
      if (++matched < r.after || failed >= r.count) return;
      if (r.rate < 1 && Math.random() >= r.rate) return;
      failed++;
      if (r.code === 'timeout') {
        await sleep(ctx.attributes.requestTimeout + 1000);
        throw new DriverError('ETIMEDOUT', 'filter error: an injected timeout');
      }
      throw new DriverError(r.code, `filter error: an injected ${r.code}`);
    }

    return layer(next, {
      ...around(
        next,
        (ctx) => {
          started = Date.now();
          live.start(ctx);
        },
        () => live.stop(),
      ),
      ...eachRequest(next, async (name, offset, size, ctx, call) => {
        const op = FILTER_OP_OF[name];
        if (op) await check(op, offset, size, ctx);
        return call();
      }),
    });
  };
}
