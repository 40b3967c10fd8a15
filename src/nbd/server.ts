/**
 * An NBD server for one export served by one driver instance: where an NBD request enters (the
 * connection's `transmit`), is handed to the request layer (the same checks, splitting,
 * emulation and error mapping as a FUSE request), and where its reply leaves (`reply*`).
 *
 * Handshake: fixed newstyle only, with EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY and
 * the metadata context options for base:allocation. Anything malformed in the handshake gets the
 * protocol's error reply where the protocol has one, and a hard disconnect where it has none
 * (bad magic, oversized option, unknown client flags, an EXPORT_NAME that cannot be served).
 * In transmission, a bad request gets an error reply; a bad magic or an oversized write payload
 * (whose length cannot be trusted) ends the connection. Other connections never notice.
 */
import { createServer, Socket, type Server, type SocketConstructorOpts } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import { rmSync } from 'node:fs';
import type { EffectiveAttributes } from '../driver/attributes.js';
import type { RequestCallback } from '../driver/callbacks.js';
import { native } from '../native.js';
import type { RequestLayer } from '../request/request-layer.js';
import { MessageInput, type PooledBuffer } from './input.js';
import { Answer, NbdRequest, type NbdReplies } from './request.js';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_ID,
  ChunkHeader,
  ClientFlag,
  Command,
  COMMAND_FLAGS,
  CommandFlag,
  Flag,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  NbdError,
  nbdError,
  Option,
  OPTION_REPLY_MAGIC,
  Reply,
  ReplyFlag,
  ReplyType,
  REQUEST_MAGIC,
  RequestHeader,
  SIMPLE_REPLY_MAGIC,
  SimpleReply,
  State,
  STRUCTURED_REPLY_MAGIC,
} from './protocol.js';

/** Most extents in one block-status reply; a client asks again for the rest. */
const MAX_EXTENTS = 1024;
/** Largest read or write payload a client may send (advertised as the maximum block size). */
export const MAX_PAYLOAD = 32 << 20;
/** Longest option a client may send in the handshake; longer ones end the connection. */
const MAX_OPTION = 64 << 10;
/** A client must finish the handshake within this time. */
const HANDSHAKE_TIMEOUT_MS = 60_000;

export interface NbdExport {
  /** The export's name; a client asking for "" gets it too. */
  readonly name: string;
  readonly description: string;
  readonly attributes: EffectiveAttributes;
  readonly readOnly: boolean;
  /** The driver's request callbacks: they decide the transmission flags. */
  readonly callbacks: readonly RequestCallback[];
  readonly requests: RequestLayer;
  readonly log: (line: string) => void;
  /** TLS through STARTTLS; absent: the server offers none. */
  readonly tls?: NbdTls;
}

/** How an export offers TLS (NBD_OPT_STARTTLS). */
export interface NbdTls {
  readonly context: SecureContext;
  /** Refuse everything but STARTTLS and ABORT until the client has started TLS. */
  readonly required: boolean;
  /** Ask for a client certificate and refuse clients without one the CA signed. */
  readonly verifyPeer: boolean;
}

/** Where to listen: a Unix socket path, or a TCP host and port. */
export type ListenAddress = { unix: string } | { host: string; port: number };

export class NbdServer {
  private server: Server | undefined;
  private readonly connections = new Set<Connection>();

  constructor(private readonly exported: NbdExport) {}

  /** Starts listening; resolves with the address actually bound (the port, if 0 was asked). */
  async listen(address: ListenAddress): Promise<ListenAddress> {
    // Paused: a connection without TLS moves to a socket reading into our buffers (ownSocket).
    const server = createServer({ pauseOnConnect: true }, (accepted) => {
      const own = this.exported.tls ? undefined : ownSocket(accepted);
      const onClose = () => this.connections.delete(connection);
      const connection: Connection = new Connection(own?.socket ?? accepted, this.exported, { onClose, ...own });
      if (!own) accepted.resume();
      this.connections.add(connection);
    });
    this.server = server;
    server.on('error', (error) => this.exported.log(`nbd server: ${error.message}`));
    if ('unix' in address) rmSync(address.unix, { force: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('unix' in address) server.listen(address.unix, resolve);
      else server.listen(address.port, address.host, resolve);
    });
    const bound = server.address();
    return 'unix' in address || bound === null || typeof bound === 'string' ? address : { host: address.host, port: bound.port };
  }

