/// <reference types="node" preserve="true" />
// Kept in the emitted .d.ts: the public types use Buffer, and a project need not name node in its tsconfig.
/**
 * The driver API: what a driver writer implements and what bdus guarantees to it.
 *
 * A driver is an object of optional async callbacks plus default attributes. Every request
 * callback below can rely on these guarantees, checked once by the request layer before the
 * callback runs (drivers never need to re-check them):
 *
 * - `offset` and the size are multiples of `ctx.attributes.logicalBlockSize`;
 * - the size is positive and `offset + size <= ctx.attributes.size`;
 * - the size is at most the operation's max size attribute (larger client requests are split);
 * - a data buffer has exactly the request's size.
 *
 * Concurrency: at most `ctx.attributes.maxConcurrentCallbacks` callbacks are in progress at once
 * (a callback is in progress from its call until its promise settles). With 1, callbacks never
 * overlap. `initialize`, `onDeviceAvailable` and `terminate` never overlap any other callback.
 *
 * Errors: a request callback fails its request by throwing (or rejecting). ENOLINK, ENOSPC and
 * ETIMEDOUT (as `error.code`, e.g. a {@link DriverError} or a Node system error) fail it with
 * that errno; anything else with EIO, logged. FUSE+loop passes the three to the client; nbd.ko
 * turns every error into EIO; NBD has ENOSPC only (docs/frontends.md has the table). Throwing {@link DriverAbort} (or calling
 * `abort()`) ends the driver instead; the device is then destroyed.
 */
import type { Attributes, EffectiveAttributes } from './attributes.js';
import type { ReadResult } from './read-data.js';

/** Information about the device and driver instance, handed to every callback. */
export interface Context<State = unknown> {
  /** The device's id: unique for as long as the machine runs, never reused. */
  readonly id: bigint;
  /** The device's index: the N in its stable path /dev/bdus-N. Reused after the device is gone. */
  readonly index: number;
  /** The device's stable path, /dev/bdus-N. It exists once `onDeviceAvailable` runs. */
  readonly path: string;
  /** The kernel block device node behind the stable path (e.g. /dev/loop3 on FUSE+loop). */
  readonly kernelPath: string;
  /** The device's major and minor numbers; valid once `onDeviceAvailable` runs. */
  readonly major: number;
  readonly minor: number;
  /** The attributes as adjusted by bdus (see docs/attributes.md). */
  readonly attributes: EffectiveAttributes;
  /** Whether this driver instance replaced another on an existing device. */
  readonly isRerun: boolean;
  /** Whether the device refuses writes (the driver has no write-type callback). */
  readonly readOnly: boolean;
  /**
   * On a device with lanes (the `lanes` attribute; the driver has `laneSafe`): which lane this
   * instance serves, 0 for the process's main thread, 1 and up for the others. Undefined
   * without lanes.
   */
  readonly lane?: number;
  /**
   * On lanes 1 and up: what lane 0's instance handed them through {@link Driver.laneShare} (a
   * structured clone of it), already set when their `initialize` runs. Undefined elsewhere.
   */
  readonly laneShared?: unknown;
  /** Free for the driver's own use; bdus never reads or changes it. */
  state: State;
}

/** A driver: optional callbacks and default attributes. See the module comment for guarantees. */
export interface Driver<State = unknown> {
  /** Default attributes; options given to `run()` or the CLI's flags override them. */
  readonly attributes?: Attributes;

  /**
   * Whether several instances of this driver may serve one device at once, each in a thread of
   * its own (the `lanes` attribute, docs/performance.md): each lane makes the driver anew from
   * its module and runs its own `initialize` and `terminate`, and the kernel gives each request
   * to whichever lane reads it first. Say true only if every instance sees the same data (it
   * lives in a file, a block device or a remote store, not in the instance's memory), and a
   * flush on any instance covers the writes every instance completed (`fdatasync` on a shared
   * file does). The `file`, `null` and `pattern` drivers and the `ram` example are lane-safe.
   */
  readonly laneSafe?: boolean;

  /**
   * For lane-safe drivers whose instances share state that no file holds (the `ram` example):
   * what lane 0's instance (the process's main thread) hands every other lane's instance. Called
   * once, after lane 0's `initialize` and before the other lanes start; they find it as
   * `ctx.laneShared` in their own `initialize`. It crosses threads by structured clone: plain
   * data, SharedArrayBuffers (the same memory in every lane), file descriptors (numbers: the
   * lanes are threads of one process; lane 0 owns them and closes them in its `terminate`,
   * which runs after every other lane has stopped).
   */
  laneShare?(ctx: Context<State>): unknown;

