/**
 * stats: counts the requests that pass through it, where it stands in the stack: put it between
 * a cache and its store to see what reaches the store.
 *
 *   bdus run file disk.img --filter stats:file=/tmp/stats.json,interval=1s
 *
 * Per operation: requests, bytes, failures, and the time its inner callbacks took (total and
 * the slowest). Written as JSON to `file` (atomically) every `interval` and when the driver
 * terminates, and to the device's log (stderr) at terminate. bdus's own counters (`bdus stats`)
 * count what the device received; this counts what the layer below the filter received.
 *
 * Recovery and hot swap: keeps the inner driver's recoverability; counts are per driver
 * instance, and a new one starts from zero (the file says which pid counted).
 */
import { renameSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { REQUEST_CALLBACKS, type RequestCallback } from '../driver/callbacks.js';
import type { Filter } from '../filter/filter.js';
import { around, eachRequest, layer } from '../filter/filter.js';
import type { Parameters } from '../filter/parameters.js';

export const description = 'counts requests, bytes, failures and time per operation below it';

export const parameters = {
  file: { type: 'string', description: 'where to write the counts as JSON (default: only to the log at terminate)' },
  interval: { type: 'duration', description: 'how often to write the file (default 1s)' },
} as const satisfies Parameters;

export interface StatsOptions {
  file?: string;
  interval?: number;
  /** Called with the counts each interval and at terminate, for use in code. */
  onReport?: (report: StatsReport) => void;
}

export interface OperationCounts {
  requests: number;
  bytes: number;
  failures: number;
  /** Milliseconds inside the inner driver's callbacks, summed. */
  totalMs: number;
  maxMs: number;
}

export interface StatsReport {
  pid: number;
  /** Milliseconds since the driver instance initialized. */
  elapsedMs: number;
  operations: Record<string, OperationCounts>;
}

const NAMES = REQUEST_CALLBACKS;

export default function stats(options: StatsOptions = {}): Filter {
  return (next) => {
    const counts = Object.fromEntries(NAMES.map((name) => [name, { requests: 0, bytes: 0, failures: 0, totalMs: 0, maxMs: 0 }])) as Record<RequestCallback, OperationCounts>;
    let started = 0;
    let timer: NodeJS.Timeout | undefined;

    function report(): StatsReport {
      const operations: Record<string, OperationCounts> = {};
      for (const name of NAMES) if (counts[name].requests > 0) operations[name] = { ...counts[name] };
      return { pid: process.pid, elapsedMs: Math.round(performance.now() - started), operations };
    }
    function write(final: boolean): void {
      const r = report();
      options.onReport?.(r);
      if (options.file) {
        try {
          writeFileSync(`${options.file}.new`, `${JSON.stringify(r, null, 2)}\n`);
          renameSync(`${options.file}.new`, options.file);
        } catch (error) {
          process.stderr.write(`bdus: filter stats: cannot write ${options.file}: ${(error as Error).message}\n`);
        }
      }
      if (final) process.stderr.write(`bdus: filter stats: ${JSON.stringify(r)}\n`);
    }

    /** Times one inner call; `bytes` is what it moved. */
    async function count<T>(c: OperationCounts, bytes: number, call: () => Promise<T> | T): Promise<T> {
      const t0 = performance.now();
      c.requests++;
      c.bytes += bytes;
      try {
        return await call();
      } catch (error) {
        c.failures++;
        throw error;
      } finally {
        const ms = performance.now() - t0;
        c.totalMs += ms;
        if (ms > c.maxMs) c.maxMs = ms;
      }
    }

    return layer(next, {
      ...around(
        next,
        () => {
          started = performance.now();
          timer = setInterval(() => write(false), options.interval ?? 1000);
          timer.unref();
        },
        () => {
          clearInterval(timer);
          write(true);
        },
      ),
      ...eachRequest(next, (name, _offset, size, _ctx, call) => count(counts[name], name === 'ioctl' ? 0 : size, call)),
    });
  };
}
