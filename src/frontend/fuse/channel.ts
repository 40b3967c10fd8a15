/**
 * One open /dev/fuse file: reading requests and writing replies.
 *
 * The file is watched on the event loop (non-blocking; native watch(), as Node cannot poll a
 * character device): when the kernel has requests, they are read one after another until none
 * is left, each into a buffer from the pool, and handed to the handler, which starts the
 * request's callback and returns. The replies built in request buffers (send) are queued and
 * leave together in one system call (native writeBatch: io_uring, whose writes to /dev/fuse run
 * inline, in order), at the end of the batch's reads or once the promises of that turn settled;
 * other replies (notifications, a timed-out request's) are written at once, as every reply is
 * where the kernel gives no io_uring. The reply to a wake-up's first request, if answered at
 * once, leaves before the next read, in a plain write, as does a batch of one. A busy device
 * therefore costs one read per request and two system calls per batch of replies, and no
 * thread hand-off.
 *
 * Buffers are reused: the handler owns a buffer from delivery until it calls release(); the reply
 * is built in the same buffer, so a request costs no allocation and no copy here. A released
 * buffer whose reply still waits in the batch goes back to the pool once the batch has left.
 *
 * With lanes, the readers of one connection share a ReaderGate (reader-gate.ts): a lane's reader
 * that finds at most one small request PARK_AFTER times in a row parks (stops watching, and
 * looks every PEEK_MS), and watches again once two looks in a row found requests waiting.
 *
 * The non-blocking flag belongs to the open file, which the daemon's duplicate shares: every
 * reader of a device's connection (driver or keeper) uses this class.
 */
import { constants } from 'node:os';
import { errnoName, native, type Watcher, type WriteBatch } from '../../native.js';
import { InHeader, Opcode, OutHeader } from './protocol.js';
import type { ReaderGate } from './reader-gate.js';
import { isResent } from './restart-table.js';

const { EAGAIN, EINTR, ENOENT, ENODEV, ECONNABORTED } = constants.errno;

/** Requests read per readiness callback at most, so timers and the control socket get turns. */
const BATCH = 64;
/** Replies queued before the batch leaves by itself (a deep queue answered from promises). */
const REPLIES = 256;
/**
 * Data read or to be read per readiness callback at most. The replies to a batch leave after the
 * whole batch is read: for large requests the callbacks' copies and the kernel's copies of the
 * same bytes would be a batch apart, and a batch of 1 MiB requests no longer fits in the caches
 * (1M reads at QD16: 3.4 GB/s unbounded, against 6.2 GB/s at QD4).
 */
const BATCH_BYTES = 1 << 20;

/**
 * Wake-ups in a row that find at most one small request, after which a lane's reader parks (see
 * ReaderGate): no queue to share. (Not only those that find nothing: at queue depth 1 the
 * readers tend to take turns. And not a large one: one 512 KiB request per wake-up is what a
 * lane at 1 MiB QD8 sees, and the work lanes are for.)
 */
const PARK_AFTER = 32;
/** A request moving this much data or more is never lonely. */
const LONELY_BYTES = 64 << 10;
/**
 * How often a parked reader looks for requests (ms). Not a signal from the main reader: the
 * number of requests it takes at once says nothing there (a callback answered at once lets a
 * client at queue depth 1 send the next within the same read loop, 60 in a row seen).
 */
const PEEK_MS = 5;

/** What the pool holds: a request buffer, plus whatever per-buffer state the frontend keeps. */
export interface ChannelSlot {
  readonly buffer: Buffer;
}

/** Large enough for the biggest request: header + fuse_write_in + max_write, with room to spare. */
export function bufferSizeFor(maxWrite: number): number {
  return maxWrite + 4096;
}

/** FUSE_NOTIFY_RESEND: the kernel sends every request read but not yet answered again. */
const NOTIFY_RESEND = 7;
/** FUSE_NOTIFY_INVAL_INODE, with struct fuse_notify_inval_inode_out: ino u64, off i64, len i64. */
const NOTIFY_INVAL_INODE = 2;
const INVAL_INODE_SIZE = 24;

