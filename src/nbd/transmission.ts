/**
 * The transmission phase of an NBD connection: where an NBD request enters (nextRequest), is
 * decoded and handed to the request layer (request), and where its reply leaves (the replies'
 * answer, then send). What is checked here is the wire only: the magic, the command and its
 * flags, a payload's length. A bad request gets an error reply; a bad magic or an oversized
 * write payload (whose length cannot be trusted) ends the connection.
 */
import type { Socket } from 'node:net';
import { native } from '../native.js';
import { commandName, errorChunk, writeChunkHeader, writeSimpleReply, type Cookie } from './codec.js';
import { MAX_PAYLOAD, type NbdExport } from './export-spec.js';
import type { MessageInput, PooledBuffer } from './input.js';
import {
  BASE_ALLOCATION_ID,
  ChunkHeader,
  Command,
  COMMAND_FLAGS,
  CommandFlag,
  NbdError,
  nbdError,
  ReplyFlag,
  ReplyType,
  REQUEST_MAGIC,
  RequestHeader,
  SimpleReply,
  State,
} from './protocol.js';
import { Answer, NbdRequest, type NbdReplies } from './request.js';
import type { Negotiated } from './handshake.js';

/** Most extents in one block-status reply; a client asks again for the rest. */
const MAX_EXTENTS = 1024;
/**
 * The smallest read whose data is sent from the callback's own memory (a second socket write);
 * below it, copying the data into the reply costs less than the write (4k QD1 through `bdus
 * export ram`: 47 us with the copy, 54 us with two writes).
 */
const GATHER_FROM = 32 << 10;
/**
 * The smallest write whose data is received straight into the driver's memory, where it offers
 * some (Driver.writeTarget). Below it the data has nearly always arrived with its header, in a
 * slab, before the offset is known: it would be copied all the same, by us instead of the driver.
 */
const RECEIVE_INTO_FROM = 32 << 10;
/** Room for the status replies of one turn of the event loop in one buffer (256 of them); more take another. */
const STATUS_BATCH = 256 * SimpleReply.SIZE;
/** How long an idle connection spins for the client's next request before the event loop sleeps. */
const SPIN_MICROSECONDS = 20;

/** What the connection lends its transmission phase. */
export interface TransmissionLink {
  readonly socket: Socket;
  readonly input: MessageInput;
  readonly exported: NbdExport;
  /** The socket's descriptor, where known (it spins on it when idle), else -1. */
  readonly fd: number;
  /** No more requests are read (shutdown, hand-over, a DISC). */
  readonly ending: boolean;
  hangUp(why: string): void;
  /** The client sent NBD_CMD_DISC. */
  disconnect(): void;
}

export class Transmission {
  /** Requests handed to the request layer and not yet answered. */
  inFlight = 0;
  /** Called whenever the last request in flight is answered. */
  idle: (() => void) | undefined;
  /** Writes nothing more (the driver aborted: the next one answers these requests). */
  muted = false;
  /**
   * A write's payload is being received: its header is taken, so the connection is between two
   * message boundaries, and a hand-over must wait for the rest (Connection.stopReading).
   */
  receiving = false;
  private received: (() => void) | undefined;
  private readonly structured: boolean;
  private readonly allocationContext: boolean;
  private readonly pool: NbdRequest[] = [];
  private corked = false;
  /**
   * The simple replies made in this turn, side by side in one pooled buffer: one stream write
   * for all of them, not a Buffer and a stream write each (measured even, but nothing allocated
   * per request; docs/performance.md).
   */
  private statuses: PooledBuffer | undefined;
  private statusBytes = 0;
  /** Bytes the requests in progress hold (NbdRequest.held). */
  private held = 0;
  /** Reading stopped: the connection holds more than its memory limit. */
  private paused = false;

  constructor(
    private readonly link: TransmissionLink,
    negotiated: Negotiated,
  ) {
    this.structured = negotiated.structured;
    this.allocationContext = negotiated.allocationContext;
  }

  start(): void {
    if (this.link.exported.limits) this.link.socket.on('drain', () => this.paused && this.resumeIfRoom());
    this.nextRequest();
  }