  /**
   * Checks that this driver instance can serve the device, before anything changes: its
   * configuration makes sense, its backing store is reachable. On `bdus rerun` it runs before
   * the current driver is asked to hand over, so a failure leaves the current driver serving,
   * untouched; on a new device it runs before `initialize`, and a failure creates nothing.
   * `ctx.state` is not set yet. It must not take what the current driver may still hold (an
   * exclusive lock, a port): that belongs in `initialize`, which runs after the hand-over.
   */
  validate?(ctx: Context<State>): Promise<void> | void;

  /**
   * Runs once, before any other callback (but `validate`) and before the device exists. If it fails, the device
   * is never created, `terminate` is not called, and `run()` rejects with the error.
   */
  initialize?(ctx: Context<State>): Promise<void> | void;

  /**
   * Runs once the device is available to clients (its path exists). Default: print the path and
   * a newline to stdout. On a rerun it runs even though the device was already available. If it
   * fails, `terminate` runs and the device is destroyed.
   */
  onDeviceAvailable?(ctx: Context<State>): Promise<void> | void;

  /**
   * Runs once, after the driver stopped serving requests, when the device is destroyed normally.
   * Not called if `initialize` failed, after an abort, or if the process is killed.
   */
  terminate?(ctx: Context<State>): Promise<void> | void;

  /**
   * The device is asked to become `size` bytes (`bdus resize`, resizeDevice()): make the store
   * that size, or throw to refuse (the device keeps its size; the error reaches the user). Growing:
   * the new range must read back as zeros. Shrinking: what lies past `size` is given up.
   * `size` is a positive multiple of the physical block size, and differs from the current one.
   * It may run while request callbacks are in progress; requests for the new range reach
   * callbacks only after it returned, and once it returned, none reach past a smaller size.
   * `ctx.attributes.size` changes once it returned and the kernel took the new size (the kernel
   * refusing calls it again with the old size). Without it, the device cannot be resized.
   * With lanes it runs on lane 0's instance, then on every other lane's, each before the kernel
   * learns the size; on those, `ctx.laneShared` is lane 0's `laneShare` as it is after its
   * resize (a driver whose store is shared does the work on lane 0 and, on the others, takes
   * what it needs from there: the ram example maps the memory lane 0 added). A lane that throws
   * refuses the resize: every instance is asked back to the old size.
   * Kernel paths: FUSE+loop (loop's capacity change), kernel NBD (netlink reconfigure) and ublk
   * on Linux 6.16 and later (UPDATE_SIZE; earlier kernels refuse the resize before calling it).
   */
  resize?(size: number, ctx: Context<State>): Promise<void> | void;

  /**
   * The data at `offset`, exactly `buffer.length` bytes: fill `buffer` and return nothing, or
   * return memory of the driver's own that holds the data (a view of its store, a mapped file),
   * which spares a copy: FUSE+loop, NBD and ublk with user copy (see writeTarget) hand that
   * memory to the kernel as it is (one copy, the kernel's, where filling `buffer` makes two). Memory of another size fails the request
   * with EIO.
   *
   * Lifetime of returned memory: bdus reads it after the callback returned, until the reply has
   * left (on NBD, when the socket took it). Until then it must hold this request's data, and may
   * change only by the driver serving a write, write-zeroes or discard of the same range that
   * the client sent while this read was in flight (the client cannot tell which data it gets
   * then, as with any read racing a write). So a view of the store is safe; memory the driver
   * reuses for other data (a buffer taken from a pool and given back) is not: fill `buffer`
   * from it instead. ublk without user copy, a read split by maxReadWriteSize, and filters that
   * look at the data copy returned memory into `buffer` at once.
   * Kernel paths: ublk, FUSE+loop, kernel NBD, NBD exports.
   */
  read?(buffer: Buffer, offset: number, ctx: Context<State>): Promise<ReadResult> | ReadResult;

  /**
   * Store `data` (exactly the request's size) at `offset`. Do not keep `data` after returning:
   * its memory is reused. Kernel paths: ublk, FUSE+loop, kernel NBD, NBD exports.
   */
  write?(data: Buffer, offset: number, ctx: Context<State>): Promise<void> | void;