  /** Connections open right now. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Stops accepting, lets every connection's requests in progress be answered, then ends them;
   * with `now`, ends every connection at once (the driver aborted: nothing more will be answered).
   */
  async close(options: { now?: boolean } = {}): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    const closed = new Promise((resolve) => server.close(resolve));
    await Promise.all([...this.connections].map((c) => (options.now ? c.hangUp('the export ends') : c.shutdown())));
    await closed;
  }
}

export interface ConnectionOptions {
  /**
   * A connection from the kernel's NBD client (the kernel NBD frontend): no handshake, simple
   * replies only, and the caller feeds it the socket's bytes with push(), so that it can stop
   * reading at a message boundary for a hand-over.
   */
  kernel?: boolean;
  /** Bytes a previous driver read from this socket but did not parse (a hand-over). */
  unread?: Buffer;
  /** Called once when the connection has closed. */
  onClose?: () => void;
  /**
   * Where the socket reads into through net.Socket's `onread` (readBuffer() and didRead()), not
   * 'data' events; the socket asks for its first buffer before the connection exists.
   */
  input?: MessageInput;
  /** The socket's file descriptor, where known: the connection spins on it briefly when idle (see uncork). */
  fd?: number;
}

/** A Unix socket's send buffer: room for a few 1 MiB replies at once (see growUnixSendBuffer). */
const SEND_BUFFER = 4 << 20;

/** How long an idle connection spins for the client's next request before the event loop sleeps. */
const SPIN_MICROSECONDS = 20;

/**
 * The accepted connection's descriptor, as a socket that reads into the connection's own buffers
 * (net.Socket's `onread`, which a server's sockets cannot be given): a duplicate of it, the
 * accepted socket closed. Undefined where Node does not show the descriptor (then the accepted
 * socket is used as it is).
 */