export class FuseChannel<S extends ChannelSlot> {
  /** Set when this process must not answer anything any more (it is giving the device up): mute(). */
  private muted = false;
  private readonly pool: S[] = [];
  /**
   * Where send() queues replies: made at the first (a device served over FUSE's ring sends
   * none here, and needs no second io_uring); null once reading ended, or without io_uring.
   */
  private batch: WriteBatch | null | undefined;
  /** Replies queued and not yet sent: the first waits aside (lone), the others in the batch. */
  private queued = 0;
  private lone: Buffer | undefined;
  private loneLength = 0;
  private loneData: Uint8Array | undefined;
  /** Slots released while their reply waits in the batch: back to the pool once it has left. */
  private readonly leaving: S[] = [];
  /** Callbacks' own memory that replies in the batch gather from: kept alive until it has left. */
  private readonly gathered: Uint8Array[] = [];
  /** In take(), which submits the batch at its end; outside it, a microtask does (queue). */
  private taking = false;
  private flushPending = false;
  private watcher: Watcher | undefined;
  private resolveEnded!: (error: Error | undefined) => void;
  /** Reading has ended (stop, or the connection's end): a parked reader stays parked. */
  private stopped = false;
  /** Wake-ups in a row that found at most one small request (a lane's reader parks at PARK_AFTER). */
  private lonelyWakes = 0;
  /** The data the last take() moved. */
  private takenBytes = 0;
  /** Parked: the next look, and whether the last one found requests. */
  private parked = false;
  private peek: NodeJS.Timeout | undefined;
  private peekFound = false;
  /** The watcher's spin now (a main reader with lanes spins only while it reads alone). */
  private spinning = 0;
  /** Requests read and not yet released: their callbacks still run. */
  private inFlight = 0;
  /** Set by resend() until every re-sent request has been read. */
  private resentRead: (() => void) | undefined;
  /** Resolves when reading has stopped: undefined after unmount/abort (ENODEV) or stop(), else the error. */
  readonly ended = new Promise<Error | undefined>((resolve) => (this.resolveEnded = resolve));

  constructor(
    readonly fd: number,
    private readonly newSlot: (channel: FuseChannel<S>) => S,
    /** Starts a request; returns the bytes of data it moves (for a read, the size asked for). */
    private readonly handler: (slot: S, length: number) => number,
    /**
     * How long to wait for the next request, spinning, after handling some, before the event
     * loop sleeps: a client at queue depth 1 sends its next request within microseconds of a
     * reply, and a sleep and wake-up costs more than that on a virtual machine. 0: never spin.
     */
    private readonly spinMicroseconds = 0,
    /**
     * With lanes: the gate the connection's readers share, and whether this reader is a lane's
     * (which parks) or the main thread's (which never parks, and spins only while every lane's
     * reader is parked).
     */
    private readonly readers?: { readonly gate: ReaderGate; readonly lane: boolean },
  ) {}

  /** Starts reading; the connection must be mounted (an unattached /dev/fuse file polls as an error). */
  start(): void {
    this.spinning = this.readers ? 0 : this.spinMicroseconds;
    this.watcher = native.watch(this.fd, this.spinning, this.readable);
  }

  /** Gives a slot back once its request is answered (or dropped). */
  release(slot: S): void {
    this.inFlight--;
    if (this.queued > 0) this.leaving.push(slot);
    else this.pool.push(slot);
  }

  /** Writes the reply held in the first `length` bytes of `buffer` at once. */
  reply(buffer: Buffer, length: number): void {
    if (this.muted) return;
    buffer.writeUInt32LE(length, OutHeader.len);
    this.write(buffer, length, undefined);
  }

  /** Replies at once with only a header carrying `errno` (0 for success). */
  replyErrno(buffer: Buffer, errno: number): void {
    buffer.writeInt32LE(-errno, OutHeader.error);
    this.reply(buffer, OutHeader.SIZE);
  }

  /**
   * Sends the reply held in the first `length` bytes of a slot's buffer, with the batch: the
   * buffer must stay as it is until its slot is released (which then waits for the batch).
   */
  send(buffer: Buffer, length: number): void {
    this.sendReply(buffer, length, undefined);
  }

  /** Sends a reply whose header is at the start of a slot's buffer and whose data is `data` (a read callback's own memory), as send(). */
  sendGather(buffer: Buffer, data: Uint8Array): void {
    this.sendReply(buffer, OutHeader.SIZE + data.byteLength, data);
  }

  /** Sends, with the batch, a reply of a slot's buffer with only a header carrying `errno`. */
  sendErrno(buffer: Buffer, errno: number): void {
    buffer.writeInt32LE(-errno, OutHeader.error);
    this.send(buffer, OutHeader.SIZE);
  }

  /** Sends what the batch holds now, and answers nothing after (the device is being given up). */
  mute(): void {
    this.flush();
    this.muted = true;
  }

