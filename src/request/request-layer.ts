/**
 * The request layer, shared by every frontend: where a request is admitted, timed and answered
 * (this file), and checked, split, emulated, dispatched to a callback and its outcome made an
 * errno (operations.ts, the base class).
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
 *   callback holds its buffers. A request whose callbacks all return without a promise is
 *   answered before its entry point returns; a frontend hands a request over as its last step.
 * - Statistics: each request is counted when admitted and when answered, with its latency from
 *   admission to answer (src/stats: plain stores into the device's shared stats file).
 */
import { constants } from 'node:os';
import { restartLimitOf } from '../driver/attributes.js';
import type { Context, Driver, Extent } from '../driver/driver.js';
import type { Exchange } from './exchange.js';
import { Operations, type Outcome, type RequestLayerHooks } from './operations.js';
import { IDLE, RequestTimer } from './request-timer.js';
import { Operation } from './operation.js';
import { Slot } from '../stats/layout.js';

export type { RequestLayerHooks } from './operations.js';

const { EIO, ETIMEDOUT } = constants.errno;

export class RequestLayer extends Operations {
  /** Fails requests that wait too long (the layer stamps every request it admits). */
  readonly timer: RequestTimer;
  private readonly restartLimit: number;
  /** Admitted requests not yet settled: what the timer looks at. */
  private readonly tracked = new Set<Exchange>();
  private targetWarned = false;

  constructor(driver: Driver<any>, ctx: Context<any>, hooks: RequestLayerHooks) {
    super(driver, ctx, hooks);
    this.restartLimit = restartLimitOf(this.attrs);
    this.timer = new RequestTimer(this.attrs.requestTimeout, this.hooks.log, (x) => this.expired(x as Exchange));
    this.timer.watch(this.tracked);
  }

  // ---- Entry points for frontends -------------------------------------------------------------
  //
  // Each admits one request: stamps it for the timer, runs its callbacks, and answers it through
  // its exchange (see exchange.ts): with the outcome, or with ETIMEDOUT if requestTimeout passes
  // first. The frontend has only decoded the request; everything else happens here.

  read(x: Exchange, buffer: Buffer, offset: number): void {
    x.ownData = undefined;
    if (this.admit(x, Operation.READ, buffer.length)) this.track(x, this.readOp(buffer, offset, x));
  }

  write(x: Exchange, data: Buffer, offset: number): void {
    if (this.admit(x, Operation.WRITE, data.length)) this.track(x, this.writeOp(data, offset));
  }

  /** Whether the driver offers writeTarget at all (a frontend may set up its path for it: ublk's user copy). */
  get hasWriteTarget(): boolean {
    return this.driver.writeTarget !== undefined && this.driver.write !== undefined;
  }

  /**
   * Where a write's data may be received, before the write is admitted: the driver's own memory
   * for [offset, offset + size) (Driver.writeTarget), or undefined. Asked only for a write that
   * would reach one callback whole: the frontend then passes that memory to write() or
   * fuaWrite() as the data, and the driver has nothing to copy.
   */
  writeTarget(offset: number, size: number): Buffer | undefined {
    const { driver, attrs } = this;
    if (!driver.writeTarget || !driver.write || !this.accepting || this.ctx.readOnly || size > attrs.maxReadWriteSize || !this.valid(offset, size)) return undefined;
    let memory: unknown;
    try {
      memory = driver.writeTarget(offset, size, this.ctx);
    } catch (error) {
      this.targetRefused(`threw (${error instanceof Error ? error.message : String(error)})`);
      return undefined;
    }
    if (memory === undefined) return undefined;
    if (!(memory instanceof Uint8Array) || memory.byteLength !== size) {
      const what = memory instanceof Uint8Array ? `${memory.byteLength} bytes` : typeof memory;
      this.targetRefused(`answered ${what} for ${size} bytes`);
      return undefined;
    }
    return Buffer.isBuffer(memory) ? memory : Buffer.from(memory.buffer, memory.byteOffset, size);
  }

  /** A writeTarget that did not answer with memory: logged once (a bug, not a state), and the data goes to bdus's buffer. */
  private targetRefused(why: string): void {
    if (this.targetWarned) return;
    this.targetWarned = true;
    this.hooks.log(`writeTarget ${why}: writes receive their data in bdus's buffers instead (logged once)`);
  }

  fuaWrite(x: Exchange, data: Buffer, offset: number): void {
    if (this.admit(x, Operation.FUA_WRITE, data.length)) this.track(x, this.fuaWriteOp(data, offset));
  }