  private nextRequest(): void {
    if (this.link.ending) return;
    if (this.overLimit()) {
      // The socket stops being read: the client's sends block in its own kernel, not in our memory.
      this.paused = true;
      this.link.socket.pause();
      return;
    }
    this.link.input.expect(RequestHeader.SIZE, (header) => {
      if (header.readUInt32BE(RequestHeader.magic) !== REQUEST_MAGIC) return this.link.hangUp('bad request magic');
      const type = header.readUInt16BE(RequestHeader.type);
      const length = header.readUInt32BE(RequestHeader.length);
      if (type === Command.WRITE) {
        // A write's payload follows its header; a length we would not accept cannot be skipped safely.
        if (length > MAX_PAYLOAD) return this.link.hangUp(`${commandName(type)} of ${length} bytes (the maximum is ${MAX_PAYLOAD})`);
        // The header stays a view into its slab: no slab is reused before this payload is
        // complete (input.ts keeps room for it), and request() reads the header at once.
        this.receiving = true;
        const target = length >= RECEIVE_INTO_FROM ? this.writeTarget(header, length) : undefined;
        if (target) {
          return this.link.input.expectInto(target, (data) => {
            this.request(header, data, undefined, true);
            this.nextRequest();
            this.messageEnded();
          });
        }
        return this.link.input.expect(length, (data) => {
          this.request(header, data, this.link.input.gathered, false);
          this.nextRequest();
          this.messageEnded();
        });
      }
      if (type === Command.DISC) return this.link.disconnect();
      this.request(header, undefined, undefined, false);
      this.nextRequest();
    });
  }

  /**
   * The driver's memory to receive a write's data into (Driver.writeTarget), if it offers some
   * and the request is one the wire accepts (its flags): otherwise the data goes to a slab.
   */
  private writeTarget(header: Buffer, length: number): Buffer | undefined {
    if (header.readUInt16BE(RequestHeader.flags) & ~COMMAND_FLAGS[Command.WRITE]!) return undefined;
    return this.link.exported.requests.writeTarget(offsetOf(header), length);
  }

  /** Resolves once no write's payload is being received: at once, or when its last byte is taken or the socket closes. */
  messageEnd(): Promise<void> {
    if (!this.receiving) return Promise.resolve();
    return new Promise((resolve) => (this.received = resolve));
  }

  /** The payload awaited was taken, or will never come (the socket closed). */
  messageEnded(): void {
    this.receiving = false;
    const received = this.received;
    this.received = undefined;
    received?.();
  }

  /** A request record from the pool (see request.ts). */
  private take(header: Buffer): NbdRequest {
    const request = this.pool.pop() ?? new NbdRequest(this.replies);
    // Copied out: the header's bytes may be reused (a slab) before the reply leaves.
    request.high = header.readUInt32BE(RequestHeader.cookie);
    request.low = header.readUInt32BE(RequestHeader.cookie + 4);
    request.kind = Answer.STATUS;
    request.held = 0;
    return request;
  }

