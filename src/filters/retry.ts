/**
 * retry: calls a failing callback again, after a pause that doubles, before its client sees the
 * failure: for a store that fails now and then (a network, an object store that throttles).
 *
 *   bdus run ./s3.js --filter retry:retries=8,delay=200ms
 *
 * Every failure but a DriverAbort is retried (ENOSPC too: say `codes=EIO+ENOLINK` to retry only
 * those), for every operation; requests are idempotent by bdus's contract, so calling one again is
 * safe. The pauses are `delay`, 2×`delay`, 4×... (`exponential=false`: all `delay`) and must fit
 * in the device's request timeout (default 30 s), after which the client has ETIMEDOUT anyway.
 * The request layer's own retries (transferTries, EIO on reads and writes, at once) run around
 * this filter's: give `--transfer-tries 1` to have only this filter's.
 *
 * Recovery and hot swap: keeps the inner driver's recoverability; holds nothing across requests.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { DriverAbort } from '../driver/errors.js';
import type { Filter } from '../filter/filter.js';
import { eachRequest, layer } from '../filter/filter.js';
import type { Parameters } from '../filter/parameters.js';

export const description = 'calls a failing callback again after a growing pause';

export const parameters = {
  retries: { type: 'number', description: 'calls after the first (default 5)' },
  delay: { type: 'duration', description: 'the first pause (default 100ms)' },
  exponential: { type: 'boolean', description: 'double the pause each time (default true)' },
  codes: { type: 'list', description: 'retry only failures with these codes (default: all)' },
} as const satisfies Parameters;

export interface RetryOptions {
  retries?: number;
  delay?: number;
  exponential?: boolean;
  codes?: string[];
}

export default function retry(options: RetryOptions = {}): Filter {
  const retries = options.retries ?? 5;
  const first = options.delay ?? 100;
  const codes = options.codes && new Set(options.codes);

  function retryable(error: unknown): boolean {
    if (error instanceof DriverAbort || (error as Error | null)?.name === 'DriverAbort') return false;
    return !codes || codes.has(String((error as { code?: unknown } | null)?.code ?? 'EIO'));
  }

  async function again<T>(call: () => Promise<T> | T): Promise<T> {
    for (let attempt = 0, pause = first; ; attempt++) {
      try {
        return await call();
      } catch (error) {
        if (attempt >= retries || !retryable(error)) throw error;
        process.stderr.write(`bdus: filter retry: ${(error as Error).message ?? error}; trying again in ${pause} ms (${attempt + 1} of ${retries})\n`);
        await sleep(pause);
        if (options.exponential !== false) pause *= 2;
      }
    }
  }

  return (next) => layer(next, eachRequest(next, (name, _offset, _size, _ctx, call) => (name === 'ioctl' ? Promise.resolve(call()) : again(call))));
}