  flush(x: Exchange): void {
    if (this.admit(x, Operation.FLUSH, 0)) this.track(x, this.flushOp());
  }

  writeZeros(x: Exchange, offset: number, size: number, mayUnmap: boolean): void {
    if (this.admit(x, Operation.WRITE_ZEROS, size)) this.track(x, this.writeZerosOp(offset, size, mayUnmap));
  }

  /**
   * A discard. With `zeroes`, the range must read back as zeros afterwards: FUSE+loop's
   * PUNCH_HOLE stands for both a kernel discard and a write-zeroes that may unmap, and ext4 and
   * XFS rely on the zeros. It is served by writeZeros(mayUnmap=true) when the driver has it,
   * else by discard (when it has it) followed by writes of zeros.
   */
  discard(x: Exchange, offset: number, size: number, zeroes = false): void {
    if (this.admit(x, Operation.DISCARD, size)) this.track(x, zeroes ? this.zeroingDiscardOp(offset, size) : this.discardOp(offset, size));
  }

  secureErase(x: Exchange, offset: number, size: number): void {
    if (this.admit(x, Operation.SECURE_ERASE, size)) this.track(x, this.secureEraseOp(offset, size));
  }

  writeSame(x: Exchange, block: Buffer, offset: number, size: number): void {
    if (this.admit(x, Operation.WRITE_SAME, size)) this.track(x, this.writeSameOp(block, offset, size));
  }

  ioctl(x: Exchange, command: number, argument: Buffer | null): void {
    if (this.admit(x, Operation.IOCTL, 0)) this.track(x, this.ioctlOp(command, argument));
  }

  /** Block status into `into` (see extentsOp); the exchange is answered once it is filled. */
  extents(x: Exchange, offset: number, size: number, into: Extent[]): void {
    if (this.admit(x, Operation.EXTENTS, size)) this.track(x, this.extentsOp(offset, size, into));
  }

  /** Requests admitted whose callbacks have not all ended (answered or not: a timed-out one stays until then). */
  get inFlight(): number {
    return this.tracked.size;
  }

  /**
   * Admits a request: counts it, and fails it alone with EIO if it has been in flight across
   * too many driver deaths (seed 000), since it may be what kills the drivers.
   */
  private admit(x: Exchange, op: Operation, bytes: number): boolean {
    x.op = op;
    x.bytes = bytes;
    x.admittedAt = performance.now();
    this.counters.started(op);
    const restarts = x.restarts;
    if (restarts === 0) return true;
    x.restarts = 0;
    this.counters.add(Slot.RESENT);
    if (restarts < this.restartLimit) return true;
    this.counters.add(Slot.RESTART_FAILURES);
    this.hooks.log(
      this.restartLimit === 1
        ? 'a request the previous driver received fails with EIO (recoveryMode fail-received)'
        : `a request was in flight across ${restarts} driver deaths: it fails with EIO (restartLimit ${this.restartLimit})`,
    );
    this.counters.answered(op, EIO, 0, 0);
    x.answer(EIO);
    x.finish();
    return false;
  }

  /** Answers the request once its outcome is known: now if the callbacks have returned already. */
  private track(x: Exchange, outcome: Outcome): void {
    if (typeof outcome === 'number') {
      // Never stamped nor tracked: nothing for the timer to undo.
      this.answered(x, outcome);
      return x.finish();
    }
    x.startedAt = this.timer.now;
    this.tracked.add(x);
    x.settle ??= (errno) => this.settle(x, errno);
    void outcome.then(x.settle);
  }

  private settle(x: Exchange, errno: number): void {
    this.tracked.delete(x);
    if (!x.timedOut) this.answered(x, errno);
    x.startedAt = IDLE;
    x.finish();
  }

  private answered(x: Exchange, errno: number): void {
    this.counters.answered(x.op, errno, x.bytes, ((performance.now() - x.admittedAt) * 1000) | 0);
    x.answer(errno);
  }

  /** The timer answered `x` with ETIMEDOUT: it counts as answered now, its callback running on. */
  private expired(x: Exchange): void {
    this.counters.add(Slot.TIMEOUTS);
    this.counters.answered(x.op, ETIMEDOUT, 0, 0);
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
    this.counters.add(Slot.WAITING, -this.waiting.length);
    for (const wake of this.waiting.splice(0)) wake();
  }
}
