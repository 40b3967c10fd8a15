/**
 * Where a device's statistics live, and how they are laid out: one array of doubles in a small
 * shared file, RUN_DIR/stats/<device id>, mapped by every process that writes to it and read
 * by the daemon (`bdus stats`, `bdus top`, the metrics endpoint).
 *
 * Why a shared file: the request layer updates its counters with plain memory stores (no
 * message, no system call per request), the counts outlive the driver (a rerun's or a
 * recovery's driver keeps counting where the last one stopped, so counters only ever grow, as
 * Prometheus expects), and reading them never waits on a busy or stuck driver.
 *
 * Writers: the driver process serving the device (request counters) and the daemon (the
 * device's life: swaps and recoveries). Only one driver serves a device at a time.
 *
 * Latencies go into a log-linear histogram of microseconds: 8 buckets per power of two (every
 * bucket at most 12.5% wide), from 1 µs to 2^31 µs (36 minutes).
 */
import { RUN_DIR } from '../util/paths.js';
import { mapSharedFile } from '../util/shared-file.js';
import { OPERATION_NAMES } from '../request/operation.js';

/** Bumped when the layout changes; a reader ignores a file of another layout. */
export const LAYOUT_VERSION = 2;

export const STATS_DIR = `${RUN_DIR}/stats`;

export function statsPath(deviceId: string): string {
  return `${STATS_DIR}/${deviceId}`;
}

/** Device-wide slots. */
export const Slot = {
  VERSION: 0,
  /** Requests answered ETIMEDOUT because requestTimeout passed. */
  TIMEOUTS: 1,
  /** Read and write callbacks called again after an EIO (transferTries). */
  TRANSFER_RETRIES: 2,
  /** Requests the kernel sent again after a driver died (FUSE's re-sent, ublk's requeued). */
  RESENT: 3,
  /** Of those, requests failed alone with EIO because they passed restartLimit. */
  RESTART_FAILURES: 4,
  /** Gauge: callbacks in progress now. */
  CALLBACKS: 5,
  /** Gauge: callbacks waiting for a slot (maxConcurrentCallbacks) now. */
  WAITING: 6,
  /** Hot swaps (`bdus rerun` onto a serving driver), and their durations: last, longest, sum (ms). */
  SWAPS: 7,
  SWAP_LAST_MS: 8,
  SWAP_MAX_MS: 9,
  SWAP_TOTAL_MS: 10,
  /** Recoveries (a new driver after a death), from the death until the new driver served (ms). */
  RECOVERIES: 11,
  RECOVERY_LAST_MS: 12,
  RECOVERY_MAX_MS: 13,
  RECOVERY_TOTAL_MS: 14,
  /**
   * The driver process's heartbeat: Date.now() at its event loop's last beat (counters.ts). The
   * daemon reads it to tell a stuck driver (an event loop that never returns) from a slow one.
   */
  HEARTBEAT: 15,
  /** The pid of the driver that beats. */
  HEARTBEAT_PID: 16,
} as const;
const DEVICE_SLOTS = 24;

/** Errno slots per operation: errno n at n (1..133); slot 0 counts any larger errno. */
export const ERRNO_SLOTS = 134;
/** Histogram buckets: see bucketOf(). */
export const BUCKETS = 232;

/** Slots of one operation, from its base. */
export const OpSlot = {
  /** Requests admitted. */
  STARTED: 0,
  /** Requests answered (with success, an error or ETIMEDOUT); started - answered are in flight. */
  ANSWERED: 1,
  /** Bytes of the requests answered with success (reads and writes: data; others: range). */
  BYTES: 2,
  /** Requests answered with an error (timeouts included). */
  ERRORS: 3,
  /** Sum of the latencies of the requests answered in time (µs). */
  LATENCY_SUM: 4,
  LATENCY_MAX: 5,
  ERRNOS: 6,
  HISTOGRAM: 6 + ERRNO_SLOTS,
} as const;
export const OP_SLOTS = OpSlot.HISTOGRAM + BUCKETS;

export const OPERATIONS = OPERATION_NAMES.length;
export const TOTAL_SLOTS = DEVICE_SLOTS + OPERATIONS * OP_SLOTS;
export const FILE_BYTES = TOTAL_SLOTS * 8;

/** The device's slots, mapped from its stats file (made, zeroed, if it is not there). */
export function mapStats(deviceId: string): Float64Array<ArrayBufferLike> {
  const file = mapSharedFile(statsPath(deviceId), FILE_BYTES);
  return new Float64Array(file.buffer, file.byteOffset, TOTAL_SLOTS);
}

/** Before a writer's first store: a file of another layout (an older bdus's) starts over. */
export function claimLayout(slots: Float64Array<ArrayBufferLike>): void {
  if (slots[Slot.VERSION] === LAYOUT_VERSION) return;
  slots.fill(0);
  slots[Slot.VERSION] = LAYOUT_VERSION;
}

export function opBase(op: number): number {
  return DEVICE_SLOTS + op * OP_SLOTS;
}

/** The histogram bucket of a latency of `us` microseconds (an integer >= 0). */
export function bucketOf(us: number): number {
  if (us < 8) return us;
  if (us >= 2 ** 31) return BUCKETS - 1;
  const e = 31 - Math.clz32(us); // 3..30
  return ((e - 2) << 3) + ((us >>> (e - 3)) & 7);
}

/** The first latency (µs) past bucket `b`: every latency in it is below this. */
export function bucketEnd(b: number): number {
  if (b < 8) return b + 1;
  const e = (b >> 3) + 2;
  return (8 + (b & 7) + 1) * 2 ** (e - 3);
}
