/**
 * What the request layer does to serve one request, below its admission and answer
 * (request-layer.ts): checks (alignment, bounds, read-only), splitting to the max sizes,
 * emulation of what the driver lacks, the concurrency limit, transfer retries, and the error
 * each failure becomes. Each operation ends in 0 or a positive errno (an Outcome).
 *
 * A callback that returns without a promise (the ram example's, say) is answered without one:
 * its operation's outcome is the number itself, and the request layer answers the request
 * before the frontend's handler returns. A promise costs allocations and a turn of the
 * microtask queue per request: for a driver that answers in microseconds, a measurable part of
 * the request (docs/performance.md, "Answers without promises").
 */
import { constants } from 'node:os';
import type { Context, Driver, Extent } from '../driver/driver.js';
import type { EffectiveAttributes } from '../driver/attributes.js';
import { clientErrno, DriverAbort } from '../driver/errors.js';
import { collect, describe, isRetryable, isTransfer, messageOf } from './describe.js';
import { cutExtents } from './extents.js';
import { Operation, OPERATION_NAMES } from './operation.js';
import { RequestCounters } from '../stats/counters.js';
import { Slot } from '../stats/layout.js';
import { ownReadData, type ReadResult } from '../driver/read-data.js';
import type { Exchange } from './exchange.js';

const { EIO, EINVAL, EOPNOTSUPP, ENOTTY, EROFS } = constants.errno;

/** How an operation ends: 0 or a positive errno, now (the callbacks returned at once) or later. */
export type Outcome = number | Promise<number>;

/** `next` applied to an outcome: at once if it is a number, once it settles if not. */
function then(outcome: Outcome, next: (errno: number) => Outcome): Outcome {
  return typeof outcome === 'number' ? next(outcome) : outcome.then(next);
}

function isPromise(value: unknown): value is Promise<ReadResult> {
  return typeof (value as { then?: unknown } | undefined)?.then === 'function';
}

/** Largest zero buffer kept for write-zeroes emulation; longer ranges reuse it in pieces. */
const ZERO_BUFFER_SIZE = 1 << 20;

export interface RequestLayerHooks {
  /** The driver threw DriverAbort: end it. Called once. */
  abort(error: Error): void;
  /** A line for the device's log (stderr). */
  log(message: string): void;
}

type AnyDriver = Driver<any>;

export abstract class Operations {
  /** The statistics (src/stats): per request, and the callbacks' concurrency and retries. */
  readonly counters = new RequestCounters();

  protected readonly attrs: EffectiveAttributes;
  protected readonly limit: number;
  protected readonly transferTries: number;
  protected active = 0;
  protected readonly waiting: Array<() => void> = [];
  protected accepting = true;
  protected aborted = false;
  protected onIdle: (() => void) | undefined;
  private zeros: Buffer | undefined;

  constructor(
    protected readonly driver: AnyDriver,
    protected readonly ctx: Context<any>,
    protected readonly hooks: RequestLayerHooks,
  ) {
    this.attrs = ctx.attributes;
    this.limit = this.attrs.maxConcurrentCallbacks;
    this.transferTries = this.attrs.transferTries;
  }

  /** Callbacks in progress right now. */
  get inProgress(): number {
    return this.active;
  }

  // ---- Operations: checks, splitting, emulation; each resolves to 0 or an errno ---------------

  /** A read; `x` takes the callback's own memory, if it answers with some and the read is not split. */
  protected readOp(buffer: Buffer, offset: number, x: Exchange | undefined): Outcome {
    if (!this.accepting) return EIO;
    if (!this.driver.read) return EOPNOTSUPP;
    return this.bufferOp(Operation.READ, buffer, offset, this.attrs.maxReadWriteSize, x);
  }

  protected writeOp(data: Buffer, offset: number): Outcome {
    if (!this.accepting) return EIO;
    if (this.ctx.readOnly) return EROFS;
    if (!this.driver.write) return EOPNOTSUPP;
    return this.bufferOp(Operation.WRITE, data, offset, this.attrs.maxReadWriteSize);
  }

  protected fuaWriteOp(data: Buffer, offset: number): Outcome {
    if (!this.accepting) return EIO;
    if (this.ctx.readOnly) return EROFS;
    if (this.driver.fuaWrite) return this.bufferOp(Operation.FUA_WRITE, data, offset, this.attrs.maxReadWriteSize);
    return then(this.writeOp(data, offset), this.flushAfter);
  }

