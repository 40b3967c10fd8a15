/**
 * An NBD client: connects to any NBD server (nbdkit, qemu-nbd, nbd-server, a bdus export) over
 * TCP or a Unix socket, with TLS when asked, negotiates the fixed newstyle handshake (structured
 * replies and base:allocation when the server has them), and then carries requests, many in
 * flight at once, matched to their replies by cookie. The wire format is protocol.ts's, the same
 * the server speaks.
 *
 * A lost connection fails the requests in flight with ENOLINK and the client is closed: the
 * caller decides whether to connect again (the nbd driver does, on the next request). So does a
 * server shutting down (an ESHUTDOWN reply): nbdkit, say, waits for its clients to leave.
 */
import type { Socket } from 'node:net';
import type { Extent } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import { openSocket, startTls, type NbdClientOptions, type NbdTarget } from './client-connect.js';
import { MessageInput, readsInto } from './input.js';

export { parseNbdUri, type NbdClientOptions, type NbdTarget } from './client-connect.js';
import {
  Allocation,
  BASE_ALLOCATION,
  ChunkHeader,
  ClientFlag,
  Command,
  CommandFlag,
  Flag,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  NbdError,
  Option,
  OPTION_REPLY_MAGIC,
  OptionReplyHeader,
  Reply,
  ReplyFlag,
  ReplyType,
  REQUEST_MAGIC,
  RequestHeader,
  SIMPLE_REPLY_MAGIC,
  SimpleReply,
  STRUCTURED_REPLY_MAGIC,
} from './protocol.js';
import { replyName } from './codec.js';

interface Pending {
  readonly command: number;
  readonly offset: number;
  /** Where a read's data goes; a block-status query's extents go to `extents`. */
  readonly buffer: Buffer | undefined;
  readonly extents: Extent[] | undefined;
  error: number;
  resolve(): void;
  reject(error: Error): void;
}

/** NBD error numbers -> the errno names bdus's drivers throw. */
function errorCode(nbd: number): string {
  return { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'EOPNOTSUPP', 108: 'ESHUTDOWN' }[nbd] ?? 'EIO';
}

export class NbdClient {
  /** The export's size in bytes. */
  size = 0;
  /** Its transmission flags (protocol.ts's Flag). */
  flags = 0;
  /** Block sizes the server asked for (minimum, preferred, maximum), if it did. */
  blockSize = { minimum: 1, preferred: 4096, maximum: 32 << 20 };
  /** Whether block-status queries work (structured replies and base:allocation). */
  blockStatus = false;
  private structured = false;
  private contextId = 0;
  private cookie = 0;
  private readonly pending = new Map<number, Pending>();
  private closedError: Error | undefined;
  /** close() waits here for the requests in flight. */
  private idle: (() => void) | undefined;

  /**
   * `pushed`: the socket emits its bytes as 'data' events, for the input to gather (TLS);
   * otherwise it reads into the input's own buffers, and a read's data straight into the
   * caller's buffer (one copy, the kernel's, instead of a fresh buffer per read and a copy).
   */
  private constructor(
    private socket: Socket,
    private readonly target: NbdTarget,
    private readonly input: MessageInput,
    private readonly pushed: boolean,
  ) {}

  /** Connects and negotiates; rejects with the server's refusal, word for word. */
  static async connect(target: NbdTarget, options: NbdClientOptions = {}): Promise<NbdClient> {
    const input = new MessageInput();
    // TLS comes after STARTTLS on the plain socket: its bytes are pushed, decrypted, as they come.
    const socket = await openSocket(target, options.connectTimeoutMs ?? 10_000, target.tls ? undefined : readsInto(input));
    const client = new NbdClient(socket, target, input, target.tls);
    try {
      await client.handshake(options);
    } catch (error) {
      socket.destroy();
      throw error;
    }
    client.transmit();
    return client;
  }

  get readOnly(): boolean {
    return (this.flags & Flag.READ_ONLY) !== 0;
  }
  has(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }
  get closed(): boolean {
    return this.closedError !== undefined;
  }

