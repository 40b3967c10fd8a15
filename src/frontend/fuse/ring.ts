/**
 * FUSE over io_uring (Linux 6.14 and later, where root allows it: docs/frontends.md): once INIT
 * is answered, the driver registers ring entries on the connection and the kernel sends each
 * request as the completion of an entry's command; the answer is the entry's next command
 * (COMMIT_AND_FETCH), and every answer of a loop turn leaves in one io_uring_enter. A busy
 * device so costs no read or write system call per request (/dev/fuse costs one of each).
 *
 * An entry is a header (struct fuse_uring_req_header: the fuse_in_header, then the operation's
 * own header, then the commit id and payload size) and a payload buffer (a write's data, a
 * read's answer). Each entry has a RingSlot: the FUSE+loop decoder reads the request from the
 * slot's buffer as it would a /dev/fuse message (the two headers are copied there: 168 bytes),
 * and the data buffers it hands to callbacks are views of the payload, so data is copied only
 * by the kernel and by the callback, as on /dev/fuse.
 *
 * What the kernel does not do for rings (fs/fuse/dev_uring.c, up to 6.18), and what it means:
 * requests a dead process's entries held are never sent again (FUSE_NOTIFY_RESEND covers
 * /dev/fuse only), and requests that wait while no entry is free are taken only when an entry of
 * their queue is committed, not when a new one registers. So a device served over the ring
 * cannot outlive its driver or change driver: it must not be recoverable, and `bdus rerun`
 * refuses it (docs/frontends.md).
 */
import { constants } from 'node:os';
import { readFileSync } from 'node:fs';
import { pinLane } from '../../lane/pin.js';
import { native, type FuseRingHandle } from '../../native.js';
import type { FuseChannel } from './channel.js';
import { InHeader, OutHeader, WriteOut } from './protocol.js';
import { BODY, Reply, Slot } from './slot.js';

const { ETIMEDOUT } = constants.errno;

/** struct fuse_uring_req_header: in_out[128], op_in[128], struct fuse_uring_ent_in_out. */
const HEADER = 288;
const OP_IN = 128;
const PAYLOAD_SIZE_AT = 256 + 16; // ent_in_out.payload_sz
/** The operation headers FUSE+loop reads are at most this long (fuse_write_in, fuse_fallocate_in: 40). */
const OP_HEADER_MAX = 64;

/** Entries per queue: as many requests as one CPU's queue keeps in flight to us. */
const DEPTH = 32;

/** The kernel's switch for FUSE over io_uring (Y or N; root's to set, never bdus's: docs/frontends.md). */
export const ENABLE_URING = '/sys/module/fuse/parameters/enable_uring';

/** Whether root has allowed FUSE over io_uring on this kernel (the module parameter exists and is Y). */
export function fuseUringEnabled(): boolean {
  try {
    return readFileSync(ENABLE_URING, 'utf8').trim() === 'Y';
  } catch {
    return false;
  }
}

/** The kernel's ring queues of a connection: one per possible CPU (num_possible_cpus()). */
export function fuseRingQueues(): number {
  const text = readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
  let count = 0;
  for (const part of text.split(',')) {
    const [first, last = first] = part.split('-').map(Number) as [number, number?];
    count += (last as number) - first + 1;
  }
  return count;
}

/** One entry's request: decoded by FUSE+loop from `buffer`, answered through the ring. */
export class RingSlot extends Slot {
  /** Answered with ETIMEDOUT while a callback holds the payload: committed once it lets go. */
  private deferred = false;
  private data: Buffer;

  constructor(
    private readonly ring: FuseRing,
    readonly index: number,
    private readonly header: Buffer,
    private readonly payload: Buffer,
  ) {
    // The channel is /dev/fuse's, for the slot's base class; a ring slot never writes to it.
    super(Buffer.allocUnsafeSlow(4096), ring.channel, Buffer.alloc(OutHeader.SIZE), undefined);
    this.data = payload;
    // A ring's answer must be in the entry's payload: the request layer copies a read callback's
    // own memory into the buffer it gave (a view of the payload), as for ublk.
    this.takesOwnData = false;
  }