  /**
   * Optional, for `write` and `fuaWrite`: the memory where the data of a write of `size` bytes
   * at `offset` will live (a view of the driver's store), for bdus to receive the data straight
   * into, or undefined to have it in bdus's buffer as usual. The write callback is then called
   * with that very memory as `data`, and has nothing to copy: it can tell by `data.buffer` and
   * `data.byteOffset`. This spares the copy from bdus's buffer into the store, the write-side
   * twin of a read answering with its own memory. It must answer at once (not a promise); it is
   * asked only for a write that will reach one callback whole: the range checked as for every
   * callback, the device writable, `size` at most maxReadWriteSize. Memory of another size, or
   * a throw, is not used (logged once).
   *
   * Lifetime: the bytes land in this memory before `write` is called, while other callbacks run.
   * A write that never reaches `write` (the connection ended in the middle of its data, the
   * driver was stopping or aborted, the process died) may leave part of its data there, as a
   * disk losing power in the middle of a write may: the range's contents are then undefined, as
   * after any write that did not complete. So answer with the very place this range's data
   * lives, never with memory that holds anything else; a Buffer's memory stays mapped while
   * views of it live. Not asked through filters (a filter sees every write's data).
   * Kernel paths: NBD exports and kernel NBD, for writes of 32 KiB and more; ublk, every write:
   * a driver with writeTarget has its ublk device created with user copy (Linux 6.5 and later),
   * which also sends reads answered with the driver's memory in one copy. Not FUSE+loop (its
   * data arrives with its request, in bdus's buffer, before the offset is known).
   */
  writeTarget?(offset: number, size: number, ctx: Context<State>): Uint8Array | undefined;

  /**
   * Write the one logical block in `block` to every block of [offset, offset + size). Without it,
   * write-same requests become writes. Kernel paths: none (Linux removed REQ_OP_WRITE_SAME in
   * 5.18); it is kept for BDUS parity.
   */
  writeSame?(block: Buffer, offset: number, size: number, ctx: Context<State>): Promise<void> | void;

  /**
   * Make [offset, offset + size) read back as zeros. When `mayUnmap` is false, later writes to
   * the range must not fail for lack of space (allocate it). Without it, write-zeroes requests
   * become writes of zeros. Kernel paths: ublk (WRITE_ZEROES; mayUnmap unless NOUNMAP), FUSE+loop
   * (write-zeroes, and discards: mayUnmap true), kernel NBD and NBD exports (WRITE_ZEROES;
   * mayUnmap unless NO_HOLE).
   */
  writeZeros?(offset: number, size: number, mayUnmap: boolean, ctx: Context<State>): Promise<void> | void;

  /**
   * A write that is durable when it returns (Force Unit Access). Requires `flush`. Without it,
   * FUA writes become a write followed by a flush. Kernel paths: ublk, kernel NBD, NBD exports
   * (loop sends O_DSYNC writes as a write and a flush).
   */
  fuaWrite?(data: Buffer, offset: number, ctx: Context<State>): Promise<void> | void;

  /**
   * Make every write completed so far durable. Without it the device reports no write-back cache
   * need: flush requests succeed at once. Kernel paths: ublk, FUSE+loop, kernel NBD, NBD exports.
   */
  flush?(ctx: Context<State>): Promise<void> | void;

  /**
   * The range's contents are no longer needed. Reads of it may return anything afterwards.
   * Kernel paths: ublk (DISCARD), kernel NBD and NBD exports (TRIM); on FUSE+loop only when the
   * driver has no writeZeros, followed by writes of zeros (loop's discard must read back zeros).
   */
  discard?(offset: number, size: number, ctx: Context<State>): Promise<void> | void;

  /** Erase the range so that its previous contents cannot be recovered. Kernel paths: none here yet. */
  secureErase?(offset: number, size: number, ctx: Context<State>): Promise<void> | void;

  /**
   * Which parts of [offset, offset + size) hold data: extents in order from `offset`, covering
   * the range or a prefix of it (at least one; lengths multiples of the logical block size, the
   * last may end past the range and is cut). Asked by NBD clients' block-status queries (qemu-img
   * map, nbdinfo --map, nbdcopy's sparse copies); without it, everything is data. Reporting a
   * hole or zeros that are not there corrupts a sparse copy: when unsure, say data.
   * Kernel paths: NBD exports only (nbd.ko does not ask).
   */
  extents?(offset: number, size: number, ctx: Context<State>): Promise<readonly Extent[]> | readonly Extent[];

  /**
   * A device-specific ioctl. `argument` is the client's argument buffer (null for _IOC_NONE);
   * changes to it reach the client only if the callback succeeds. Unknown commands should throw
   * a DriverError('ENOTTY'). Must be idempotent, like every request. Kernel paths: none here
   * (loop answers ioctls itself; NBD has no ioctl).
   */
  ioctl?(command: number, argument: Buffer | null, ctx: Context<State>): Promise<void> | void;
}

/** A run of blocks with one allocation state, as `extents` reports it. */
export interface Extent {
  /** Bytes, a positive multiple of the logical block size. */
  readonly length: number;
  /** Not allocated: reading it costs nothing (NBD_STATE_HOLE). */
  readonly hole?: boolean;
  /** Reads back as zeros (NBD_STATE_ZERO). */
  readonly zero?: boolean;
}
