/** Sizes and durations as people type them: on the command line, in filter parameters, in control files. */
import { BdusError } from '../driver/errors.js';

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** "4096", "64K", "1G", "1GiB", "2T" (powers of 1024) -> bytes. */
export function parseSize(text: string, what = 'size'): number {
  const match = /^(\d+)\s*([KMGTP]?)(?:i?B)?$/i.exec(text.trim());
  const unit = match ? UNITS[match[2]!.toUpperCase()] : undefined;
  const value = match && unit ? Number(match[1]) * unit : NaN;
  if (!Number.isSafeInteger(value)) {
    throw new BdusError('EINVAL', `invalid ${what} '${text}': expected a whole number of bytes with an optional K, M, G, T or P suffix`);
  }
  return value;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "1500ms", "30s", "2m", "1h"; a bare number is milliseconds. */
export function parseDuration(text: string, what: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(text.trim());
  const value = match ? Math.round(Number(match[1]) * DURATION_UNITS[match[2] ?? 'ms']!) : NaN;
  if (!Number.isSafeInteger(value)) throw new BdusError('EINVAL', `invalid ${what} '${text}': expected a duration such as 1500ms, 30s, 2m or 1h`);
  return value;
}