  /** Copies the request's headers where the decoder reads them; returns its length as /dev/fuse would give it. */
  load(): number {
    this.header.copy(this.buffer, 0, 0, InHeader.SIZE);
    this.header.copy(this.buffer, BODY, OP_IN, OP_IN + OP_HEADER_MAX);
    return this.buffer.readUInt32LE(InHeader.len);
  }

  /** The payload's first bytes for a read or a write, made anew only when the size changes. */
  override readData(size: number): Buffer {
    if (this.data.length !== size) this.data = this.payload.subarray(0, size);
    return this.data;
  }

  override writeData(size: number): Buffer {
    return this.readData(size);
  }

  override answer(errno: number): void {
    if (this.timedOut) {
      this.deferred = true;
      return;
    }
    if (errno !== 0 || this.reply === Reply.STATUS) return this.commit(-errno, 0);
    if (this.reply === Reply.READ) return this.commit(0, this.size);
    this.payload.writeUInt32LE(this.size, WriteOut.size);
    this.payload.writeUInt32LE(0, 4);
    this.commit(0, WriteOut.SIZE);
  }

  override finish(): void {
    if (this.deferred) {
      this.deferred = false;
      this.commit(-ETIMEDOUT, 0);
    }
  }

  override ok(length: number): void {
    this.buffer.copy(this.payload, 0, OutHeader.SIZE, length);
    this.commit(0, length - OutHeader.SIZE);
  }

  /** A ring request cannot stay with the kernel unanswered (its entry would be lost): it fails. */
  override drop(): void {
    this.commit(-constants.errno.ENOSYS, 0);
  }

  private commit(error: number, payloadBytes: number): void {
    const h = this.header;
    h.writeUInt32LE(OutHeader.SIZE + payloadBytes, OutHeader.len);
    h.writeInt32LE(error, OutHeader.error);
    // The unique id stays where the kernel put it (in_out starts with the in header's unique at 8).
    h.writeUInt32LE(payloadBytes, PAYLOAD_SIZE_AT);
    this.ring.commit(this.index);
  }
}

/**
 * A lane's ring, one of several: the CPUs its thread is pinned to (its queues': queue q is CPU
 * q's), and the device's flag that is 1 while a client runs at queue depth 1 (CompletionCpu).
 *
 * Pinned and not spinning, each lane serves its own CPUs' requests where they start, and two
 * spinning lanes would take the cores fio needs. But at queue depth 1 every request goes to the
 * queue of the one CPU the client runs on, so its lane, pinned there, shares that CPU with the
 * client and is woken for every request (1.46x / 1.39x the loop device's 4k QD1 latency in
 * the run of 2026-12-05). There the lane unpins and spins, as one ring does: the scheduler runs
 * it on the other CPU and the client's next request is caught spinning (1.24x-1.34x the IOPS at
 * QD1, deep jobs even: docs/performance.md, "Ring lanes at queue depth 1"). Its ring is set up
 * to spin from the start (the kernel then leaves its work to the thread instead of interrupting
 * it, which a spinning ring needs and which cannot be changed later: native/ring.h), and spins
 * only while the flag says so.
 */
export interface RingLane {
  readonly cpus: readonly number[];
  readonly depthOne: Int32Array;
}

/**
 * Ring entries on some of the connection's queues (all of them, or a lane's: the kernel sends a
 * request to the queue of the CPU it starts on, and answers reach the thread that registered the
 * entry), served on this thread.
 */
export class FuseRing {
  private readonly handle: FuseRingHandle;
  private readonly slots: RingSlot[] = [];
  private readonly completions: Int32Array;
  private closed = false;
  /** Set by stopTaking(): what arrives from then on stays with its entry until the connection ends. */
  private taking = true;
  private failed = 0;
  /** A lane's ring: whether it runs as at queue depth 1 now, unpinned (RingLane). */
  private atDepthOne = false;
  private readonly everyCpu: readonly number[];
  /** Requests handed to the handler and not yet committed: their callbacks still run. */
  private inFlight = 0;
  /** Whether the ring was set up to spin, and whether the native ring spins after a batch now. */
  private readonly spinSetUp: boolean;
  private spinning: boolean;
  /** Set while arrived() runs (its commits are followed by the native ring's own spin), and while a waitNext is queued. */
  private inArrived = false;
  private waitQueued = false;

