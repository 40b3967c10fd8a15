/**
 * Device and driver attributes: their rules, defaults and adjustment (BDUS's semantics), defined
 * once in ATTRIBUTES. The CLI's flags and docs/attributes.md come from the same table.
 *
 * Adjustment rules, as in BDUS: 0 (or omitted) means "choose the default"; bdus may lower a value
 * but never raises it; a max size whose callbacks are all absent becomes 0. Callbacks see the
 * adjusted values in `ctx.attributes`.
 */
import { bounds, requestCallbacks, type RequestCallback } from './callbacks.js';
import { AttributeError, BdusError } from './errors.js';
import { inspect } from 'node:util';
import { native } from '../native.js';

export interface Attributes {
  /** Device size in bytes: a positive multiple of the physical block size. Required. */
  size?: number;
  /** Smallest addressable unit: a power of two from 512 to the page size. Default 512. */
  logicalBlockSize?: number;
  /** Smallest unit written without read-modify-write: 0 (= logical) or a power of two from the logical block size to the page size. */
  physicalBlockSize?: number;
  /** Most callbacks in progress at once. 0 means 1. Lowered to at most 256. */
  maxConcurrentCallbacks?: number;
  /** Largest read, write or FUA write a callback receives: 0 (default, 1 MiB) or at least the page size. */
  maxReadWriteSize?: number;
  /** Largest write-same a callback receives: 0 (default) or at least the logical block size. */
  maxWriteSameSize?: number;
  /** Largest write-zeroes a callback receives: 0 (default) or at least the logical block size. */
  maxWriteZerosSize?: number;
  /** Largest discard or secure erase a callback receives: 0 (default) or at least the logical block size. */
  maxDiscardEraseSize?: number;
  /**
   * Milliseconds a request may wait for its callback before its client gets ETIMEDOUT: 0
   * (default, 30 s) or up to 7 days. The device goes on serving later requests.
   */
  requestTimeout?: number;
  /** Never look for a partition table on the device. */
  disablePartitionScanning?: boolean;
  /**
   * A hint: the device is rotational (seeks cost), so I/O schedulers and filesystems may favour
   * sequential I/O. Shown by the ublk frontend (queue/rotational); the others drop it.
   */
  rotational?: boolean;
  /**
   * A hint: the I/O size the device prefers (queue/optimal_io_size, which mkfs reads for stripe
   * sizes): 0 (none) or a power of two from the physical block size up. ublk frontend only.
   */
  optimalIoSize?: number;
  /**
   * Hardware queues: 0 means 1. More let several CPUs submit without contending for one queue;
   * all are served by the driver's one event loop. ublk frontend only (the others have one);
   * lowered to the number of CPUs by the kernel, and to at most 64 here.
   */
  queues?: number;
  /**
   * Serve FUSE+loop requests over io_uring (Linux 6.14 and later) instead of reading and writing
   * /dev/fuse: fewer system calls per request. Root must allow it on the machine first
   * (`echo Y > /sys/module/fuse/parameters/enable_uring`; bdus never does). The kernel gives a
   * dead or replaced driver's ring requests to nobody, so such a device cannot be recoverable and
   * cannot be rerun. FUSE+loop only; the other frontends ignore it.
   */
  fuseIoUring?: boolean;
  /**
   * Threads serving the device's requests in the driver process: 0 means 1 (the main thread
   * alone), at most 64. Each lane is a thread with its own event loop, request layer and driver
   * instance, made anew from the driver's module; the kernel gives each request to whichever lane
   * reads it first. The driver must say it can (`laneSafe`: its data is shared, in a file say)
   * and come from a module (the CLI, or run()'s `recipe` option). FUSE+loop (over io_uring a
   * lane serves whole queues of the ring), ublk (a lane serves whole hardware queues: `queues` is
   * raised to `lanes`) and exports (a lane serves whole connections); docs/performance.md,
   * "lanes". A rerun's driver may have another number of lanes.
   */
  lanes?: number;
  /**
   * Keep the device when its driver dies abnormally (killed, crashed, aborted): requests wait for
   * a new driver (`bdus rerun`) instead of failing. See docs/recovery.md for what this demands.
   */
  recoverable?: boolean;
  /**
   * What a recoverable device does with requests its dead driver had received but not answered:
   * 'reissue' them to the next driver (default), 'fail-received' them with EIO (requests not yet
   * received still wait for the next driver), or 'fail-all': every request fails with EIO until
   * a driver attaches.
   */
  recoveryMode?: RecoveryMode;
  /**
   * Driver deaths a request may be in flight across: a request that was in flight when this many
   * drivers died fails alone with EIO. 0 means the default, 10.
   */
  restartLimit?: number;
  /**
   * Drivers in a row that may fail during recovery (die, or fail initialize, before serving)
   * before the device fails its waiting requests with EIO; it keeps its record, and a later
   * driver can still attach. 0 means the default, 2.
   */
  recoveryLimit?: number;
  /** Calls of a read, write or FUA write callback per request while it fails with EIO. 0 means the default, 5; 1 never retries. */
  transferTries?: number;
  /** Print attribute adjustments and every callback invocation to stderr. */
  log?: boolean;
}