  private readonly flushAfter = (errno: number): Outcome => (errno !== 0 ? errno : this.flushOp());

  protected flushOp(): Outcome {
    if (!this.accepting) return EIO;
    if (!this.driver.flush) return 0;
    return this.invoke(Operation.FLUSH, undefined, 0, 0);
  }

  protected writeZerosOp(offset: number, size: number, mayUnmap: boolean): Outcome {
    if (!this.accepting) return EIO;
    if (this.ctx.readOnly) return EROFS;
    if (this.driver.writeZeros) return this.rangeOp(Operation.WRITE_ZEROS, offset, size, this.attrs.maxWriteZerosSize, mayUnmap);
    if (this.driver.write) return this.checked(offset, size, Operation.WRITE_ZEROS) ?? this.writeZeroBuffers(offset, size);
    return EOPNOTSUPP;
  }

  protected discardOp(offset: number, size: number): Outcome {
    if (!this.accepting) return EIO;
    if (this.ctx.readOnly) return EROFS;
    if (!this.driver.discard) return EOPNOTSUPP;
    return this.rangeOp(Operation.DISCARD, offset, size, this.attrs.maxDiscardEraseSize, undefined);
  }

  protected async zeroingDiscardOp(offset: number, size: number): Promise<number> {
    if (!this.accepting) return EIO;
    if (this.ctx.readOnly) return EROFS;
    if (this.driver.writeZeros) return this.writeZerosOp(offset, size, true);
    if (this.driver.discard) {
      const errno = await this.discardOp(offset, size);
      if (errno !== 0 || !this.driver.write) return errno;
    }
    return this.writeZerosOp(offset, size, true);
  }

  protected secureEraseOp(offset: number, size: number): Outcome {
    if (!this.accepting) return EIO;
    if (this.ctx.readOnly) return EROFS;
    if (!this.driver.secureErase) return EOPNOTSUPP;
    return this.rangeOp(Operation.SECURE_ERASE, offset, size, this.attrs.maxDiscardEraseSize, undefined);
  }

  protected writeSameOp(block: Buffer, offset: number, size: number): Outcome {
    if (!this.accepting) return EIO;
    if (this.ctx.readOnly) return EROFS;
    if (block.length !== this.attrs.logicalBlockSize) return this.invalid(Operation.WRITE_SAME, offset, size);
    if (this.driver.writeSame) return this.rangeOp(Operation.WRITE_SAME, offset, size, this.attrs.maxWriteSameSize, block);
    if (!this.driver.write) return EOPNOTSUPP;
    const bad = this.checked(offset, size, Operation.WRITE_SAME);
    if (bad) return bad;
    const data = Buffer.allocUnsafe(Math.min(size, this.attrs.maxReadWriteSize));
    for (let i = 0; i < data.length; i += block.length) block.copy(data, i);
    return this.repeatWrite(data, offset, size);
  }

  protected ioctlOp(command: number, argument: Buffer | null): Outcome {
    if (!this.accepting) return EIO;
    if (!this.driver.ioctl) return ENOTTY;
    return this.invoke(Operation.IOCTL, argument, command, 0);
  }

  /**
   * Block status of [offset, offset + size): the driver's extents, checked, cut to the range and
   * appended to `into`. Without an extents callback, the range is one data extent. A malformed
   * answer (no extent, a length that is not a positive multiple of the logical block size) fails
   * the query with EIO, and is logged.
   */
  protected async extentsOp(offset: number, size: number, into: Extent[]): Promise<number> {
    if (!this.accepting) return EIO;
    const bad = this.checked(offset, size, Operation.EXTENTS);
    if (bad) return bad;
    if (!this.driver.extents) {
      into.push({ length: size });
      return 0;
    }
    const start = into.length;
    const errno = await this.invoke(Operation.EXTENTS, into, offset, size);
    if (errno !== 0) return errno;
    const problem = cutExtents(into, start, size, this.attrs.logicalBlockSize);
    if (!problem) return 0;
    this.hooks.log(`extents(offset=${offset}, size=${size}) ${problem}; the query fails with EIO`);
    return EIO;
  }

