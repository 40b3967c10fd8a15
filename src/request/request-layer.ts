/**
 * The request layer, shared by every frontend: where a request is checked, split, emulated,
 * dispatched to a callback and where the callback's outcome becomes an errno.
 *
 * A frontend decodes a kernel message and calls one of the public methods below with the
 * request's Exchange; the answer (0 or a positive errno) comes back through it for the frontend
 * to encode. Nothing here knows about FUSE or NBD.
 *
 * - Checks: offset and size are multiples of the logical block size, size > 0, within the device
 *   (EINVAL otherwise, logged: a correct kernel never sends such a request); a write of any kind
 *   to a read-only device fails with EROFS (NBD sends it as EPERM).
 * - Splitting: a request larger than its operation's max size attribute becomes several
 *   callbacks, in order; the first failure fails the request.
 * - Emulation: write-zeroes and write-same through write, FUA write through write + flush, flush
 *   without a flush callback succeeds (no write-back cache).
 * - Concurrency: at most maxConcurrentCallbacks callbacks in progress; the rest wait in FIFO order.
 *   Waiting never blocks the frontend from reading further requests.
 * - Restarts: a request that has been in flight across restartLimit driver deaths (as the
 *   frontend tells through its exchange) fails alone with EIO.
 * - Errors: see clientErrno(); a DriverAbort ends the driver through `hooks.abort`. A read or
 *   write callback failing with what the client would see as EIO is called again, up to
 *   transferTries calls in all (seed 000's transfer retries); other failures are final.
 * - Timeouts: every admitted request is stamped on `timer` (see RequestTimer) and answered with
 *   ETIMEDOUT if requestTimeout passes before its callbacks end, on every frontend alike.
 * - Answers: through the request's Exchange (exchange.ts): answer(errno), then finish() once no
 *   callback holds its buffers.
 */
import { constants } from 'node:os';
import type { Context, Driver, Extent } from '../driver/driver.js';
import { restartLimitOf, type EffectiveAttributes } from '../driver/attributes.js';
import { clientErrno, DriverAbort } from '../driver/errors.js';
import { Operation, OPERATION_NAMES } from './operation.js';
import type { Exchange } from './exchange.js';
import { collect, describe, isRetryable, isTransfer, messageOf } from './describe.js';
import { cutExtents } from './extents.js';
import { IDLE, RequestTimer } from './request-timer.js';

const { EIO, EINVAL, EOPNOTSUPP, ENOTTY, EROFS } = constants.errno;
const RESOLVED = [0, EIO, EINVAL, EOPNOTSUPP, ENOTTY, EROFS].reduce(
  (m, e) => m.set(e, Promise.resolve(e)),
  new Map<number, Promise<number>>(),
);
const resolved = (errno: number) => RESOLVED.get(errno) as Promise<number>;

/** Largest zero buffer kept for write-zeroes emulation; longer ranges reuse it in pieces. */
const ZERO_BUFFER_SIZE = 1 << 20;

export interface RequestLayerHooks {
  /** The driver threw DriverAbort: end it. Called once. */
  abort(error: Error): void;
  /** A line for the device's log (stderr). */
  log(message: string): void;
}

type AnyDriver = Driver<any>;

export class RequestLayer {
  /** Completed callback invocations, indexed by Operation. */
  readonly completed = new Float64Array(OPERATION_NAMES.length);
  /** Failed callback invocations, indexed by Operation. */
  readonly failed = new Float64Array(OPERATION_NAMES.length);
  /** Fails requests that wait too long; frontends stamp their requests with `timer.now`. */
  readonly timer: RequestTimer;

  private readonly attrs: EffectiveAttributes;
  private readonly limit: number;
  private readonly transferTries: number;
  private readonly restartLimit: number;
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  private accepting = true;
  private aborted = false;
  private onIdle: (() => void) | undefined;
  private zeros: Buffer | undefined;
  /** Admitted requests not yet settled: what the timer looks at. */
  private readonly tracked = new Set<Exchange>();

  constructor(
    private readonly driver: AnyDriver,
    private readonly ctx: Context<any>,
    private readonly hooks: RequestLayerHooks,
  ) {
    this.attrs = ctx.attributes;
    this.limit = this.attrs.maxConcurrentCallbacks;
    this.transferTries = this.attrs.transferTries;
    this.restartLimit = restartLimitOf(this.attrs);
    this.timer = new RequestTimer(this.attrs.requestTimeout, hooks.log);
    this.timer.watch(this.tracked);
  }