export type EffectiveAttributes = { readonly [K in keyof Attributes]-?: NonNullable<Attributes[K]> };

export type AttributeName = keyof Attributes;

export const RECOVERY_MODES = ['reissue', 'fail-received', 'fail-all'] as const;
export type RecoveryMode = (typeof RECOVERY_MODES)[number];

interface AttributeSpec {
  readonly kind: 'bytes' | 'count' | 'duration' | 'flag' | 'choice';
  readonly doc: string;
  readonly choices?: readonly string[];
}

/** The attribute table. Order is the order of docs and `--help`. */
export const ATTRIBUTES: { readonly [K in AttributeName]-?: AttributeSpec } = {
  size: { kind: 'bytes', doc: 'device size in bytes (suffixes K, M, G, T: powers of 1024)' },
  logicalBlockSize: { kind: 'bytes', doc: 'logical block size: power of two, 512..page size (default 512)' },
  physicalBlockSize: { kind: 'bytes', doc: 'physical block size: 0 (= logical) or power of two, logical..page size' },
  maxConcurrentCallbacks: { kind: 'count', doc: 'most callbacks in progress at once (0 means 1; at most 256)' },
  maxReadWriteSize: { kind: 'bytes', doc: 'largest read/write/FUA write per callback: 0 (default 1 MiB) or >= page size' },
  maxWriteSameSize: { kind: 'bytes', doc: 'largest write-same per callback: 0 (default 1 GiB) or >= logical block size' },
  maxWriteZerosSize: { kind: 'bytes', doc: 'largest write-zeroes per callback: 0 (default 1 GiB) or >= logical block size' },
  maxDiscardEraseSize: { kind: 'bytes', doc: 'largest discard/secure erase per callback: 0 (default 1 GiB) or >= logical block size' },
  requestTimeout: { kind: 'duration', doc: 'time a request may take before it fails with ETIMEDOUT: 0 (default 30s) or up to 7 days (ms, s, m, h)' },
  disablePartitionScanning: { kind: 'flag', doc: 'never scan the device for partitions' },
  rotational: { kind: 'flag', doc: 'hint: the device is rotational (ublk only)' },
  optimalIoSize: { kind: 'bytes', doc: 'hint: preferred I/O size, 0 or a power of two >= physical block size (ublk only)' },
  queues: { kind: 'count', doc: 'hardware queues: 0 means 1, at most 64 (ublk only; the others have one)' },
  fuseIoUring: { kind: 'flag', doc: 'FUSE+loop over io_uring (Linux 6.14+, once root allows it); not recoverable, no rerun' },
  lanes: { kind: 'count', doc: 'threads serving requests: 0 means 1, at most 64 (lane-safe drivers; FUSE+loop, over io_uring at most one per CPU; ublk, its queues raised to lanes; an export, a connection per lane)' },
  recoverable: { kind: 'flag', doc: 'keep the device if the driver dies abnormally; a new driver attaches with rerun' },
  recoveryMode: { kind: 'choice', choices: RECOVERY_MODES, doc: 'requests a dead driver received: reissue (default), fail-received, or fail-all until a driver attaches' },
  restartLimit: { kind: 'count', doc: 'driver deaths a request may be in flight across before it fails alone (0: default 10)' },
  recoveryLimit: { kind: 'count', doc: 'drivers in a row that may fail during recovery before waiting I/O fails (0: default 2)' },
  transferTries: { kind: 'count', doc: 'calls of a read/write callback per request while it fails with EIO (0: default 5)' },
  log: { kind: 'flag', doc: 'log attribute adjustments and callback invocations to stderr' },
};

