/**
 * One ublk hardware queue: where the kernel's block requests for it enter (a batch of ring
 * completions, one call from native/ublk.c per wake-up), are decoded from their descriptors and
 * handed to the request layer, and where their answers leave (a COMMIT_AND_FETCH_REQ, which also
 * waits for the tag's next request; the loop turn's commits go to the kernel together).
 *
 * Tags and buffers: the kernel numbers a queue's requests by tag, one at a time per tag. Each
 * tag has two buffers; the kernel copies a write's data into the tag's current one before the
 * request arrives, and a read's data out of it when the answer is committed. A request answered
 * with ETIMEDOUT while its callback still holds its buffer passes the tag on with the other
 * buffer (or, if that one is still held too, commits only when its callback ends).
 *
 * User copy (UBLK_F_USER_COPY, a device whose driver has writeTarget): the kernel copies nothing
 * at fetch or commit; the queue copies each request's data itself (native ublkCopy: one pread
 * or pwrite on the character device). A write's data is read straight into the driver's memory
 * (Driver.writeTarget) when it offers some, else into the tag's buffer; a read's answer is
 * written from the memory the callback answered with (`ownData`), else from the tag's buffer.
 * Either way the kernel's copy is the only one.
 */
import { constants } from 'node:os';
import { errnoName, native, type UblkQueueHandle } from '../../native.js';
import { Exchange } from '../../request/exchange.js';
import type { RequestLayer } from '../../request/request-layer.js';
import type { InflightTable } from './inflight-table.js';

const { EIO, ETIMEDOUT, ENODEV } = constants.errno;

// UBLK_IO_OP_* and UBLK_IO_F_* (linux/ublk_cmd.h).
const OP_READ = 0;
const OP_WRITE = 1;
const OP_FLUSH = 2;
const OP_DISCARD = 3;
const OP_WRITE_ZEROES = 5;
const F_FUA = 1 << 13;
const F_NOUNMAP = 1 << 15;
/** sizeof(struct ublksrv_io_desc). */
const DESCRIPTOR = 24;

class UblkRequest extends Exchange {
  tag = 0;
  half = 0;
  /** Bytes a success reports: the request's size for a read or write, else 0. */
  resultBytes = 0;
  /** Its slot in the in-flight table, if the device has one. */
  slot = -1;
  /** Answered with ETIMEDOUT, but both of the tag's buffers are held: commit at finish. */
  deferred = false;
  /** A read: with user copy, its answer's data is written to the request before the commit. */
  isRead = false;

  constructor(private readonly queue: UblkQueue) {
    super();
    this.takesOwnData = queue.userCopy;
  }

  answer(errno: number): void {
    this.queue.answer(this, errno);
  }

  finish(): void {
    this.queue.finish(this);
  }
}

/** The request-layer entry points a queue calls (the daemon's stand-in answers them itself). */
export type QueueRequests = Pick<RequestLayer, 'read' | 'write' | 'writeTarget' | 'fuaWrite' | 'flush' | 'discard' | 'writeZeros'>;

export interface QueueOptions {
  readonly cdev: number;
  readonly id: number;
  readonly depth: number;
  readonly bufferSize: number;
  /** The device has UBLK_F_USER_COPY: this queue copies the data (module comment). */
  readonly userCopy: boolean;
  readonly requests: QueueRequests;
  readonly table: InflightTable | undefined;
  readonly log: (message: string) => void;
  /** The kernel is stopping the device: it ends the queue's commands. */
  readonly aborted: () => void;
}

export class UblkQueue {
  readonly userCopy: boolean;
  private readonly handle: UblkQueueHandle;
  private readonly completions: Int32Array;
  private readonly free: UblkRequest[] = [];
  /** Per tag: which of its buffers the kernel fills next. */
  private readonly halves: Uint8Array;
  /** Per tag and half: whether a callback still holds that buffer. */
  private readonly held: Uint8Array;
  /** Cached data views, per tag and half, of the last size asked for. */
  private readonly views: (Buffer | undefined)[];
  /** Requests the request layer has not finished yet. */
  private pending = 0;
  private taking = true;
  private closed = false;
  private idle: (() => void) | undefined;

  constructor(private readonly o: QueueOptions) {
    this.userCopy = o.userCopy;
    this.halves = new Uint8Array(o.depth);
    this.held = new Uint8Array(o.depth * 2);
    this.views = new Array<Buffer | undefined>(o.depth * 2);
    for (let i = 0; i < o.depth; i++) this.free.push(new UblkRequest(this));
    this.handle = native.ublkQueue(o.cdev, o.id, o.depth, o.bufferSize, o.userCopy, (count) => this.arrived(count));
    const c = this.handle.completions;
    this.completions = new Int32Array(c.buffer, c.byteOffset, o.depth * 2);
  }

  private arrived(count: number): void {
    const c = this.completions;
    for (let i = 0; i < count; i++) {
      const tag = c[2 * i]!;
      const result = c[2 * i + 1]!;
      if (result === 0) {
        // A request the driver does not take (it is handing over) stays with the kernel, which
        // gives it to the next driver when this one closes the queue.
        if (this.taking && !this.closed) this.dispatch(tag);
      } else if (this.closed) {
        // The answers of a queue being closed: nothing to do.
      } else if (result === -ENODEV) {
        // UBLK_IO_RES_ABORT: the device is stopping (ours, or someone's STOP_DEV).
        this.o.aborted();
      } else {
        this.o.log(`ublk queue ${this.o.id}: the kernel refused a command for tag ${tag}: ${-result}`);
      }
    }
  }

