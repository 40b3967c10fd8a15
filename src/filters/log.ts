/**
 * log: writes a line for every request that passes through it, as it completes: a trace to read,
 * to grep, or to replay (`parseLog` reads it back, a request per object, in order).
 *
 *   bdus run ram --size 1G --filter log:file=/tmp/trace.log
 *
 * The file starts with a `#` line naming the columns, then one line per request:
 *
 *   # bdus request log: start_ms operation offset size result duration_ms
 *   12.031 write 1048576 4096 ok 0.021
 *   12.090 flush 0 0 ok 0.004
 *   13.512 read 0 65536 EIO 0.310
 *
 * start_ms counts from the driver instance's start; result is `ok` or the error's code. Lines
 * are batched and written every 100 ms and at terminate (a killed driver loses the last 100 ms).
 * A new driver instance (hot swap, recovery) appends to the same file after a `#` line with its
 * pid and start time (parseLog puts its times after the first's).
 *
 * `bdus replay TRACE DEVICE` issues a trace's requests to a block device again, at their times.
 *
 * Recovery and hot swap: keeps the inner driver's recoverability.
 */
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { RequestCallback } from '../driver/callbacks.js';
import { DriverError } from '../driver/errors.js';
import type { Filter } from '../filter/filter.js';
import { around, eachRequest, layer } from '../filter/filter.js';
import type { Parameters } from '../filter/parameters.js';

export const description = 'writes a line per request to a file: a trace to read or replay';

export const parameters = {
  file: { type: 'string', description: 'the log file (appended to)', required: true },
} as const satisfies Parameters;

export interface LogOptions {
  file: string;
}

const FLUSH_MS = 100;
/** The operations' names in the log. */
const NAMES: Record<RequestCallback, string> = {
  read: 'read',
  write: 'write',
  fuaWrite: 'fua-write',
  writeSame: 'write-same',
  writeZeros: 'write-zeroes',
  discard: 'discard',
  secureErase: 'secure-erase',
  flush: 'flush',
  extents: 'extents',
  ioctl: 'ioctl',
};
const HEADER = '# bdus request log: start_ms operation offset size result duration_ms';

export default function log(options: LogOptions): Filter {
  if (!options?.file) throw new DriverError('EINVAL', 'filter log: needs file=PATH');
  return (next) => {
    let fd = -1;
    let pending = '';
    let timer: NodeJS.Timeout | undefined;
    let t0 = 0;
    const drain = (): void => {
      if (pending === '' || fd < 0) return;
      writeSync(fd, pending);
      pending = '';
    };

    async function traced<T>(op: string, offset: number, size: number, call: () => Promise<T> | T): Promise<T> {
      const start = performance.now();
      let result = 'ok';
      try {
        return await call();
      } catch (error) {
        result = String((error as { code?: unknown } | null)?.code ?? 'EIO');
        throw error;
      } finally {
        const end = performance.now();
        pending += `${(start - t0).toFixed(3)} ${op} ${offset} ${size} ${result} ${(end - start).toFixed(3)}\n`;
      }
    }

    return layer(next, {
      ...around(
        next,
        () => {
          fd = openSync(options.file, 'a', 0o644);
          t0 = performance.now();
          writeSync(fd, `${HEADER}\n# pid ${process.pid} started ${new Date().toISOString()}\n`);
          timer = setInterval(drain, FLUSH_MS);
          timer.unref();
        },
        () => {
          clearInterval(timer);
          drain();
          closeSync(fd);
          fd = -1;
        },
      ),
      ...eachRequest(next, (name, offset, size, _ctx, call) => traced(NAMES[name], offset, size, call)),
    });
  };
}

/** One request of a log, as `parseLog` reads it. */
export interface LoggedRequest {
  /** From the first driver instance's start (a later instance's lines are moved by its start). */
  readonly startMs: number;
  readonly operation: string;
  readonly offset: number;
  readonly size: number;
  readonly result: string;
  readonly durationMs: number;
}

/** The requests of a log file, in the order they completed (`#` lines skipped). */
export function parseLog(path: string): LoggedRequest[] {
  const requests: LoggedRequest[] = [];
  let first: number | undefined;
  let shift = 0;
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const started = /^# pid \d+ started (\S+)/.exec(line)?.[1];
    if (started !== undefined) {
      const at = Date.parse(started);
      first ??= at;
      shift = Number.isNaN(at) ? shift : at - first;
    }
    if (line === '' || line.startsWith('#')) continue;
    const [start, operation, offset, size, result, duration] = line.split(' ');
    const request = { startMs: Number(start) + shift, operation: operation!, offset: Number(offset), size: Number(size), result: result!, durationMs: Number(duration) };
    if (!operation || [request.startMs, request.offset, request.size, request.durationMs].some((n) => !Number.isFinite(n))) {
      throw new DriverError('EINVAL', `${path}: not a line of a bdus request log: ${JSON.stringify(line.slice(0, 80))}`);
    }
    requests.push(request);
  }
  return requests;
}