export const ATTRIBUTE_NAMES = Object.keys(ATTRIBUTES) as AttributeName[];

export const PAGE_SIZE: number = native.pageSize;
export const MAX_CONCURRENT_CALLBACKS = 256;
export const DEFAULT_MAX_READ_WRITE_SIZE = 1 << 20;
/** Reads and writes are never handed to a callback larger than this, whatever the attribute says. */
export const MAX_READ_WRITE_SIZE = 32 << 20;
export const DEFAULT_MAX_RANGE_SIZE = 1 << 30;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const MAX_REQUEST_TIMEOUT_MS = 7 * 24 * 3600_000;
/** MINIX libbdev's limits (seed 000): DRIVER_TRIES, RECOVER_TRIES, TRANSFER_TRIES. */
export const DEFAULT_RESTART_LIMIT = 10;
export const DEFAULT_RECOVERY_LIMIT = 2;
export const DEFAULT_TRANSFER_TRIES = 5;
/** Upper bound for the three limits: beyond it a limit is no limit. */
export const MAX_LIMIT = 1000;
export const MAX_QUEUES = 64;
export const MAX_LANES = 64;

/** A value as a message shows it; inspect(), not String(): an object without a prototype has no toString. */
function shown(value: unknown): string {
  return typeof value === 'object' && value !== null ? inspect(value, { depth: 1, breakLength: Infinity }) : String(value);
}

function refuse(name: string, value: unknown, rule: string): never {
  throw new AttributeError(`invalid attribute ${name}=${shown(value)}: ${rule}`);
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function integer(attrs: Attributes, name: AttributeName): number {
  const value = attrs[name] ?? 0;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    refuse(name, value, 'must be a non-negative integer');
  }
  return value;
}

function flag(attrs: Attributes, name: AttributeName): boolean {
  const value = attrs[name] ?? false;
  if (typeof value !== 'boolean') refuse(name, value, 'must be true or false');
  return value;
}

/**
 * A per-operation max size: 0 when none of its callbacks exist; the default for 0; otherwise the
 * value lowered to `cap` and to a multiple of the logical block size (never raised).
 */
function maxSize(value: number, present: boolean, fallback: number, cap: number, lbs: number): number {
  if (!present) return 0;
  const v = value === 0 ? fallback : Math.min(value, cap);
  return v - (v % lbs);
}

/**
 * Validates `attrs` for a new device run by `driver` and returns the adjusted attributes.
 * Throws an AttributeError naming the attribute, the value and the rule.
 */