  private dispatch(tag: number): void {
    const d = this.handle.descriptors;
    const at = tag * DESCRIPTOR;
    const opFlags = d.readUInt32LE(at);
    const sectors = d.readUInt32LE(at + 4);
    const low = d.readUInt32LE(at + 8);
    const high = d.readUInt32LE(at + 12);
    const op = opFlags & 0xff;
    const offset = (high * 0x1_0000_0000 + low) * 512;
    const size = sectors * 512;
    const x = this.free.pop() ?? new UblkRequest(this);
    this.pending++;
    x.tag = tag;
    x.half = this.halves[tag]!;
    x.deferred = false;
    x.isRead = op === OP_READ;
    x.resultBytes = op === OP_READ || op === OP_WRITE ? size : 0;
    x.slot = -1;
    x.restarts = 0;
    const { table, requests } = this.o;
    if (table) {
      x.slot = this.o.id * this.o.depth + tag;
      x.restarts = table.hold(x.slot, op, low, high, sectors);
    }
    this.held[tag * 2 + x.half] = 1;
    switch (op) {
      case OP_READ:
        return requests.read(x, this.view(x, size), offset);
      case OP_WRITE: {
        const data = this.userCopy ? this.received(x, offset, size) : this.view(x, size);
        if (!data) return;
        if (opFlags & F_FUA) return requests.fuaWrite(x, data, offset);
        return requests.write(x, data, offset);
      }
      case OP_FLUSH:
        return requests.flush(x);
      case OP_DISCARD:
        return requests.discard(x, offset, size);
      case OP_WRITE_ZEROES:
        return requests.writeZeros(x, offset, size, (opFlags & F_NOUNMAP) === 0);
      default:
        // Zoned operations and anything newer: the device is not set up for them.
        this.answer(x, EIO);
        this.finish(x);
    }
  }

  private view(x: UblkRequest, size: number): Buffer {
    const i = x.tag * 2 + x.half;
    let view = this.views[i];
    if (view?.length !== size) {
      const start = (x.half * this.o.depth + x.tag) * this.o.bufferSize;
      view = this.views[i] = this.handle.buffers.subarray(start, start + size);
    }
    return view;
  }

  /**
   * User copy: a write's data, read from the request into the driver's memory (writeTarget) or
   * the tag's buffer; undefined (the request answered with EIO) if the kernel would not give it.
   */
  private received(x: UblkRequest, offset: number, size: number): Buffer | undefined {
    const memory = this.o.requests.writeTarget(offset, size) ?? this.view(x, size);
    const n = native.ublkCopy(this.handle.queue, x.tag, memory, false);
    if (n === size) return memory;
    this.copyFailed(x, n, size);
    this.answer(x, EIO);
    this.finish(x);
    return undefined;
  }

  /** User copy: writes a read's answer (the callback's own memory, or the tag's buffer) to the request; the commit's result. */
  private sent(x: UblkRequest): number {
    const memory = x.ownData ?? this.view(x, x.resultBytes);
    x.ownData = undefined;
    const n = native.ublkCopy(this.handle.queue, x.tag, memory, true);
    if (n === x.resultBytes) return n;
    this.copyFailed(x, n, x.resultBytes);
    return -EIO;
  }

  /** The kernel refuses a copy only for a request it no longer has (the device stopping) or a bug here: said, and the request fails. */
  private copyFailed(x: UblkRequest, n: number, size: number): void {
    const what = n < 0 ? errnoName(-n) : `${n} of ${size} bytes`;
    this.o.log(`ublk queue ${this.o.id}: the ${x.isRead ? "read's data could not be written to" : "write's data could not be read from"} the request of tag ${x.tag}: ${what}`);
  }

  answer(x: UblkRequest, errno: number): void {
    if (x.slot >= 0) this.o.table!.clear(x.slot);
    // The kernel turns -errno into a block status and back (errno_to_blk_status): ENOSPC,
    // ETIMEDOUT and ENOLINK reach the client as themselves, and what it has no status for, EIO.
    const result = errno !== 0 ? -errno : x.isRead && this.userCopy && !this.closed ? this.sent(x) : x.resultBytes;
    if (!x.timedOut) return this.commit(x.tag, result, x.half);
    // The callback still holds the buffer: the tag goes on with its other one, if free.
    const other = x.half ^ 1;
    if (this.held[x.tag * 2 + other]) {
      x.deferred = true;
      return;
    }
    this.halves[x.tag] = other;
    this.commit(x.tag, result, other);
  }

  finish(x: UblkRequest): void {
    this.held[x.tag * 2 + x.half] = 0;
    if (x.deferred) {
      x.deferred = false;
      this.halves[x.tag] = x.half;
      this.commit(x.tag, -ETIMEDOUT, x.half);
    }
    this.free.push(x);
    if (--this.pending === 0) this.idle?.();
  }

  private commit(tag: number, result: number, half: number): void {
    if (!this.closed) native.ublkCommit(this.handle.queue, tag, result, half);
  }

  /** Takes no more requests: those that arrive stay with the kernel for the next driver. */
  stopTaking(): void {
    this.taking = false;
  }

  /** Resolves when every request taken has finished. */
  drained(): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    return new Promise((resolve) => (this.idle = resolve));
  }

  /**
   * Ends the queue; answers of requests still running are dropped. Once the device is stopped,
   * the ring is closed (the kernel fails those requests). With `leave` (a hand-over, an abort),
   * the queue is left to the next driver: the ring is no longer read, and is closed once this
   * thread has exited (ublkCloseLeft, or the process's end), when the kernel cancels its commands
   * and requeues what it held for the next driver. Never closed while the thread lives on: on
   * Linux 6.12 that can leave a request with no server for good (native/ublk.c).
   */
  close(leave = false): void {
    if (this.closed) return;
    this.closed = true;
    this.taking = false;
    native.ublkQueueClose(this.handle.queue, leave);
  }
}