  /**
   * Decodes one request and hands it to the request layer, which answers it through the
   * record's answer() (in replies below). What is checked here is the wire: the command, its
   * flags and the payload's length; everything else is the request layer's.
   * `payload`: the pooled buffer holding `data`, if it was gathered from several socket chunks;
   * `own`: `data` is the driver's own memory (writeTarget), not a view of a slab.
   */
  private request(header: Buffer, data: Buffer | undefined, payload: PooledBuffer | undefined, own: boolean): void {
    const flags = header.readUInt16BE(RequestHeader.flags);
    const type = header.readUInt16BE(RequestHeader.type);
    const offset = offsetOf(header);
    const length = header.readUInt32BE(RequestHeader.length);
    const request = this.take(header);
    const { requests } = this.link.exported;
    // The wire's own rules; bounds, alignment and read-only are the request layer's.
    if (flags & ~(COMMAND_FLAGS[type] ?? 0)) return this.refuse(request, NbdError.EINVAL, payload);
    switch (type) {
      case Command.READ: {
        if (length > MAX_PAYLOAD || (flags & CommandFlag.DF && !this.structured)) return this.refuse(request, NbdError.EINVAL, payload);
        const headerSize = this.structured ? ChunkHeader.SIZE + 8 : SimpleReply.SIZE;
        const reply = this.link.input.buffers.take(headerSize + length);
        if (this.structured) {
          writeChunkHeader(reply.buffer, request, ReplyFlag.DONE, ReplyType.OFFSET_DATA, 8 + length);
          // The offset as the client sent it: no BigInt, and exact past 2^53.
          header.copy(reply.buffer, ChunkHeader.SIZE, RequestHeader.offset, RequestHeader.offset + 8);
        } else {
          writeSimpleReply(reply.buffer, 0, request, 0);
        }
        request.kind = Answer.READ;
        request.reply = reply;
        request.headerSize = headerSize;
        this.hold(request, length);
        this.inFlight++;
        return requests.read(request, reply.buffer.subarray(headerSize), offset);
      }
      case Command.WRITE:
        // The payload is a view into a slab (unless it was gathered, or is the driver's own):
        // kept until the callback ends. The driver's own memory is not the connection's to count.
        request.payload = payload;
        request.slab = payload || own ? undefined : this.link.input.hold();
        this.hold(request, own ? 0 : data!.length);
        this.inFlight++;
        if (flags & CommandFlag.FUA) return requests.fuaWrite(request, data!, offset);
        return requests.write(request, data!, offset);
      case Command.FLUSH:
        this.inFlight++;
        return requests.flush(request);
      case Command.TRIM:
        this.inFlight++;
        return requests.discard(request, offset, length);
      case Command.WRITE_ZEROES:
        if (flags & CommandFlag.FAST_ZERO && !this.link.exported.callbacks.includes('writeZeros')) return this.refuse(request, NbdError.ENOTSUP, payload);
        this.inFlight++;
        return requests.writeZeros(request, offset, length, (flags & CommandFlag.NO_HOLE) === 0);
      case Command.BLOCK_STATUS:
        if (!this.allocationContext) return this.refuse(request, NbdError.EINVAL, payload);
        request.kind = Answer.EXTENTS;
        request.one = (flags & CommandFlag.REQ_ONE) !== 0;
        request.extents.length = 0;
        this.inFlight++;
        return requests.extents(request, offset, length, request.extents);
      case Command.CACHE: // advisory: nothing to do
        return this.refuse(request, 0, payload);
      default:
        return this.refuse(request, NbdError.EINVAL, payload);
    }
  }

  /** Answers a request at once, without the request layer (refused on the wire, or nothing to do). */
  private refuse(request: NbdRequest, error: number, payload: PooledBuffer | undefined): void {
    this.replyStatus(request, error);
    payload?.release();
    this.pool.push(request);
  }

  /** The request layer's answers and ends of requests (see NbdRequest). */
  private readonly replies: NbdReplies = {
    answer: (request, errno) => {
      const reply = request.reply;
      if (request.kind === Answer.READ && errno === 0 && reply) {
        request.reply = undefined; // the socket releases it once written
        const data = request.ownData;
        request.ownData = undefined;
        if (data && data.byteLength >= GATHER_FROM) {
          // Two writes, one system call (corked): the data goes from the callback's memory.
          this.send(reply.head(request.headerSize));
          this.send(data, reply.release);
        } else {
          if (data) reply.buffer.set(data, request.headerSize);
          this.send(reply.buffer, reply.release);
        }
      } else if (request.kind === Answer.EXTENTS && errno === 0) {
        this.sendExtents(request);
      } else {
        this.replyStatus(request, nbdError(errno));
      }
      if (--this.inFlight === 0) this.idle?.();
    },
    finish: (request) => {
      this.held -= request.held;
      request.held = 0;
      request.reply?.release();
      request.payload?.release();
      this.link.input.release(request.slab);
      request.reply = request.payload = request.slab = undefined;
      this.pool.push(request);
      if (this.paused) this.resumeIfRoom();
    },
  };

  private hold(request: NbdRequest, bytes: number): void {
    request.held = bytes;
    this.held += bytes;
  }