  /**
   * Queues a reply. The first of a batch waits aside: a batch of one leaves in a plain write,
   * which does less than an io_uring_enter for one entry (queue depth 1 has only such batches).
   */
  private sendReply(buffer: Buffer, length: number, data: Uint8Array | undefined): void {
    if (this.muted) return;
    buffer.writeUInt32LE(length, OutHeader.len);
    if (this.queued === 0) {
      if (this.batch === null) return this.write(buffer, length, data);
      this.lone = buffer;
      this.loneLength = length;
      this.loneData = data;
    } else {
      const batch = this.batch ?? this.newBatch();
      if (!batch) {
        this.flush();
        return this.write(buffer, length, data);
      }
      if (this.queued === 1) this.add(batch, this.lone!, this.loneLength, this.loneData);
      this.add(batch, buffer, length, data);
    }
    this.queued++;
    if (!this.taking && !this.flushPending) {
      this.flushPending = true;
      queueMicrotask(this.flushLater);
    }
  }

  /**
   * Replies that promises settled leave once that turn's promises have. If that answered the
   * last request in flight, the thread waits for the next one here, spinning, as the watcher
   * does after requests answered at once: a client at queue depth 1 sends it within microseconds.
   */
  private readonly flushLater = (): void => {
    this.flush();
    const spin = this.inFlight === 0 && !this.stopped ? this.mayWait() : 0;
    if (spin > 0) native.waitReadable(this.fd, spin);
  };

  /** How long this reader may spin for the next request (ReaderGate: a main reader only while every lane's is parked). */
  private mayWait(): number {
    if (!this.readers) return this.spinMicroseconds;
    return !this.readers.lane && this.readers.gate.alone() ? this.spinMicroseconds : 0;
  }

  /** The batch, or null where the kernel gives no io_uring (each reply is then written at once). */
  private newBatch(): WriteBatch | null {
    try {
      return (this.batch = this.stopped ? null : native.writeBatch(this.fd, REPLIES));
    } catch {
      return (this.batch = null);
    }
  }

  private add(batch: WriteBatch, buffer: Buffer, length: number, data: Uint8Array | undefined): void {
    if (data) this.gathered.push(data);
    const failed = data ? native.writeBatchAddGather(batch, buffer, OutHeader.SIZE, data) : native.writeBatchAdd(batch, buffer, length);
    if (failed) this.failed();
  }

  private write(buffer: Buffer, length: number, data: Uint8Array | undefined): void {
    this.check(data ? native.writeFdGather(this.fd, buffer, OutHeader.SIZE, data) : native.writeFd(this.fd, buffer, length));
  }

  /** Sends the queued replies; their slots go back to the pool. */
  private readonly flush = (): void => {
    this.flushPending = false;
    const queued = this.queued;
    this.queued = 0;
    try {
      if (queued === 1) this.write(this.lone!, this.loneLength, this.loneData);
      else if (queued > 1 && native.writeBatchSubmit(this.batch!) > 0) this.failed();
    } finally {
      this.lone = this.loneData = undefined;
      this.gathered.length = 0;
      for (const slot of this.leaving) this.pool.push(slot);
      this.leaving.length = 0;
    }
  };

  private failed(): void {
    for (const result of native.writeBatchErrors(this.batch!)) this.check(result);
  }

  /**
   * Stops reading (the connection lives on for another reader, or is being torn down). Requests
   * already read stay with their handlers; nothing is read after this returns.
   */
  stop(): void {
    this.end(undefined);
  }

  /**
   * Has the kernel send again every request read from this connection but not answered (by
   * any reader, live or dead, through any of its files): they come back with bit 63 of their
   * unique id set. Resolves once this channel has read every one of them: the kernel puts them
   * at the head of its queue (fs/fuse/dev.c, fuse_resend), so at the first request read without
   * the mark (interrupts and forgets, which jump the queue, aside), or the first read that finds
   * the queue empty, or when reading ends.
   */
  resend(): Promise<void> {
    const read = new Promise<void>((resolve) => (this.resentRead = resolve));
    const notify = Buffer.alloc(OutHeader.SIZE);
    notify.writeInt32LE(NOTIFY_RESEND, OutHeader.error);
    this.reply(notify, OutHeader.SIZE);
    // With nothing to send again, no poll would say so: one pass finds the queue empty.
    if (this.watcher) setImmediate(() => this.readable(0));
    return read;
  }

  private resentDone(): void {
    this.resentRead?.();
    this.resentRead = undefined;
  }

  /** Whether the request in `buffer` shows that no re-sent one is left before it (see resend). */
  private pastResent(buffer: Buffer): boolean {
    if (isResent(buffer, InHeader.unique)) return false;
    const opcode = buffer.readUInt32LE(InHeader.opcode);
    return opcode !== Opcode.INTERRUPT && opcode !== Opcode.FORGET && opcode !== Opcode.BATCH_FORGET;
  }