function ownSocket(accepted: Socket): { socket: Socket; fd: number; input: MessageInput } | undefined {
  const fd = (accepted as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return undefined;
  const copy = native.dup(fd);
  accepted.destroy(); // closes its descriptor only: the connection lives on in the copy
  const input = new MessageInput();
  const socket = readingSocket(copy, input, () => true);
  return { socket, fd: copy, input };
}

/**
 * A socket on `fd` that reads into `input`'s buffers (net.Socket's `onread`): requests are views
 * into them, and once `reading()` is false it stops at once (a hand-over knows exactly which
 * bytes it leaves in the socket).
 */
export function readingSocket(fd: number, input: MessageInput, reading: () => boolean): Socket {
  native.growUnixSendBuffer(fd, SEND_BUFFER);
  return new Socket({
    fd,
    readable: true,
    writable: true,
    onread: {
      buffer: () => input.readBuffer(),
      callback: (n: number) => {
        input.didRead(n);
        return reading();
      },
    },
  } as SocketConstructorOpts);
}

/** One client's connection: its handshake, then its requests and their replies. */
export class Connection {
  private readonly input: MessageInput;
  private corked = false;
  private readonly fd: number;
  private secure = false;
  private noZeroes = false;
  private structured = false;
  private allocationContext = false;
  private transmitting = false;
  /** Requests handed to the request layer and not yet answered. */
  private inFlight = 0;
  private readonly pool: NbdRequest[] = [];
  private ending = false;
  private muted = false;
  private onClose: (() => void) | undefined;
  private endWhenIdle: (() => void) | undefined;

  constructor(
    private socket: Socket,
    private readonly exported: NbdExport,
    options: ConnectionOptions = {},
  ) {
    this.onClose = options.onClose;
    this.input = options.input ?? new MessageInput();
    this.input.open = () => !this.socket.destroyed;
    this.fd = options.fd ?? -1;
    socket.on('error', () => undefined); // 'close' follows
    socket.on('close', () => this.closed());
    if (options.unread?.length) this.push(options.unread);
    if (options.kernel) {
      this.transmitting = true;
      this.nextRequest();
      return;
    }
    socket.setNoDelay(true);
    socket.setTimeout(HANDSHAKE_TIMEOUT_MS, () => this.hangUp('the client did not finish the handshake in time'));
    if (!options.input) socket.on('data', (chunk: Buffer) => this.push(chunk));
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(NBDMAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
    socket.write(greeting);
    this.expect(4, (flags) => this.clientFlags(flags.readUInt32BE(0)));
  }

  /** Ends the connection once the requests in progress are answered (server shutdown). */
  shutdown(): Promise<void> {
    this.ending = true;
    this.input.stop(); // no more requests are read
    if (!this.transmitting) {
      this.socket.destroy();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.endWhenIdle = () => {
        this.socket.end();
        resolve();
      };
      if (this.inFlight === 0 || this.socket.destroyed) this.endWhenIdle();
    });
  }

  /**
   * Stops taking requests, at a message boundary, for a hand-over: those taken are still
   * answered. Returns the bytes read but not parsed (part of the next request), which belong
   * to whoever reads this socket next.
   */
  stopReading(): Buffer {
    this.ending = true;
    return this.input.takeUnread();
  }

  /** Writes nothing more, however requests end (the driver aborted: the next one answers them). */
  mute(): void {
    this.muted = true;
    this.ending = true;
    this.input.stop();
  }

  /** Resolves once every reply written so far has left for the socket. */
  flushed(): Promise<void> {
    if (this.socket.destroyed || this.socket.writableLength === 0) return Promise.resolve();
    return new Promise((resolve) => this.socket.write(Buffer.alloc(0), () => resolve()));
  }

  // ---- Input ------------------------------------------------------------------------------------

  /** Takes the socket's next bytes (a socket that does not read through readBuffer()). */
  push(chunk: Buffer): void {
    this.input.push(chunk);
  }

  private expect(size: number, then: (data: Buffer) => void): void {
    this.input.expect(size, then);
  }

  private closed(): void {
    this.endWhenIdle?.();
    this.onClose?.();
    this.onClose = undefined;
  }

  hangUp(why: string): void {
    if (!this.socket.destroyed) this.exported.log(`nbd: closing a connection: ${why}`);
    this.socket.destroy();
  }

  // ---- Handshake ----------------------------------------------------------------------------------

  private clientFlags(flags: number): void {
    if (flags & ~(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)) return this.hangUp(`unknown client flags 0x${flags.toString(16)}`);
    this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
    this.nextOption();
  }

  private nextOption(): void {
    this.expect(16, (header) => {
      if (header.readBigUInt64BE(0) !== IHAVEOPT) return this.hangUp('bad option magic');
      const option = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);
      if (length > MAX_OPTION) return this.hangUp(`option ${option} is ${length} bytes long`);
      this.expect(length, (data) => this.option(option, data));
    });
  }

  private option(option: number, data: Buffer): void {
    if (this.ending && option !== Option.ABORT) {
      this.optionReply(option, Reply.ERR_SHUTDOWN);
      return this.nextOption();
    }
    if (this.exported.tls?.required && !this.secure && option !== Option.STARTTLS && option !== Option.ABORT) {
      if (option === Option.EXPORT_NAME) return this.hangUp('EXPORT_NAME before STARTTLS, and TLS is required');
      this.optionReply(option, Reply.ERR_TLS_REQD, 'this server requires TLS: use STARTTLS');
      return this.nextOption();
    }
    switch (option) {
      case Option.STARTTLS:
        if (data.length !== 0) this.optionReply(option, Reply.ERR_INVALID, 'STARTTLS takes no data');
        else if (!this.exported.tls) this.optionReply(option, Reply.ERR_UNSUP, 'this server offers no TLS');
        else if (this.secure) this.optionReply(option, Reply.ERR_INVALID, 'TLS is already on');
        else return this.startTls(this.exported.tls);
        break;
      case Option.EXPORT_NAME:
        return this.exportName(data);
      case Option.ABORT:
        this.optionReply(option, Reply.ACK);
        this.socket.end();
        return;
      case Option.LIST:
        if (data.length !== 0) this.optionReply(option, Reply.ERR_INVALID, 'LIST takes no data');
        else {
          const name = Buffer.from(this.exported.name);
          const server = Buffer.alloc(4 + name.length);
          server.writeUInt32BE(name.length, 0);
          name.copy(server, 4);
          this.optionReply(option, Reply.SERVER, server);
          this.optionReply(option, Reply.ACK);
        }
        break;
      case Option.INFO:
      case Option.GO:
        if (this.infoOrGo(option, data)) return;
        break;
      case Option.STRUCTURED_REPLY:
        if (data.length !== 0) this.optionReply(option, Reply.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        else {
          this.structured = true;
          this.optionReply(option, Reply.ACK);
        }
        break;
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT:
        this.metaContext(option, data);
        break;
      default:
        this.optionReply(option, Reply.ERR_UNSUP, `option ${option} is not supported`);
    }
    this.nextOption();
  }

  /**
   * Acknowledges STARTTLS and carries on over TLS: the next bytes are the client's TLS handshake,
   * and every option after it is encrypted. What was negotiated in the clear is forgotten.
   */
  private startTls(tls: NbdTls): void {
    this.optionReply(Option.STARTTLS, Reply.ACK);
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('timeout');
    this.input.clear(); // a client sends nothing after STARTTLS before its handshake
    this.structured = false;
    this.allocationContext = false;
    this.secure = true;
    const secure = new TLSSocket(plain, {
      isServer: true,
      secureContext: tls.context,
      requestCert: tls.verifyPeer,
      rejectUnauthorized: tls.verifyPeer,
    });
    this.socket = secure;
    secure.setTimeout(HANDSHAKE_TIMEOUT_MS, () => this.hangUp('the client did not finish the handshake in time'));
    secure.on('data', (chunk: Buffer) => this.push(chunk));
    secure.on('error', (error) => this.hangUp(`TLS: ${error.message}`));
    secure.on('close', () => this.closed());
    this.nextOption();
  }

  private exportName(data: Buffer): void {
    if (!this.knows(data.toString('utf8'))) return this.hangUp(`no export named ${JSON.stringify(data.toString('utf8'))}`);
    const reply = Buffer.alloc(this.noZeroes ? 10 : 134);
    reply.writeBigUInt64BE(BigInt(this.exported.attributes.size), 0);
    reply.writeUInt16BE(this.transmissionFlags(), 8);
    this.socket.write(reply);
    this.transmit();
  }

  /** INFO and GO; returns true if the connection moved on to transmission. */
  private infoOrGo(option: number, data: Buffer): boolean {
    const parsed = parseInfoRequest(data);
    if (!parsed) {
      this.optionReply(option, Reply.ERR_INVALID, 'malformed INFO/GO request');
      return false;
    }
    if (!this.knows(parsed.name)) {
      this.optionReply(option, Reply.ERR_UNKNOWN, `no export named ${JSON.stringify(parsed.name)}`);
      return false;
    }
    const exportInfo = Buffer.alloc(12);
    exportInfo.writeUInt16BE(Info.EXPORT, 0);
    exportInfo.writeBigUInt64BE(BigInt(this.exported.attributes.size), 2);
    exportInfo.writeUInt16BE(this.transmissionFlags(), 10);
    this.optionReply(option, Reply.INFO, exportInfo);
    // Block sizes are always sent: they are the constraints the request layer checks.
    const { logicalBlockSize, physicalBlockSize } = this.exported.attributes;
    const sizes = Buffer.alloc(14);
    sizes.writeUInt16BE(Info.BLOCK_SIZE, 0);
    sizes.writeUInt32BE(logicalBlockSize, 2);
    sizes.writeUInt32BE(Math.max(physicalBlockSize, 4096), 6);
    sizes.writeUInt32BE(MAX_PAYLOAD, 10);
    this.optionReply(option, Reply.INFO, sizes);
    for (const type of parsed.requests) {
      if (type === Info.NAME) this.optionReply(option, Reply.INFO, infoString(Info.NAME, this.exported.name));
      if (type === Info.DESCRIPTION && this.exported.description) {
        this.optionReply(option, Reply.INFO, infoString(Info.DESCRIPTION, this.exported.description));
      }
    }
    this.optionReply(option, Reply.ACK);
    if (option !== Option.GO) return false;
    this.transmit();
    return true;
  }

  private metaContext(option: number, data: Buffer): void {
    const parsed = parseMetaContextRequest(data);
    if (!parsed) return this.optionReply(option, Reply.ERR_INVALID, 'malformed metadata context request');
    if (!this.knows(parsed.name)) return this.optionReply(option, Reply.ERR_UNKNOWN, `no export named ${JSON.stringify(parsed.name)}`);
    if (option === Option.SET_META_CONTEXT && !this.structured) {
      return this.optionReply(option, Reply.ERR_INVALID, 'SET_META_CONTEXT needs structured replies first');
    }
    const listing = option === Option.LIST_META_CONTEXT;
    const wanted = parsed.queries.some((q) => q === BASE_ALLOCATION || (listing && q === 'base:')) || (listing && parsed.queries.length === 0);
    if (option === Option.SET_META_CONTEXT) this.allocationContext = wanted;
    if (wanted) {
      const name = Buffer.from(BASE_ALLOCATION);
      const reply = Buffer.alloc(4 + name.length);
      reply.writeUInt32BE(BASE_ALLOCATION_ID, 0);
      name.copy(reply, 4);
      this.optionReply(option, Reply.META_CONTEXT, reply);
    }
    this.optionReply(option, Reply.ACK);
  }

  private knows(name: string): boolean {
    return name === '' || name === this.exported.name;
  }

  private transmissionFlags(): number {
    return transmissionFlags(this.exported, this.structured);
  }

  private optionReply(option: number, type: number, data: Buffer | string = Buffer.alloc(0)): void {
    const payload = typeof data === 'string' ? Buffer.from(data) : data;
    const header = Buffer.alloc(20);
    header.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(type >>> 0, 12);
    header.writeUInt32BE(payload.length, 16);
    this.socket.write(payload.length ? Buffer.concat([header, payload]) : header);
  }

  // ---- Transmission -------------------------------------------------------------------------------

  private transmit(): void {
    this.transmitting = true;
    this.socket.setTimeout(0);
    this.nextRequest();
  }

  private nextRequest(): void {
    if (this.ending) return;
    this.expect(RequestHeader.SIZE, (header) => {
      if (header.readUInt32BE(RequestHeader.magic) !== REQUEST_MAGIC) return this.hangUp('bad request magic');
      const type = header.readUInt16BE(RequestHeader.type);
      const length = header.readUInt32BE(RequestHeader.length);
      if (type === Command.WRITE) {
        // A write's payload follows its header; a length we would not accept cannot be skipped safely.
        if (length > MAX_PAYLOAD) return this.hangUp(`a write of ${length} bytes (the maximum is ${MAX_PAYLOAD})`);
        // The header stays a view into its slab: no slab is reused before this payload is
        // complete (input.ts keeps room for it), and request() reads the header at once.
        return this.expect(length, (data) => {
          this.request(header, data, this.input.gathered);
          this.nextRequest();
        });
      }
      if (type === Command.DISC) {
        this.ending = true;
        return void this.shutdown();
      }
      this.request(header, undefined, undefined);
      this.nextRequest();
    });
  }

  /** A request record from the pool (see request.ts). */
  private take(header: Buffer): NbdRequest {
    const request = this.pool.pop() ?? new NbdRequest(this.replies);
    // Copied out: the header's bytes may be reused (a slab) before the reply leaves.
    request.high = header.readUInt32BE(RequestHeader.cookie);
    request.low = header.readUInt32BE(RequestHeader.cookie + 4);
    request.kind = Answer.STATUS;
    return request;
  }

  /**
   * Decodes one request and hands it to the request layer, which answers it through the
   * record's answer() (in replies below). What is checked here is the wire: the command, its
   * flags and the payload's length; everything else is the request layer's.
   * `payload`: the pooled buffer holding `data`, if it was gathered from several socket chunks.
   */
  private request(header: Buffer, data: Buffer | undefined, payload: PooledBuffer | undefined): void {
    const flags = header.readUInt16BE(RequestHeader.flags);
    const type = header.readUInt16BE(RequestHeader.type);
    // Two 32-bit reads, not a BigInt per request; past 2^53 the value is inexact but still outside.
    const offset = header.readUInt32BE(RequestHeader.offset) * 0x1_0000_0000 + header.readUInt32BE(RequestHeader.offset + 4);
    const length = header.readUInt32BE(RequestHeader.length);
    const request = this.take(header);
    const { requests } = this.exported;
    // The wire's own rules; bounds, alignment and read-only are the request layer's.
    if (flags & ~(COMMAND_FLAGS[type] ?? 0)) return this.refuse(request, NbdError.EINVAL, payload);
    switch (type) {
      case Command.READ: {
        if (length > MAX_PAYLOAD || (flags & CommandFlag.DF && !this.structured)) return this.refuse(request, NbdError.EINVAL, payload);
        const headerSize = this.structured ? ChunkHeader.SIZE + 8 : SimpleReply.SIZE;
        const reply = this.input.buffers.take(headerSize + length);
        if (this.structured) {
          writeChunkHeader(reply.buffer, request, ReplyFlag.DONE, ReplyType.OFFSET_DATA, 8 + length);
          reply.buffer.writeBigUInt64BE(BigInt(offset), ChunkHeader.SIZE);
        } else {
          reply.buffer.writeUInt32BE(SIMPLE_REPLY_MAGIC, SimpleReply.magic);
          reply.buffer.writeUInt32BE(0, SimpleReply.error);
          writeCookie(reply.buffer, request, SimpleReply.cookie);
        }
        request.kind = Answer.READ;
        request.reply = reply;
        this.inFlight++;
        return requests.read(request, reply.buffer.subarray(headerSize), offset);
      }
      case Command.WRITE:
        // The payload is a view into a slab (unless it was gathered): kept until the callback ends.
        request.payload = payload;
        request.slab = payload ? undefined : this.input.hold();
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
        if (flags & CommandFlag.FAST_ZERO && !this.exported.callbacks.includes('writeZeros')) return this.refuse(request, NbdError.ENOTSUP, payload);
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
        this.send(reply.buffer, reply.release);
      } else if (request.kind === Answer.EXTENTS && errno === 0) {
        this.sendExtents(request);
      } else {
        this.replyStatus(request, nbdError(errno));
      }
      if (--this.inFlight === 0 && this.ending) this.endWhenIdle?.();
    },
    finish: (request) => {
      request.reply?.release();
      request.payload?.release();
      this.input.release(request.slab);
      request.reply = request.payload = request.slab = undefined;
      this.pool.push(request);
    },
  };

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

  private replyStatus(cookie: Cookie, error: number): void {
    if (error !== 0) return this.replyError(cookie, error);
    if (this.structured) {
      // Every byte is written: from Node's buffer pool, not a zeroed ArrayBuffer per reply.
      const reply = Buffer.allocUnsafe(ChunkHeader.SIZE);
      writeChunkHeader(reply, cookie, ReplyFlag.DONE, ReplyType.NONE, 0);
      return this.send(reply);
    }
    this.send(simpleReply(cookie, 0));
  }

  private replyError(cookie: Cookie, error: number): void {
    if (!this.structured) return this.send(simpleReply(cookie, error));
    const reply = Buffer.allocUnsafe(ChunkHeader.SIZE + 6);
    writeChunkHeader(reply, cookie, ReplyFlag.DONE, ReplyType.ERROR, 6);
    reply.writeUInt32BE(error, ChunkHeader.SIZE);
    reply.writeUInt16BE(0, ChunkHeader.SIZE + 4); // no message
    this.send(reply);
  }

  /**
   * Queues a reply; `written` runs once the socket took it (or never will). Replies made in one
   * turn of the event loop leave in one system call: the socket is corked until the promises
   * settled in this turn have run.
   */
  private send(reply: Buffer, written?: () => void): void {
    if (this.muted || this.socket.destroyed || !this.socket.writable) return written?.();
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(reply, written);
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
    // Nothing left to do but wait for the client: a client at queue depth 1 sends its next
    // request within microseconds, and catching it spinning spares the event loop a sleep and a
    // wake-up, which cost more than the request on a virtual machine.
    if (this.inFlight === 0 && this.fd >= 0 && !this.ending) native.waitReadable(this.fd, SPIN_MICROSECONDS);
  };
}