  read(buffer: Buffer, offset: number): Promise<void> {
    return this.request(Command.READ, 0, offset, buffer.length, undefined, buffer);
  }
  write(data: Buffer, offset: number, fua = false): Promise<void> {
    return this.request(Command.WRITE, fua ? CommandFlag.FUA : 0, offset, data.length, data);
  }
  flush(): Promise<void> {
    return this.request(Command.FLUSH, 0, 0, 0);
  }
  trim(offset: number, length: number): Promise<void> {
    return this.request(Command.TRIM, 0, offset, length);
  }
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    return this.request(Command.WRITE_ZEROES, mayUnmap ? 0 : CommandFlag.NO_HOLE, offset, length);
  }
  async extents(offset: number, length: number): Promise<Extent[]> {
    const extents: Extent[] = [];
    await this.request(Command.BLOCK_STATUS, 0, offset, length, undefined, undefined, extents);
    return extents;
  }

  /** Says goodbye (NBD_CMD_DISC) once the requests in flight are answered, and closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.pending.size > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    if (this.closed) return;
    const header = Buffer.alloc(RequestHeader.SIZE);
    header.writeUInt32BE(REQUEST_MAGIC, RequestHeader.magic);
    header.writeUInt16BE(Command.DISC, RequestHeader.type);
    await new Promise<void>((resolve) => this.socket.end(header, () => resolve()));
    this.fail(new DriverError('ESHUTDOWN', 'the NBD connection was closed'));
    this.socket.destroy();
  }

  private request(command: number, flags: number, offset: number, length: number, data?: Buffer, buffer?: Buffer, extents?: Extent[]): Promise<void> {
    if (this.closedError) return Promise.reject(this.closedError);
    const cookie = (this.cookie = (this.cookie + 1) >>> 0);
    const header = Buffer.allocUnsafe(RequestHeader.SIZE);
    header.writeUInt32BE(REQUEST_MAGIC, RequestHeader.magic);
    header.writeUInt16BE(flags, RequestHeader.flags);
    header.writeUInt16BE(command, RequestHeader.type);
    header.writeUInt32BE(0, RequestHeader.cookie);
    header.writeUInt32BE(cookie, RequestHeader.cookie + 4);
    header.writeBigUInt64BE(BigInt(offset), RequestHeader.offset);
    header.writeUInt32BE(length, RequestHeader.length);
    return new Promise<void>((resolve, reject) => {
      this.pending.set(cookie, { command, offset, buffer, extents, error: 0, resolve, reject });
      if (data) {
        this.socket.cork();
        this.socket.write(header);
        this.socket.write(data);
        this.socket.uncork();
      } else this.socket.write(header);
    });
  }

  // --- the handshake: a sequence of awaited messages ---

  private next(size: number): Promise<Buffer> {
    return new Promise((resolve) => this.input.expect(size, (data) => resolve(Buffer.from(data))));
  }

  private async handshake(options: NbdClientOptions): Promise<void> {
    const onData = (chunk: Buffer) => this.input.push(chunk);
    let fail: (error?: Error) => void = () => undefined;
    const lost = new Promise<never>((_, reject) => {
      fail = (error?: Error) => reject(new DriverError('ENOLINK', `the NBD server closed the connection during the handshake${error ? `: ${error.message}` : ''}`));
    });
    lost.catch(() => undefined);
    const onClose = () => fail();
    const listen = (socket: Socket) => (this.pushed ? socket.on('data', onData) : socket).on('close', onClose).on('error', fail);
    const unlisten = (socket: Socket) => socket.off('data', onData).off('close', onClose).off('error', fail);
    listen(this.socket);
    const step = <T>(work: Promise<T>) => Promise.race([work, lost]);

    const greeting = await step(this.next(18));
    if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) {
      throw new DriverError('EPROTO', 'not an NBD server speaking the newstyle handshake');
    }
    const serverFlags = greeting.readUInt16BE(16);
    if (!(serverFlags & HandshakeFlag.FIXED_NEWSTYLE)) throw new DriverError('EPROTO', 'the NBD server does not speak fixed newstyle');
    const noZeroes = (serverFlags & HandshakeFlag.NO_ZEROES) !== 0;
    this.socket.write(u32(ClientFlag.FIXED_NEWSTYLE | (noZeroes ? ClientFlag.NO_ZEROES : 0)));

    if (this.target.tls) {
      const [type] = await step(this.option(Option.STARTTLS, Buffer.alloc(0)));
      if (type !== Reply.ACK) throw new DriverError('EPROTO', `the NBD server refused TLS (${replyName(type)})`);
      unlisten(this.socket);
      this.input.clear();
      this.socket = await step(startTls(this.socket, this.target, options));
      listen(this.socket);
    }

    const [structured] = await step(this.option(Option.STRUCTURED_REPLY, Buffer.alloc(0)));
    this.structured = structured === Reply.ACK;
    if (this.structured) {
      const name = Buffer.from(this.target.name);
      const query = Buffer.from(BASE_ALLOCATION);
      const payload = Buffer.concat([u32(name.length), name, u32(1), u32(query.length), query]);
      for (const [type, data] of await step(this.optionReplies(Option.SET_META_CONTEXT, payload))) {
        if (type === Reply.META_CONTEXT && data.toString('latin1', 4) === BASE_ALLOCATION) {
          this.contextId = data.readUInt32BE(0);
          this.blockStatus = true;
        }
      }
    }

    const name = Buffer.from(this.target.name);
    const go = Buffer.concat([u32(name.length), name, u16(1), u16(Info.BLOCK_SIZE)]);
    for (const [type, data] of await step(this.optionReplies(Option.GO, go))) {
      if (type !== Reply.INFO) continue;
      const info = data.readUInt16BE(0);
      if (info === Info.EXPORT) {
        this.size = Number(data.readBigUInt64BE(2));
        this.flags = data.readUInt16BE(10);
      } else if (info === Info.BLOCK_SIZE) {
        this.blockSize = { minimum: data.readUInt32BE(2), preferred: data.readUInt32BE(6), maximum: data.readUInt32BE(10) };
      }
    }
    unlisten(this.socket);
  }

  /** Sends an option and reads one reply: [type, data]. */
  private async option(option: number, payload: Buffer): Promise<[number, Buffer]> {
    this.sendOption(option, payload);
    return this.optionReply(option);
  }

  /** Sends an option and reads its replies up to the final one; an error reply throws. */
  private async optionReplies(option: number, payload: Buffer): Promise<Array<[number, Buffer]>> {
    this.sendOption(option, payload);
    const replies: Array<[number, Buffer]> = [];
    for (;;) {
      const [type, data] = await this.optionReply(option);
      if (type === Reply.ACK) return replies;
      if (type >= 0x8000_0000) {
        if (option === Option.SET_META_CONTEXT) return replies; // no block status: fine
        const what = option === Option.GO ? `export '${this.target.name}'` : `option ${option}`;
        throw new DriverError(type === Reply.ERR_UNKNOWN ? 'ENOENT' : 'EPROTO', `the NBD server refused ${what}: ${replyName(type)}${data.length ? ` (${data.toString('utf8')})` : ''}`);
      }
      replies.push([type, data]);
    }
  }

  private sendOption(option: number, payload: Buffer): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(IHAVEOPT, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(payload.length, 12);
    this.socket.write(Buffer.concat([header, payload]));
  }

  private async optionReply(option: number): Promise<[number, Buffer]> {
    const header = await this.next(OptionReplyHeader.SIZE);
    if (header.readBigUInt64BE(OptionReplyHeader.magic) !== OPTION_REPLY_MAGIC || header.readUInt32BE(OptionReplyHeader.option) !== option) {
      throw new DriverError('EPROTO', 'the NBD server sent a malformed option reply');
    }
    const length = header.readUInt32BE(OptionReplyHeader.length);
    if (length > 1 << 20) throw new DriverError('EPROTO', `the NBD server sent a ${length}-byte option reply`);
    return [header.readUInt32BE(OptionReplyHeader.type), await this.next(length)];
  }

  // --- transmission: replies parsed as they come ---

  private transmit(): void {
    if (this.pushed) this.socket.on('data', (chunk: Buffer) => this.input.push(chunk));
    this.socket.on('error', (error) => this.fail(new DriverError('ENOLINK', `the NBD connection failed: ${error.message}`)));
    this.socket.on('close', () => this.fail(new DriverError('ENOLINK', 'the NBD server closed the connection')));
    this.input.open = () => !this.closedError;
    this.awaitReply();
  }

  private awaitReply(): void {
    // Both reply kinds start with a magic; a simple reply is 16 bytes, a chunk header 20.
    this.input.expect(4, (magic) => {
      const kind = magic.readUInt32BE(0);
      if (kind === SIMPLE_REPLY_MAGIC) this.input.expect(SimpleReply.SIZE - 4, (rest) => this.simpleReply(rest));
      else if (kind === STRUCTURED_REPLY_MAGIC && this.structured) this.input.expect(ChunkHeader.SIZE - 4, (rest) => this.chunk(rest));
      else this.protocolError(`a reply with magic 0x${kind.toString(16)}`);
    });
  }

  /** error u32, cookie u64 (the magic was taken); a successful read's data follows. */
  private simpleReply(rest: Buffer): void {
    const error = rest.readUInt32BE(0);
    const cookie = rest.readUInt32BE(8);
    const p = this.pending.get(cookie);
    if (!p) return this.protocolError(`a reply to unknown cookie ${cookie}`);
    if (p.command === Command.READ && error === 0) {
      this.input.expectInto(p.buffer!, () => {
        this.settle(cookie, p, 0);
        this.awaitReply();
      });
      return;
    }
    this.settle(cookie, p, error);
    this.awaitReply();
  }

  /** flags u16, type u16, cookie u64, length u32 (the magic was taken), then the payload. */
  private chunk(rest: Buffer): void {
    const flags = rest.readUInt16BE(0);
    const type = rest.readUInt16BE(2);
    const cookie = rest.readUInt32BE(8);
    const length = rest.readUInt32BE(12);
    const p = this.pending.get(cookie);
    if (!p) return this.protocolError(`a chunk for unknown cookie ${cookie}`);
    const done = () => {
      if (flags & ReplyFlag.DONE) this.settle(cookie, p, p.error);
      this.awaitReply();
    };
    if (type === ReplyType.OFFSET_DATA && p.buffer && length > 8) {
      // offset u64, then the data: copied once, straight into the read's buffer.
      this.input.expect(8, (where) => {
        const at = Number(where.readBigUInt64BE(0)) - p.offset;
        if (at < 0 || at + length - 8 > p.buffer!.length) return this.protocolError('read data outside the request');
        this.input.expectInto(p.buffer!.subarray(at, at + length - 8), done);
      });
      return;
    }
    this.input.expect(length, (payload) => {
      if (length < ((type & 0x8000) !== 0 || type === ReplyType.BLOCK_STATUS ? 4 : type === ReplyType.OFFSET_HOLE ? 12 : 0)) {
        return this.protocolError(`a ${length}-byte chunk of type ${type}`);
      }
      if (type === ReplyType.OFFSET_HOLE && p.buffer) {
        const at = Number(payload.readBigUInt64BE(0)) - p.offset;
        const size = payload.readUInt32BE(8);
        if (at < 0 || at + size > p.buffer.length) return this.protocolError('a hole outside the request');
        p.buffer.fill(0, at, at + size);
      } else if (type === ReplyType.BLOCK_STATUS && p.extents) {
        if (payload.readUInt32BE(0) === this.contextId) {
          for (let i = 4; i + 8 <= payload.length; i += 8) {
            const status = payload.readUInt32BE(i + 4);
            p.extents.push({ length: payload.readUInt32BE(i), hole: (status & Allocation.HOLE) !== 0, zero: (status & Allocation.ZERO) !== 0 });
          }
        }
      } else if (type & 0x8000) {
        p.error = payload.readUInt32BE(0) || 5;
      }
      // A payload spread over several chunks was gathered into a pooled buffer: give it back.
      this.input.gathered?.release();
      done();
    });
  }

  private settle(cookie: number, p: Pending, error: number): void {
    this.pending.delete(cookie);
    if (error === 0) p.resolve();
    else if (error === NbdError.ESHUTDOWN) {
      // The server is going away and waits for its clients to leave: leave, and let the caller connect again.
      p.reject(new DriverError('ENOLINK', 'the NBD server is shutting down'));
      this.fail(new DriverError('ENOLINK', 'the NBD server is shutting down'));
      this.socket.destroy();
      return;
    } else p.reject(new DriverError(errorCode(error), `the NBD server failed the request: ${errorCode(error)}`));
    if (this.pending.size === 0) this.idle?.();
  }

  private protocolError(what: string): void {
    this.fail(new DriverError('ENOLINK', `the NBD server sent ${what}: the connection is closed`));
    this.socket.destroy();
  }

  private fail(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    this.input.stop();
    for (const [cookie, p] of this.pending) {
      this.pending.delete(cookie);
      p.reject(error);
    }
    this.idle?.();
  }
}

function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value);
  return b;
}
function u16(value: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(value);
  return b;
}