  /**
   * Has the kernel forget what it knows of inode `ino`'s attributes (its size, say): the next
   * look at them asks us again. Offset -1: the page cache stays.
   */
  invalidateAttributes(ino: number): void {
    const notify = Buffer.alloc(OutHeader.SIZE + INVAL_INODE_SIZE);
    notify.writeInt32LE(NOTIFY_INVAL_INODE, OutHeader.error);
    notify.writeBigUInt64LE(BigInt(ino), OutHeader.SIZE);
    notify.writeBigInt64LE(-1n, OutHeader.SIZE + 8);
    this.reply(notify, notify.length);
  }

  private check(result: number): void {
    // ENOENT: the request is gone (interrupted or the connection was aborted); ENODEV: the
    // connection is gone. Either way nobody waits for this reply any more.
    if (result < 0 && result !== -ENOENT && result !== -ENODEV && result !== -ECONNABORTED) {
      throw errnoError(-result, 'write to /dev/fuse');
    }
  }

  private readonly readable = (status: number): void => {
    const taken = this.take(status);
    // No spin after requests left in flight: their callbacks wait for the event loop (a file's
    // completions, a socket), which a spin for the next request would only hold up; flushLater
    // spins once they are answered.
    const spin = this.inFlight > 0 ? 0 : this.mayWait();
    if (spin !== this.spinning && this.watcher) native.watchSpin(this.watcher, (this.spinning = spin));
    if (!this.readers?.lane) return;
    this.lonelyWakes = taken <= 1 && this.takenBytes < LONELY_BYTES ? this.lonelyWakes + 1 : 0;
    if (this.lonelyWakes >= PARK_AFTER && this.watcher) this.park();
  };

  /** Reads and starts the requests waiting, up to a batch; how many it took (and takenBytes, their data). */
  private take(status: number): number {
    // A poll error (aborted connection) is learnt from the read itself: ENODEV.
    this.taking = true;
    try {
      return this.takeBatch(status);
    } finally {
      // The replies of the requests answered at once leave together.
      this.taking = false;
      this.flush();
    }
  }

  private takeBatch(status: number): number {
    let bytes = 0;
    let taken = 0;
    for (let i = 0; i < BATCH && bytes < BATCH_BYTES && !this.stopped; i++) {
      const slot = this.pool.pop() ?? this.newSlot(this);
      const length = native.readFd(this.fd, slot.buffer);
      if (length >= InHeader.SIZE) {
        if (this.resentRead && this.pastResent(slot.buffer)) this.resentDone();
        this.inFlight++;
        bytes += this.handler(slot, length);
        // The first request's reply, if it is answered at once, leaves before the next read: at
        // queue depth 1 that read finds nothing, and the client would wait for it.
        if (taken++ === 0 && this.queued === 1) this.flush();
        continue;
      }
      this.pool.push(slot);
      if (length >= 0 || length === -ENOENT || length === -EINTR) continue; // ENOENT: interrupted before we read it
      if (length === -EAGAIN) {
        this.resentDone();
        // libuv stops watching after a poll error, so an error that reads as "nothing yet" ends it.
        if (status < 0) this.end(errnoError(EAGAIN, 'poll of /dev/fuse'));
        break;
      }
      this.end(length === -ENODEV ? undefined : errnoError(-length, 'read from /dev/fuse'));
      break;
    }
    this.takenBytes = bytes;
    return taken;
  }

  /** A lane's reader stops watching, and looks every PEEK_MS until two looks in a row find requests (ReaderGate). */
  private park(): void {
    native.unwatch(this.watcher!);
    this.watcher = undefined;
    this.lonelyWakes = 0;
    this.peekFound = false;
    this.setParked(true);
    this.peek = setTimeout(this.look, PEEK_MS);
  }

  private setParked(parked: boolean): void {
    if (this.parked === parked) return;
    this.parked = parked;
    this.readers!.gate.park(parked);
  }

  private readonly look = (): void => {
    this.peek = undefined;
    if (this.stopped) return;
    const found = this.take(0) > 0;
    if (this.stopped) return;
    if (found && this.peekFound) {
      this.setParked(false);
      this.start();
      return;
    }
    this.peekFound = found;
    this.peek = setTimeout(this.look, PEEK_MS);
  };

  private end(error: Error | undefined): void {
    this.stopped = true;
    if (this.peek) clearTimeout(this.peek);
    this.peek = undefined;
    if (this.parked) this.setParked(false);
    if (this.watcher) native.unwatch(this.watcher);
    this.watcher = undefined;
    this.flush();
    // Requests still held are answered at once from now on.
    if (this.batch) native.writeBatchClose(this.batch);
    this.batch = null;
    this.resentDone();
    this.resolveEnded(error);
  }
}

function errnoError(errno: number, what: string): NodeJS.ErrnoException {
  const code = errnoName(errno);
  return Object.assign(new Error(`${what}: ${code}`), { code, errno: -errno });
}