  // ---- Internals ------------------------------------------------------------------------------

  protected checked(offset: number, size: number, op: Operation): Outcome | undefined {
    return this.valid(offset, size) ? undefined : this.invalid(op, offset, size);
  }

  /** Whether [offset, offset + size) is a range a callback may get: aligned to the logical block size, not empty, within the device. */
  protected valid(offset: number, size: number): boolean {
    const lbs = this.attrs.logicalBlockSize;
    return size > 0 && offset % lbs === 0 && size % lbs === 0 && offset + size <= this.attrs.size;
  }

  protected invalid(op: Operation, offset: number, size: number): Outcome {
    this.hooks.log(`refused ${OPERATION_NAMES[op]}(offset=${offset}, size=${size}): not aligned to the logical block size or outside the device`);
    return EINVAL;
  }

  protected bufferOp(op: Operation, buffer: Buffer, offset: number, max: number, x?: Exchange): Outcome {
    const bad = this.checked(offset, buffer.length, op);
    if (bad) return bad;
    if (buffer.length <= max) return this.invoke(op, buffer, offset, 0, x);
    return this.splitBuffer(op, buffer, offset, max);
  }

  protected async splitBuffer(op: Operation, buffer: Buffer, offset: number, max: number): Promise<number> {
    for (let done = 0; done < buffer.length; done += max) {
      const errno = await this.invoke(op, buffer.subarray(done, done + max), offset + done, 0);
      if (errno !== 0) return errno;
    }
    return 0;
  }

  protected async rangeOp(op: Operation, offset: number, size: number, max: number, extra: unknown): Promise<number> {
    const bad = this.checked(offset, size, op);
    if (bad) return bad;
    for (let done = 0; done < size; done += max) {
      const errno = await this.invoke(op, extra, offset + done, Math.min(max, size - done));
      if (errno !== 0) return errno;
    }
    return 0;
  }

  protected writeZeroBuffers(offset: number, size: number): Outcome {
    const length = Math.min(ZERO_BUFFER_SIZE, this.attrs.maxReadWriteSize);
    if (!this.zeros || this.zeros.length < length) this.zeros = Buffer.alloc(length);
    return this.repeatWrite(this.zeros.subarray(0, length), offset, size);
  }

  /** Writes `data` (or a prefix of it, at the end) over [offset, offset + size). */
  protected async repeatWrite(data: Buffer, offset: number, size: number): Promise<number> {
    for (let done = 0; done < size; done += data.length) {
      const piece = size - done < data.length ? data.subarray(0, size - done) : data;
      const errno = await this.invoke(Operation.WRITE, piece, offset + done, 0);
      if (errno !== 0) return errno;
    }
    return 0;
  }

  /**
   * Runs one callback within the concurrency limit. `a`, `b`, `c` are its arguments by
   * operation; `x`, for a whole (unsplit) read, may take the memory the callback answers with.
   * Synchronous as long as the callback is and a concurrency slot is free.
   */
  protected invoke(op: Operation, a: unknown, b: number, c: number, x?: Exchange): Outcome {
    if (this.active >= this.limit) return this.invokeWhenFree(op, a, b, c, x);
    // The gauges move by steps, not by stores of the count: a device's lanes add theirs in (src/lane).
    this.active++;
    this.counters.add(Slot.CALLBACKS);
    return this.calls(op, a, b, c, x, 1);
  }

  private async invokeWhenFree(op: Operation, a: unknown, b: number, c: number, x: Exchange | undefined): Promise<number> {
    await new Promise<void>((resolve) => {
      this.waiting.push(resolve);
      this.counters.add(Slot.WAITING);
    });
    if (this.aborted) return EIO;
    return this.calls(op, a, b, c, x, 1);
  }

  /**
   * Calls the callback, from its `call`th call on, until it succeeds or fails for good, holding
   * a concurrency slot it releases at the end. Stays synchronous until a call returns a promise.
   */
  private calls(op: Operation, a: unknown, b: number, c: number, x: Exchange | undefined, call: number): Outcome {
    for (; ; call++) {
      try {
        const result = this.call(op, a, b, c);
        if (isPromise(result)) return this.settleCall(result, op, a, b, c, x, call);
        this.succeeded(op, a, result, x);
        this.release();
        return 0;
      } catch (error) {
        if (!this.retries(op, a, b, c, call, error)) return this.failed(op, a, b, c, error);
      }
    }
  }