export function adjustAttributes(attrs: Attributes, driver: object): EffectiveAttributes {
  for (const name of Object.keys(attrs)) {
    if (!(name in ATTRIBUTES)) {
      throw new AttributeError(`unknown attribute '${name}' (known: ${ATTRIBUTE_NAMES.join(', ')})`);
    }
  }
  const callbacks = requestCallbacks(driver);
  const has = (name: RequestCallback) => callbacks.includes(name);

  const lbs = integer(attrs, 'logicalBlockSize') || 512;
  if (!isPowerOfTwo(lbs) || lbs < 512 || lbs > PAGE_SIZE) {
    refuse('logicalBlockSize', lbs, `must be a power of two from 512 to the page size (${PAGE_SIZE})`);
  }
  const pbs = integer(attrs, 'physicalBlockSize') || lbs;
  if (!isPowerOfTwo(pbs) || pbs < lbs || pbs > PAGE_SIZE) {
    refuse('physicalBlockSize', pbs, `must be 0 or a power of two from logicalBlockSize (${lbs}) to the page size (${PAGE_SIZE})`);
  }
  const size = integer(attrs, 'size');
  if (size === 0) {
    throw new AttributeError('the device needs a size: this driver gives none, so give one (bdus run DRIVER --size SIZE, or the size attribute)');
  }
  if (size % pbs !== 0) {
    refuse('size', attrs.size ?? 0, `must be a multiple of the physical block size (${pbs})`);
  }
  const concurrency = integer(attrs, 'maxConcurrentCallbacks');

  const rw = integer(attrs, 'maxReadWriteSize');
  if (rw !== 0 && rw < PAGE_SIZE) refuse('maxReadWriteSize', rw, `must be 0 or at least the page size (${PAGE_SIZE})`);
  const ranges = (['maxWriteSameSize', 'maxWriteZerosSize', 'maxDiscardEraseSize'] as const).map((name) => {
    const v = integer(attrs, name);
    if (v !== 0 && v < lbs) refuse(name, v, `must be 0 or at least logicalBlockSize (${lbs})`);
    return v;
  }) as [number, number, number];

  const timeout = integer(attrs, 'requestTimeout');
  if (timeout > MAX_REQUEST_TIMEOUT_MS) refuse('requestTimeout', timeout, `must be 0 or at most 7 days (${MAX_REQUEST_TIMEOUT_MS} ms)`);

  const optimal = integer(attrs, 'optimalIoSize');
  if (optimal !== 0 && (!isPowerOfTwo(optimal) || optimal < pbs)) {
    refuse('optimalIoSize', optimal, `must be 0 or a power of two from physicalBlockSize (${pbs}) up`);
  }
  const queues = integer(attrs, 'queues');

  const limits = (['restartLimit', 'recoveryLimit', 'transferTries'] as const).map((name) => {
    const v = integer(attrs, name);
    if (v > MAX_LIMIT) refuse(name, v, `must be at most ${MAX_LIMIT}`);
    return v;
  }) as [number, number, number];
  const mode = attrs.recoveryMode ?? 'reissue';
  if (!RECOVERY_MODES.includes(mode)) refuse('recoveryMode', mode, `must be one of ${RECOVERY_MODES.join(', ')}`);

  const lanes = integer(attrs, 'lanes');
  if (lanes > MAX_LANES) refuse('lanes', lanes, `must be at most ${MAX_LANES}`);
  if (lanes > 1) {
    if (!(driver as { laneSafe?: boolean }).laneSafe) {
      refuse('lanes', lanes, "needs a lane-safe driver (laneSafe: its instances see the same data, as the file driver's do); this one is not (and a driver with filters is not, yet)");
    }
  }

  if (flag(attrs, 'fuseIoUring') && flag(attrs, 'recoverable')) {
    refuse('fuseIoUring', true, "fuseIoUring and recoverable exclude each other (the kernel does not give a dead driver's ring requests to the next one)");
  }

  if (has('fuaWrite') && !has('flush')) {
    throw new AttributeError('invalid driver: a driver with a fuaWrite callback must also have a flush callback');
  }

  return lockAttributes({
    size,
    logicalBlockSize: lbs,
    physicalBlockSize: pbs,
    maxConcurrentCallbacks: Math.min(concurrency || 1, MAX_CONCURRENT_CALLBACKS),
    maxReadWriteSize: maxSize(rw, bounds('maxReadWriteSize', callbacks), DEFAULT_MAX_READ_WRITE_SIZE, MAX_READ_WRITE_SIZE, lbs),
    maxWriteSameSize: maxSize(ranges[0], bounds('maxWriteSameSize', callbacks), DEFAULT_MAX_RANGE_SIZE, DEFAULT_MAX_RANGE_SIZE, lbs),
    maxWriteZerosSize: maxSize(ranges[1], bounds('maxWriteZerosSize', callbacks), DEFAULT_MAX_RANGE_SIZE, DEFAULT_MAX_RANGE_SIZE, lbs),
    maxDiscardEraseSize: maxSize(ranges[2], bounds('maxDiscardEraseSize', callbacks), DEFAULT_MAX_RANGE_SIZE, DEFAULT_MAX_RANGE_SIZE, lbs),
    requestTimeout: timeout || DEFAULT_REQUEST_TIMEOUT_MS,
    disablePartitionScanning: flag(attrs, 'disablePartitionScanning'),
    rotational: flag(attrs, 'rotational'),
    optimalIoSize: optimal,
    queues: Math.min(queues || 1, MAX_QUEUES),
    fuseIoUring: flag(attrs, 'fuseIoUring'),
    lanes: Math.max(lanes, 1),
    recoverable: flag(attrs, 'recoverable'),
    recoveryMode: mode,
    restartLimit: limits[0] || DEFAULT_RESTART_LIMIT,
    recoveryLimit: limits[1] || DEFAULT_RECOVERY_LIMIT,
    transferTries: limits[2] || DEFAULT_TRANSFER_TRIES,
    log: flag(attrs, 'log'),
  });
}

