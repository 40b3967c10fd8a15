/**
 * A device's statistics as read from its stats file (layout.ts), in JSON's terms, and what the
 * views make of them: percentiles from a histogram, and rates between two snapshots.
 */
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { OPERATION_NAMES } from '../request/operation.js';
import { BUCKETS, ERRNO_SLOTS, LAYOUT_VERSION, OPERATIONS, OpSlot, Slot, TOTAL_SLOTS, bucketEnd, opBase, statsPath } from './layout.js';

export type OperationName = (typeof OPERATION_NAMES)[number];

/** One request type's counts since the device was created. */
export interface OperationStats {
  /** Requests answered (successes and errors). */
  requests: number;
  /** Admitted and not yet answered (a timed-out request stays until its callback ends). */
  inFlight: number;
  /** Bytes of the requests that succeeded. */
  bytes: number;
  errors: number;
  /** Errors by errno name ("EIO": 3). */
  errnos: Record<string, number>;
  /** Latency of the requests that succeeded: sum and largest (µs), and the histogram (sparse: [bucket, count]). */
  latencySumUs: number;
  latencyMaxUs: number;
  histogram: Array<[number, number]>;
}

export interface DriverChanges {
  count: number;
  lastMs: number;
  maxMs: number;
  totalMs: number;
}

export interface DeviceStats {
  /** Per request type that the device has seen. */
  operations: Partial<Record<OperationName, OperationStats>>;
  timeouts: number;
  transferRetries: number;
  resent: number;
  restartFailures: number;
  /** Callbacks in progress, and waiting for a slot, when read. */
  callbacks: number;
  waiting: number;
  swaps: DriverChanges;
  recoveries: DriverChanges;
}

const ERRNO_NAMES = new Map(Object.entries(constants.errno).map(([name, n]) => [n, name]));

/** The device's statistics, or undefined if it has none (yet) or of another layout. */
export function readStats(deviceId: string): DeviceStats | undefined {
  let bytes: Buffer;
  try {
    bytes = readFileSync(statsPath(deviceId));
  } catch {
    return undefined;
  }
  if (bytes.length < TOTAL_SLOTS * 8) return undefined;
  const slots = new Float64Array(bytes.buffer, bytes.byteOffset, TOTAL_SLOTS);
  return slots[Slot.VERSION] === LAYOUT_VERSION ? decodeStats(slots) : undefined;
}

export function decodeStats(s: Float64Array<ArrayBufferLike>): DeviceStats {
  const operations: DeviceStats['operations'] = {};
  for (let op = 0; op < OPERATIONS; op++) {
    const base = opBase(op);
    const started = s[base + OpSlot.STARTED]!;
    if (started === 0) continue;
    const errnos: Record<string, number> = {};
    for (let e = 0; e < ERRNO_SLOTS; e++) {
      const n = s[base + OpSlot.ERRNOS + e]!;
      if (n > 0) errnos[e === 0 ? 'other' : (ERRNO_NAMES.get(e) ?? `errno ${e}`)] = n;
    }
    const histogram: Array<[number, number]> = [];
    for (let b = 0; b < BUCKETS; b++) {
      const n = s[base + OpSlot.HISTOGRAM + b]!;
      if (n > 0) histogram.push([b, n]);
    }
    const requests = s[base + OpSlot.ANSWERED]!;
    operations[OPERATION_NAMES[op]!] = {
      requests,
      inFlight: Math.max(0, started - requests),
      bytes: s[base + OpSlot.BYTES]!,
      errors: s[base + OpSlot.ERRORS]!,
      errnos,
      latencySumUs: s[base + OpSlot.LATENCY_SUM]!,
      latencyMaxUs: s[base + OpSlot.LATENCY_MAX]!,
      histogram,
    };
  }
  const changes = (count: number, last: number, max: number, total: number): DriverChanges => ({
    count: s[count]!,
    lastMs: Math.round(s[last]!),
    maxMs: Math.round(s[max]!),
    totalMs: Math.round(s[total]!),
  });
  return {
    operations,
    timeouts: s[Slot.TIMEOUTS]!,
    transferRetries: s[Slot.TRANSFER_RETRIES]!,
    resent: s[Slot.RESENT]!,
    restartFailures: s[Slot.RESTART_FAILURES]!,
    callbacks: s[Slot.CALLBACKS]!,
    waiting: s[Slot.WAITING]!,
    swaps: changes(Slot.SWAPS, Slot.SWAP_LAST_MS, Slot.SWAP_MAX_MS, Slot.SWAP_TOTAL_MS),
    recoveries: changes(Slot.RECOVERIES, Slot.RECOVERY_LAST_MS, Slot.RECOVERY_MAX_MS, Slot.RECOVERY_TOTAL_MS),
  };
}

/** What a view shows of one request type over a span of time. */
export interface Activity {
  requests: number;
  bytes: number;
  errors: number;
  /** Per second over the span. */
  iops: number;
  bytesPerSecond: number;
  /** Latency percentiles and max of the span's successful requests (µs; 0 without any). */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/**
 * Activity of one request type between two snapshots `seconds` apart (`before` undefined: since
 * the device was created, with `seconds` its age). Percentiles are the upper end of the bucket
 * they fall in (at most 12.5% high); max is exact over the device's life, and a bucket end
 * over a span.
 */
export function activity(now: OperationStats | undefined, before: OperationStats | undefined, seconds: number): Activity {
  const requests = (now?.requests ?? 0) - (before?.requests ?? 0);
  const bytes = (now?.bytes ?? 0) - (before?.bytes ?? 0);
  const errors = (now?.errors ?? 0) - (before?.errors ?? 0);
  const counts = new Float64Array(BUCKETS);
  for (const [b, n] of now?.histogram ?? []) counts[b] = n;
  for (const [b, n] of before?.histogram ?? []) counts[b]! -= n;
  let total = 0;
  for (const n of counts) total += n;
  const at = (q: number): number => {
    if (total === 0) return 0;
    const rank = Math.ceil(q * total);
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += counts[b]!;
      if (seen >= rank) return bucketEnd(b);
    }
    return 0;
  };
  const sum = (now?.latencySumUs ?? 0) - (before?.latencySumUs ?? 0);
  const max = before === undefined ? (now?.latencyMaxUs ?? 0) : at(1);
  const perSecond = seconds > 0 ? 1 / seconds : 0;
  return {
    requests,
    bytes,
    errors,
    iops: requests * perSecond,
    bytesPerSecond: bytes * perSecond,
    p50: Math.min(at(0.5), max || Infinity),
    p90: Math.min(at(0.9), max || Infinity),
    p99: Math.min(at(0.99), max || Infinity),
    max,
    mean: total > 0 ? sum / total : 0,
  };
}

/** The request types a view shows in its summary columns. */
export const READS: readonly OperationName[] = ['read'];
export const WRITES: readonly OperationName[] = ['write', 'fuaWrite', 'writeZeros', 'writeSame'];

/** Requests in flight over every request type. */
export function inFlight(stats: DeviceStats): number {
  let n = 0;
  for (const op of Object.values(stats.operations)) n += op.inFlight;
  return n;
}

/** Errors over every request type. */
export function errors(stats: DeviceStats): number {
  let n = 0;
  for (const op of Object.values(stats.operations)) n += op.errors;
  return n;
}