/** What the export offers, as NBD transmission flags: they follow the driver's callbacks. */
export function transmissionFlags(exported: Pick<NbdExport, 'callbacks' | 'readOnly'>, structured: boolean): number {
  const has = (name: RequestCallback) => exported.callbacks.includes(name);
  let flags = Flag.HAS_FLAGS | Flag.SEND_FLUSH | Flag.SEND_FUA | Flag.CAN_MULTI_CONN;
  if (exported.readOnly) flags |= Flag.READ_ONLY;
  else {
    if (has('discard')) flags |= Flag.SEND_TRIM;
    flags |= Flag.SEND_WRITE_ZEROES;
    if (has('writeZeros')) flags |= Flag.SEND_FAST_ZERO;
  }
  if (structured) flags |= Flag.SEND_DF;
  return flags;
}

/** A request's cookie, echoed in its reply: two 32-bit halves (no BigInt per request). */
type Cookie = { readonly high: number; readonly low: number };

function writeCookie(buffer: Buffer, cookie: Cookie, at: number): void {
  buffer.writeUInt32BE(cookie.high, at);
  buffer.writeUInt32BE(cookie.low, at + 4);
}

function simpleReply(cookie: Cookie, error: number): Buffer {
  const reply = Buffer.allocUnsafe(SimpleReply.SIZE);
  reply.writeUInt32BE(SIMPLE_REPLY_MAGIC, SimpleReply.magic);
  reply.writeUInt32BE(error, SimpleReply.error);
  writeCookie(reply, cookie, SimpleReply.cookie);
  return reply;
}