/**
 * Makes adjusted attributes read-only, but for `size`: one object is shared by the context, the
 * request layer and the frontend, and a resize (setDeviceSize) changes its size for all of them.
 */
export function lockAttributes(attributes: EffectiveAttributes): EffectiveAttributes {
  for (const name of Object.keys(attributes)) {
    if (name !== 'size') Object.defineProperty(attributes, name, { writable: false });
  }
  return Object.seal(attributes);
}

/** The device's new size, once its driver and its kernel path took it (see Device.resize). */
export function setDeviceSize(attributes: EffectiveAttributes, size: number): void {
  (attributes as { size: number }).size = size;
}

/** Why `size` cannot be the size of a device with these attributes, or undefined if it can. */
export function sizeProblem(size: number, attributes: Pick<EffectiveAttributes, 'physicalBlockSize'>): string | undefined {
  if (!Number.isSafeInteger(size) || size <= 0 || size % attributes.physicalBlockSize !== 0) {
    return `invalid size ${size}: must be a positive multiple of the physical block size (${attributes.physicalBlockSize})`;
  }
  return undefined;
}

/**
 * The attributes a driver gives when it replaces another on a live device: any attribute it
 * leaves out (or gives as 0 or false) keeps the device's value (BDUS's rule).
 */
export function inheritAttributes(given: Attributes, device: EffectiveAttributes): Attributes {
  const merged: Record<string, unknown> = { ...device };
  for (const name of ATTRIBUTE_NAMES) {
    const value = given[name];
    if (value !== undefined && value !== 0 && value !== false) merged[name] = value;
  }
  return merged as Attributes;
}

/**
 * Refuses a replacement driver that could not stand in for the current one (BDUS's rules): the
 * device's geometry stays, each max size is at least the current one, and every request
 * callback the current driver has, the new one has too. Throws a BdusError (EINVAL) saying why.
 */
export function checkReplacement(
  current: EffectiveAttributes,
  currentCallbacks: readonly string[],
  next: EffectiveAttributes,
  nextCallbacks: readonly string[],
): void {
  const refuseRerun = (why: string): never => {
    throw new BdusError('EINVAL', `the new driver cannot replace the current one: ${why}`);
  };
  if (current.fuseIoUring) refuseRerun('the device is served over FUSE io_uring, where the kernel gives no request of the current driver to the next one');
  // ublk raises queues to the lanes (a lane serves whole queues), which a rerun cannot.
  if (next.queues > current.queues && next.lanes > current.queues) {
    refuseRerun(`the device has ${current.queues} hardware queue${current.queues > 1 ? 's' : ''} and a lane serves whole queues: give --lanes ${current.queues} or fewer`);
  }
  for (const name of ['size', 'logicalBlockSize', 'physicalBlockSize', 'disablePartitionScanning', 'rotational', 'optimalIoSize', 'queues', 'fuseIoUring'] as const) {
    if (next[name] !== current[name]) refuseRerun(`${name} must stay ${shown(current[name])} (got ${shown(next[name])})`);
  }
  const missing = currentCallbacks.filter((name) => !nextCallbacks.includes(name));
  if (missing.length > 0) refuseRerun(`it lacks the ${missing.join(', ')} callback${missing.length > 1 ? 's' : ''} the current driver has`);
  for (const name of ['maxReadWriteSize', 'maxWriteSameSize', 'maxWriteZerosSize', 'maxDiscardEraseSize'] as const) {
    if (next[name] < current[name]) refuseRerun(`${name} must be at least ${current[name]} (got ${next[name]})`);
  }
}

/**
 * How many driver deaths a re-sent request may have been through before it fails alone:
 * restartLimit, or 1 when recoveryMode is fail-received (what a dead driver received fails).
 */
export function restartLimitOf(attributes: { readonly recoveryMode: string; readonly restartLimit: number }): number {
  return attributes.recoveryMode === 'fail-received' ? 1 : attributes.restartLimit;
}

/** Lines describing what adjustment changed, for the `log` attribute. */
export function describeAdjustments(given: Attributes, adjusted: EffectiveAttributes): string[] {
  return ATTRIBUTE_NAMES.filter((n) => given[n] !== undefined && given[n] !== adjusted[n]).map(
    (n) => `attribute ${n}: ${shown(given[n])} -> ${shown(adjusted[n])}`,
  );
}