  constructor(
    fd: number,
    readonly channel: FuseChannel<Slot>,
    payloadSize: number,
    private readonly handler: (slot: RingSlot, length: number) => void,
    private readonly log: (line: string) => void,
    queueIds: readonly number[],
    /** After a batch, how long to wait for the next request, spinning, before the event loop sleeps (0: never). */
    spinMicroseconds: number,
    /** A lane's ring: pinned to its CPUs, and spinning only at queue depth 1. */
    private readonly lane?: RingLane,
  ) {
    this.spinSetUp = spinMicroseconds > 0;
    this.spinning = this.spinSetUp && !lane;
    const entries = queueIds.length * DEPTH;
    if (lane) pinLane(lane.cpus, log);
    this.handle = native.fuseRing(fd, queueIds, DEPTH, payloadSize, spinMicroseconds, (count) => this.arrived(count));
    if (lane) native.fuseRingSpin(this.handle.ring, false);
    this.everyCpu = lane ? Array.from({ length: fuseRingQueues() }, (_, cpu) => cpu) : [];
    const c = this.handle.completions;
    this.completions = new Int32Array(c.buffer, c.byteOffset, entries * 2);
    for (let i = 0; i < entries; i++) {
      this.slots.push(
        new RingSlot(this, i, this.handle.headers.subarray(i * HEADER, (i + 1) * HEADER), this.handle.payloads.subarray(i * payloadSize, (i + 1) * payloadSize)),
      );
    }
  }

  commit(index: number): void {
    if (this.closed) return;
    native.fuseRingCommit(this.handle.ring, index);
    if (--this.inFlight === 0 && !this.inArrived && !this.waitQueued && this.spinWanted()) {
      this.waitQueued = true;
      queueMicrotask(this.waitNext);
    }
  }

  /** Whether this ring spins for the next request when idle: one ring always, a lane's at queue depth 1. */
  private spinWanted(): boolean {
    return this.lane ? this.atDepthOne : this.spinSetUp;
  }

  /**
   * No spin after a batch that left requests in flight: their callbacks wait for the event loop
   * (a file's completions, a socket), which the spin would only hold up. Once promises answered
   * the last of them, the answers leave and the thread waits for the next request here,
   * spinning, as after a batch answered at once.
   */
  private readonly waitNext = (): void => {
    this.waitQueued = false;
    if (this.closed || this.inFlight !== 0 || !this.spinWanted()) return;
    if (!this.spinning) native.fuseRingSpin(this.handle.ring, (this.spinning = true));
    native.fuseRingWait(this.handle.ring);
  };

  /**
   * Hands no more requests to the handler (a lane stopping before a destruction): the kernel
   * sends nothing to another ring instead, so what arrives waits for the connection's end, which
   * fails it (ECONNABORTED). Answers still go.
   */
  stopTaking(): void {
    this.taking = false;
  }

  /** A lane's ring at queue depth 1 runs unpinned and spins; pinned and still otherwise (RingLane). */
  private followDepth(): void {
    this.atDepthOne = !this.atDepthOne;
    pinLane(this.atDepthOne ? this.everyCpu : this.lane!.cpus, this.log);
  }

  /** Ends the ring: entries that wait are cancelled; answers of this turn still go. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.fuseRingClose(this.handle.ring);
  }

  private arrived(count: number): void {
    if (this.lane && (Atomics.load(this.lane.depthOne, 0) === 1) !== this.atDepthOne) this.followDepth();
    const c = this.completions;
    this.inArrived = true;
    try {
      for (let i = 0; i < count && !this.closed && this.taking; i++) {
        const index = c[2 * i]!;
        const result = c[2 * i + 1]!;
        if (result < 0) {
          // The connection ended (ENOTCONN), or the kernel refused the entry (io_uring off).
          if (this.failed++ === 0) this.log(`FUSE io_uring entry ${index} ended: errno ${-result}`);
          continue;
        }
        const slot = this.slots[index]!;
        this.inFlight++;
        this.handler(slot, slot.load());
      }
    } finally {
      this.inArrived = false;
    }
    // Read by the native ring right after this returns: whether it spins for the next batch.
    const spin = this.inFlight === 0 && this.spinWanted();
    if (spin !== this.spinning && !this.closed) native.fuseRingSpin(this.handle.ring, (this.spinning = spin));
  }
}