  /** Callbacks in progress right now. */
  get inProgress(): number {
    return this.active;
  }

  // ---- Entry points for frontends -------------------------------------------------------------
  //
  // Each admits one request: stamps it for the timer, runs its callbacks, and answers it through
  // its exchange (see exchange.ts): with the outcome, or with ETIMEDOUT if requestTimeout passes
  // first. The frontend has only decoded the request; everything else happens here.

  read(x: Exchange, buffer: Buffer, offset: number): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, this.readOp(buffer, offset));
  }

  write(x: Exchange, data: Buffer, offset: number): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, this.writeOp(data, offset));
  }

  fuaWrite(x: Exchange, data: Buffer, offset: number): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, this.fuaWriteOp(data, offset));
  }

  flush(x: Exchange): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, this.flushOp());
  }

  writeZeros(x: Exchange, offset: number, size: number, mayUnmap: boolean): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, this.writeZerosOp(offset, size, mayUnmap));
  }

  /**
   * A discard. With `zeroes`, the range must read back as zeros afterwards: FUSE+loop's
   * PUNCH_HOLE stands for both a kernel discard and a write-zeroes that may unmap, and ext4 and
   * XFS rely on the zeros. It is served by writeZeros(mayUnmap=true) when the driver has it,
   * else by discard (when it has it) followed by writes of zeros.
   */
  discard(x: Exchange, offset: number, size: number, zeroes = false): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, zeroes ? this.zeroingDiscardOp(offset, size) : this.discardOp(offset, size));
  }

  secureErase(x: Exchange, offset: number, size: number): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, this.secureEraseOp(offset, size));
  }

  writeSame(x: Exchange, block: Buffer, offset: number, size: number): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, this.writeSameOp(block, offset, size));
  }

  ioctl(x: Exchange, command: number, argument: Buffer | null): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, this.ioctlOp(command, argument));
  }

  /** Block status into `into` (see extentsOp); the exchange is answered once it is filled. */
  extents(x: Exchange, offset: number, size: number, into: Extent[]): void {
    if (x.restarts > 0 && !this.admit(x)) return;
    this.track(x, this.extentsOp(offset, size, into));
  }

  /** Requests admitted whose callbacks have not all ended (answered or not: a timed-out one stays until then). */
  get inFlight(): number {
    return this.tracked.size;
  }

  /** A request that has been in flight across too many driver deaths fails alone (seed 000). */
  private admit(x: Exchange): boolean {
    const restarts = x.restarts;
    x.restarts = 0;
    if (restarts < this.restartLimit) return true;
    this.hooks.log(
      this.restartLimit === 1
        ? 'a request the previous driver received fails with EIO (recoveryMode fail-received)'
        : `a request was in flight across ${restarts} driver deaths: it fails with EIO (restartLimit ${this.restartLimit})`,
    );
    x.answer(EIO);
    x.finish();
    return false;
  }

  private track(x: Exchange, outcome: Promise<number>): void {
    x.startedAt = this.timer.now;
    this.tracked.add(x);
    x.settle ??= (errno) => this.settle(x, errno);
    void outcome.then(x.settle);
  }

  private settle(x: Exchange, errno: number): void {
    this.tracked.delete(x);
    if (!x.timedOut) x.answer(errno);
    x.startedAt = IDLE;
    x.finish();
  }

  // ---- Operations: checks, splitting, emulation; each resolves to 0 or an errno ---------------

  private readOp(buffer: Buffer, offset: number): Promise<number> {
    if (!this.accepting) return resolved(EIO);
    if (!this.driver.read) return resolved(EOPNOTSUPP);
    return this.bufferOp(Operation.READ, buffer, offset, this.attrs.maxReadWriteSize);
  }

  private writeOp(data: Buffer, offset: number): Promise<number> {
    if (!this.accepting) return resolved(EIO);
    if (this.ctx.readOnly) return resolved(EROFS);
    if (!this.driver.write) return resolved(EOPNOTSUPP);
    return this.bufferOp(Operation.WRITE, data, offset, this.attrs.maxReadWriteSize);
  }

  private async fuaWriteOp(data: Buffer, offset: number): Promise<number> {
    if (!this.accepting) return EIO;
    if (this.ctx.readOnly) return EROFS;
    if (this.driver.fuaWrite) return this.bufferOp(Operation.FUA_WRITE, data, offset, this.attrs.maxReadWriteSize);
    const errno = await this.writeOp(data, offset);
    return errno !== 0 ? errno : this.flushOp();
  }

  private flushOp(): Promise<number> {
    if (!this.accepting) return resolved(EIO);
    if (!this.driver.flush) return resolved(0);
    return this.invoke(Operation.FLUSH, undefined, 0, 0);
  }

  private writeZerosOp(offset: number, size: number, mayUnmap: boolean): Promise<number> {
    if (!this.accepting) return resolved(EIO);
    if (this.ctx.readOnly) return resolved(EROFS);
    if (this.driver.writeZeros) return this.rangeOp(Operation.WRITE_ZEROS, offset, size, this.attrs.maxWriteZerosSize, mayUnmap);
    if (this.driver.write) return this.checked(offset, size, Operation.WRITE_ZEROS) ?? this.writeZeroBuffers(offset, size);
    return resolved(EOPNOTSUPP);
  }

  private discardOp(offset: number, size: number): Promise<number> {
    if (!this.accepting) return resolved(EIO);
    if (this.ctx.readOnly) return resolved(EROFS);
    if (!this.driver.discard) return resolved(EOPNOTSUPP);
    return this.rangeOp(Operation.DISCARD, offset, size, this.attrs.maxDiscardEraseSize, undefined);
  }

  private async zeroingDiscardOp(offset: number, size: number): Promise<number> {
    if (!this.accepting) return EIO;
    if (this.ctx.readOnly) return EROFS;
    if (this.driver.writeZeros) return this.writeZerosOp(offset, size, true);
    if (this.driver.discard) {
      const errno = await this.discardOp(offset, size);
      if (errno !== 0 || !this.driver.write) return errno;
    }
    return this.writeZerosOp(offset, size, true);
  }

  private secureEraseOp(offset: number, size: number): Promise<number> {
    if (!this.accepting) return resolved(EIO);
    if (this.ctx.readOnly) return resolved(EROFS);
    if (!this.driver.secureErase) return resolved(EOPNOTSUPP);
    return this.rangeOp(Operation.SECURE_ERASE, offset, size, this.attrs.maxDiscardEraseSize, undefined);
  }

  private writeSameOp(block: Buffer, offset: number, size: number): Promise<number> {
    if (!this.accepting) return resolved(EIO);
    if (this.ctx.readOnly) return resolved(EROFS);
    if (block.length !== this.attrs.logicalBlockSize) return this.invalid(Operation.WRITE_SAME, offset, size);
    if (this.driver.writeSame) return this.rangeOp(Operation.WRITE_SAME, offset, size, this.attrs.maxWriteSameSize, block);
    if (!this.driver.write) return resolved(EOPNOTSUPP);
    const bad = this.checked(offset, size, Operation.WRITE_SAME);
    if (bad) return bad;
    const data = Buffer.allocUnsafe(Math.min(size, this.attrs.maxReadWriteSize));
    for (let i = 0; i < data.length; i += block.length) block.copy(data, i);
    return this.repeatWrite(data, offset, size);
  }

  private ioctlOp(command: number, argument: Buffer | null): Promise<number> {
    if (!this.accepting) return resolved(EIO);
    if (!this.driver.ioctl) return resolved(ENOTTY);
    return this.invoke(Operation.IOCTL, argument, command, 0);
  }

  /**
   * Block status of [offset, offset + size): the driver's extents, checked, cut to the range and
   * appended to `into`. Without an extents callback, the range is one data extent. A malformed
   * answer (no extent, a length that is not a positive multiple of the logical block size) fails
   * the query with EIO, and is logged.
   */
  private async extentsOp(offset: number, size: number, into: Extent[]): Promise<number> {
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

  // ---- Life cycle -----------------------------------------------------------------------------

  /**
   * Stops taking requests (later ones fail with EIO) and resolves once no callback is in
   * progress, or once a request timeout (plus the timer's slack) has passed: by then every
   * request still running has been answered with ETIMEDOUT, and a callback stuck for good must
   * not hold up terminate for ever.
   */
  async drain(): Promise<void> {
    this.accepting = false;
    if (this.active > 0) {
      let timer: NodeJS.Timeout | undefined;
      const idle = new Promise<void>((resolve) => (this.onIdle = resolve));
      const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.attrs.requestTimeout * 1.25 + 100)));
      await Promise.race([idle, late]);
      clearTimeout(timer);
      if (this.active > 0) this.hooks.log(`${this.active} callback(s) still running after their requests timed out; terminating anyway`);
    }
    this.timer.stop();
  }

  /** Stops at once: waiting requests fail with EIO; callbacks in progress are no longer awaited. */
  abortAll(): void {
    this.accepting = false;
    this.aborted = true;
    this.timer.stop();
    for (const wake of this.waiting.splice(0)) wake();
  }

  // ---- Internals ------------------------------------------------------------------------------

  private checked(offset: number, size: number, op: Operation): Promise<number> | undefined {
    const lbs = this.attrs.logicalBlockSize;
    if (size > 0 && offset % lbs === 0 && size % lbs === 0 && offset + size <= this.attrs.size) return undefined;
    return this.invalid(op, offset, size);
  }

  private invalid(op: Operation, offset: number, size: number): Promise<number> {
    this.hooks.log(`refused ${OPERATION_NAMES[op]}(offset=${offset}, size=${size}): not aligned to the logical block size or outside the device`);
    return resolved(EINVAL);
  }

  private bufferOp(op: Operation, buffer: Buffer, offset: number, max: number): Promise<number> {
    const bad = this.checked(offset, buffer.length, op);
    if (bad) return bad;
    if (buffer.length <= max) return this.invoke(op, buffer, offset, 0);
    return this.splitBuffer(op, buffer, offset, max);
  }

  private async splitBuffer(op: Operation, buffer: Buffer, offset: number, max: number): Promise<number> {
    for (let done = 0; done < buffer.length; done += max) {
      const errno = await this.invoke(op, buffer.subarray(done, done + max), offset + done, 0);
      if (errno !== 0) return errno;
    }
    return 0;
  }

  private async rangeOp(op: Operation, offset: number, size: number, max: number, extra: unknown): Promise<number> {
    const bad = this.checked(offset, size, op);
    if (bad) return bad;
    for (let done = 0; done < size; done += max) {
      const errno = await this.invoke(op, extra, offset + done, Math.min(max, size - done));
      if (errno !== 0) return errno;
    }
    return 0;
  }

  private writeZeroBuffers(offset: number, size: number): Promise<number> {
    const length = Math.min(ZERO_BUFFER_SIZE, this.attrs.maxReadWriteSize);
    if (!this.zeros || this.zeros.length < length) this.zeros = Buffer.alloc(length);
    return this.repeatWrite(this.zeros.subarray(0, length), offset, size);
  }

  /** Writes `data` (or a prefix of it, at the end) over [offset, offset + size). */
  private async repeatWrite(data: Buffer, offset: number, size: number): Promise<number> {
    for (let done = 0; done < size; done += data.length) {
      const piece = size - done < data.length ? data.subarray(0, size - done) : data;
      const errno = await this.invoke(Operation.WRITE, piece, offset + done, 0);
      if (errno !== 0) return errno;
    }
    return 0;
  }

  /** Runs one callback within the concurrency limit. `a`, `b`, `c` are its arguments by operation. */
  private async invoke(op: Operation, a: unknown, b: number, c: number): Promise<number> {
    if (this.active < this.limit) {
      this.active++;
    } else {
      await new Promise<void>((resolve) => this.waiting.push(resolve));
      if (this.aborted) return EIO;
    }
    try {
      for (let call = 1; ; call++) {
        try {
          await this.call(op, a, b, c);
          this.completed[op]!++;
          return 0;
        } catch (error) {
          // seed 000: an EIO from a transfer may succeed when repeated.
          if (call >= this.transferTries || !isTransfer(op) || this.aborted || !isRetryable(error)) {
            return this.failure(op, b, c, a, error);
          }
          this.hooks.log(`${describe(op, b, c, a)} failed (${messageOf(error)}); trying again (${call + 1} of ${this.transferTries})`);
        }
      }
    } finally {
      this.release();
    }
  }

  private call(op: Operation, a: unknown, b: number, c: number): Promise<void> | void {
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

  private release(): void {
    const next = this.waiting.shift();
    if (next) return next(); // the slot passes to the next waiter
    this.active--;
    if (this.active === 0 && this.onIdle) {
      this.onIdle();
      this.onIdle = undefined;
    }
  }

  private failure(op: Operation, b: number, c: number, a: unknown, error: unknown): number {
    this.failed[op]!++;
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

  private logCall(op: Operation, b: number, c: number, a: unknown): void {
    this.hooks.log(describe(op, b, c, a));
  }
}