  /** Whether the connection holds more than its limit: requests' buffers, and replies the client has not read. */
  private overLimit(): boolean {
    const limit = this.link.exported.limits?.connectionMemory;
    return limit !== undefined && this.held + this.link.socket.writableLength > limit;
  }

  private resumeIfRoom(): void {
    if (this.overLimit() || this.link.ending) return;
    this.paused = false;
    this.link.socket.resume();
    this.nextRequest();
  }

  /** base:allocation: the driver's extents (everything is data without an extents callback). */
  private sendExtents(request: NbdRequest): void {
    const { extents } = request;
    const count = request.one ? 1 : Math.min(extents.length, MAX_EXTENTS);
    const reply = Buffer.alloc(ChunkHeader.SIZE + 4 + 8 * count);
    writeChunkHeader(reply, request, ReplyFlag.DONE, ReplyType.BLOCK_STATUS, 4 + 8 * count);
    reply.writeUInt32BE(BASE_ALLOCATION_ID, ChunkHeader.SIZE);
    for (let i = 0, at = ChunkHeader.SIZE + 4; i < count; i++, at += 8) {
      const extent = extents[i]!;
      reply.writeUInt32BE(extent.length, at);
      reply.writeUInt32BE((extent.hole ? State.HOLE : 0) | (extent.zero ? State.ZERO : 0), at + 4);
    }
    this.send(reply);
  }

  /**
   * A reply without data. Success is a simple reply even where structured replies were
   * negotiated, which the protocol allows for every command but a READ (never answered here
   * with success): a client takes a simple reply's 16 bytes in one read, where a chunk's header
   * takes two and its own handling (libnbd), and the client's one thread is what bounds a deep
   * queue of small writes. A failure is an error chunk, as a READ's must be.
   */
  private replyStatus(cookie: Cookie, error: number): void {
    if (this.structured && error !== 0) return this.send(errorChunk(cookie, error));
    if (this.statusBytes === STATUS_BATCH) this.sendStatuses();
    if (!this.statuses) {
      this.statuses = this.link.input.buffers.take(STATUS_BATCH);
      this.corkForTurn();
    }
    writeSimpleReply(this.statuses.buffer, this.statusBytes, cookie, error);
    this.statusBytes += SimpleReply.SIZE;
  }

  /**
   * Hands the simple replies gathered so far to the socket. At the end of the turn, and before
   * anything that ends the socket or waits for what was written to leave (Connection).
   */
  sendStatuses(): void {
    const statuses = this.statuses;
    if (!statuses) return;
    this.statuses = undefined;
    const bytes = this.statusBytes;
    this.statusBytes = 0;
    this.send(bytes === STATUS_BATCH ? statuses.buffer : statuses.head(bytes), statuses.release);
  }

  /**
   * Queues a reply; `written` runs once the socket took it (or never will). Replies made in one
   * turn of the event loop leave in one system call: the socket is corked until the promises
   * settled in this turn have run.
   */
  private send(reply: Uint8Array, written?: () => void): void {
    const { socket } = this.link;
    if (this.muted || socket.destroyed || !socket.writable) return written?.();
    this.corkForTurn();
    socket.write(reply, written);
  }

  private corkForTurn(): void {
    if (this.corked) return;
    this.corked = true;
    this.link.socket.cork();
    process.nextTick(this.uncork);
  }

  private readonly uncork = (): void => {
    this.sendStatuses();
    this.corked = false;
    this.link.socket.uncork();
    // Nothing left to do but wait for the client: a client at queue depth 1 sends its next
    // request within microseconds, and catching it spinning spares the event loop a sleep and a
    // wake-up, which cost more than the request on a virtual machine.
    if (this.inFlight === 0 && this.link.fd >= 0 && !this.link.ending) native.waitReadable(this.link.fd, SPIN_MICROSECONDS);
  };
}

/** A request's offset: two 32-bit reads, not a BigInt per request; past 2^53 inexact, but still outside any device. */
function offsetOf(header: Buffer): number {
  return header.readUInt32BE(RequestHeader.offset) * 0x1_0000_0000 + header.readUInt32BE(RequestHeader.offset + 4);
}