function writeChunkHeader(buffer: Buffer, cookie: Cookie, flags: number, type: number, length: number): void {
  buffer.writeUInt32BE(STRUCTURED_REPLY_MAGIC, ChunkHeader.magic);
  buffer.writeUInt16BE(flags, ChunkHeader.flags);
  buffer.writeUInt16BE(type, ChunkHeader.type);
  writeCookie(buffer, cookie, ChunkHeader.cookie);
  buffer.writeUInt32BE(length, ChunkHeader.length);
}

function infoString(type: number, text: string): Buffer {
  const bytes = Buffer.from(text);
  const info = Buffer.alloc(2 + bytes.length);
  info.writeUInt16BE(type, 0);
  bytes.copy(info, 2);
  return info;
}

/** INFO/GO data: u32 name length, name, u16 count, count x u16 info types. */
function parseInfoRequest(data: Buffer): { name: string; requests: number[] } | undefined {
  if (data.length < 6) return undefined;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) return undefined;
  const name = data.toString('utf8', 4, 4 + nameLength);
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 6 + nameLength + 2 * count) return undefined;
  const requests = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(6 + nameLength + 2 * i));
  return { name, requests };
}

/** LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, count x (u32 length, query). */
function parseMetaContextRequest(data: Buffer): { name: string; queries: string[] } | undefined {
  if (data.length < 8) return undefined;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) return undefined;
  const name = data.toString('utf8', 4, 4 + nameLength);
  let at = 4 + nameLength;
  const count = data.readUInt32BE(at);
  at += 4;
  const queries = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return undefined;
    const length = data.readUInt32BE(at);
    if (length > data.length - at - 4) return undefined;
    queries.push(data.toString('utf8', at + 4, at + 4 + length));
    at += 4 + length;
  }
  return at === data.length ? { name, queries } : undefined;
}