  private async settleCall(pending: Promise<ReadResult>, op: Operation, a: unknown, b: number, c: number, x: Exchange | undefined, call: number): Promise<number> {
    try {
      this.succeeded(op, a, await pending, x);
    } catch (error) {
      if (this.retries(op, a, b, c, call, error)) return this.calls(op, a, b, c, x, call + 1);
      return this.failed(op, a, b, c, error);
    }
    this.release();
    return 0;
  }

  private succeeded(op: Operation, a: unknown, result: ReadResult, x: Exchange | undefined): void {
    if (op === Operation.READ && result !== undefined) this.takeOwnData(a as Buffer, result, x);
  }

  /** Whether a failed call is to be made again (seed 000: an EIO from a transfer may succeed when repeated). */
  private retries(op: Operation, a: unknown, b: number, c: number, call: number, error: unknown): boolean {
    if (call >= this.transferTries || !isTransfer(op) || this.aborted || !isRetryable(error)) return false;
    this.counters.add(Slot.TRANSFER_RETRIES);
    this.hooks.log(`${describe(op, b, c, a)} failed (${messageOf(error)}); trying again (${call + 1} of ${this.transferTries})`);
    return true;
  }

  private failed(op: Operation, a: unknown, b: number, c: number, error: unknown): number {
    const errno = this.failure(op, b, c, a, error);
    this.release();
    return errno;
  }

  /** A read answered with memory of the callback's own: the frontend sends it if it can, else it is copied now. */
  private takeOwnData(buffer: Buffer, result: unknown, x: Exchange | undefined): void {
    const data = ownReadData(buffer, result);
    if (!data) return;
    if (x?.takesOwnData) x.ownData = data;
    else buffer.set(data);
  }

  protected call(op: Operation, a: unknown, b: number, c: number): Promise<ReadResult> | ReadResult {
    const { driver, ctx } = this;
    if (this.attrs.log) this.logCall(op, b, c, a);
    switch (op) {
      case Operation.READ:
        return driver.read!(a as Buffer, b, ctx);
      case Operation.WRITE:
        return driver.write!(a as Buffer, b, ctx);
      case Operation.FUA_WRITE:
        return driver.fuaWrite!(a as Buffer, b, ctx);
      case Operation.FLUSH:
        return driver.flush!(ctx);
      case Operation.WRITE_ZEROS:
        return driver.writeZeros!(b, c, a as boolean, ctx);
      case Operation.DISCARD:
        return driver.discard!(b, c, ctx);
      case Operation.SECURE_ERASE:
        return driver.secureErase!(b, c, ctx);
      case Operation.WRITE_SAME:
        return driver.writeSame!(a as Buffer, b, c, ctx);
      case Operation.IOCTL:
        return driver.ioctl!(b, a as Buffer | null, ctx);
      case Operation.EXTENTS:
        return collect(driver.extents!(b, c, ctx), a as Extent[]);
    }
  }

  protected release(): void {
    const next = this.waiting.shift();
    if (next) {
      this.counters.add(Slot.WAITING, -1);
      return next(); // the slot passes to the next waiter
    }
    this.active--;
    this.counters.add(Slot.CALLBACKS, -1);
    if (this.active === 0 && this.onIdle) {
      this.onIdle();
      this.onIdle = undefined;
    }
  }

  protected failure(op: Operation, b: number, c: number, a: unknown, error: unknown): number {
    if (error instanceof DriverAbort || (error as Error | null)?.name === 'DriverAbort') {
      this.hooks.log(`${describe(op, b, c, a)} aborted the driver: ${(error as Error).message}`);
      this.hooks.abort(error as Error);
      return EIO;
    }
    const errno = clientErrno(error);
    const message = messageOf(error);
    this.hooks.log(`${describe(op, b, c, a)} failed: ${message} (client sees ${errno === EIO ? 'EIO' : (error as { code: string }).code})`);
    return errno;
  }

  protected logCall(op: Operation, b: number, c: number, a: unknown): void {
    this.hooks.log(describe(op, b, c, a));
  }
}
