/**
 * The handshake phase of an NBD connection: fixed newstyle, with EXPORT_NAME, ABORT, LIST,
 * STARTTLS, INFO, GO, STRUCTURED_REPLY and the metadata context options for base:allocation.
 * Anything malformed gets the protocol's error reply where the protocol has one, and a hard
 * disconnect where it has none (bad magic, an oversized option, unknown client flags, an
 * EXPORT_NAME that cannot be served). It ends by handing the connection to transmission with
 * what was negotiated.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import {
  blockSizeInfo,
  exportInfo,
  exportNameReply,
  infoString,
  metaContextReply,
  optionName,
  optionReply,
  parseInfoRequest,
  parseMetaContextRequest,
  serverReply,
} from './codec.js';
import type { MessageInput } from './input.js';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_ID,
  ClientFlag,
  Greeting,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  Option,
  OptionHeader,
  Reply,
} from './protocol.js';
import { MAX_PAYLOAD, transmissionFlags, type NbdExport, type NbdTls } from './export-spec.js';

/** Longest option a client may send in the handshake; longer ones end the connection. */
const MAX_OPTION = 64 << 10;

/** What transmission needs to know of the handshake. */
export interface Negotiated {
  readonly structured: boolean;
  readonly allocationContext: boolean;
}

/** What the connection lends its handshake. */
export interface HandshakeLink {
  readonly socket: Socket;
  readonly input: MessageInput;
  readonly exported: NbdExport;
  /** The server is shutting down: options get ERR_SHUTDOWN. */
  readonly ending: boolean;
  hangUp(why: string): void;
  /** STARTTLS: the connection carries on over this socket. */
  secure(socket: TLSSocket): void;
  /** EXPORT_NAME or GO: on to transmission. */
  transmit(negotiated: Negotiated): void;
}

export class Handshake {
  private noZeroes = false;
  private structured = false;
  private allocationContext = false;
  private secured = false;

  constructor(private readonly link: HandshakeLink) {}

  /** Greets the client and reads its flags. */
  start(): void {
    const greeting = Buffer.alloc(Greeting.SIZE);
    greeting.writeBigUInt64BE(NBDMAGIC, Greeting.magic);
    greeting.writeBigUInt64BE(IHAVEOPT, Greeting.ihaveopt);
    greeting.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, Greeting.flags);
    this.link.socket.write(greeting);
    this.link.input.expect(4, (flags) => this.clientFlags(flags.readUInt32BE(0)));
  }

  private clientFlags(flags: number): void {
    if (flags & ~(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)) return this.link.hangUp(`unknown client flags 0x${flags.toString(16)}`);
    this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
    this.nextOption();
  }

  private nextOption(): void {
    this.link.input.expect(OptionHeader.SIZE, (header) => {
      if (header.readBigUInt64BE(OptionHeader.magic) !== IHAVEOPT) return this.link.hangUp('bad option magic');
      const option = header.readUInt32BE(OptionHeader.option);
      const length = header.readUInt32BE(OptionHeader.length);
      if (length > MAX_OPTION) return this.link.hangUp(`option ${optionName(option)} is ${length} bytes long`);
      this.link.input.expect(length, (data) => this.option(option, data));
    });
  }

  private option(option: number, data: Buffer): void {
    if (this.link.ending && option !== Option.ABORT) {
      this.optionReply(option, Reply.ERR_SHUTDOWN);
      return this.nextOption();
    }
    if (this.link.exported.tls?.required && !this.secured && option !== Option.STARTTLS && option !== Option.ABORT) {
      if (option === Option.EXPORT_NAME) return this.link.hangUp('EXPORT_NAME before STARTTLS, and TLS is required');
      this.optionReply(option, Reply.ERR_TLS_REQD, 'this server requires TLS: use STARTTLS');
      return this.nextOption();
    }
    switch (option) {
      case Option.STARTTLS:
        if (data.length !== 0) this.optionReply(option, Reply.ERR_INVALID, 'STARTTLS takes no data');
        else if (!this.link.exported.tls) this.optionReply(option, Reply.ERR_UNSUP, 'this server offers no TLS');
        else if (this.secured) this.optionReply(option, Reply.ERR_INVALID, 'TLS is already on');
        else return this.startTls(this.link.exported.tls);
        break;
      case Option.EXPORT_NAME:
        return this.exportName(data);
      case Option.ABORT:
        this.optionReply(option, Reply.ACK);
        this.link.socket.end();
        return;
      case Option.LIST:
        if (data.length !== 0) this.optionReply(option, Reply.ERR_INVALID, 'LIST takes no data');
        else {
          this.optionReply(option, Reply.SERVER, serverReply(this.link.exported.name));
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
        this.optionReply(option, Reply.ERR_UNSUP, `option ${optionName(option)} is not supported`);
    }
    this.nextOption();
  }

  /**
   * Acknowledges STARTTLS and carries on over TLS: the next bytes are the client's TLS handshake,
   * and every option after it is encrypted. What was negotiated in the clear is forgotten.
   */
  private startTls(tls: NbdTls): void {
    this.optionReply(Option.STARTTLS, Reply.ACK);
    this.link.input.clear(); // a client sends nothing after STARTTLS before its handshake
    this.structured = false;
    this.allocationContext = false;
    this.secured = true;
    this.link.secure(
      new TLSSocket(this.link.socket, {
        isServer: true,
        secureContext: tls.context,
        requestCert: tls.verifyPeer,
        rejectUnauthorized: tls.verifyPeer,
        ...(tls.keys ? { pskCallback: (_socket: TLSSocket, identity: string) => tls.keys!.get(identity) ?? null } : {}),
      } as ConstructorParameters<typeof TLSSocket>[1]),
    );
    this.nextOption();
  }

  private exportName(data: Buffer): void {
    if (!this.knows(data.toString('utf8'))) return this.link.hangUp(`no export named ${JSON.stringify(data.toString('utf8'))}`);
    this.link.socket.write(exportNameReply(this.link.exported.attributes.size, this.transmissionFlags(), this.noZeroes));
    this.transmit();
  }

  private transmit(): void {
    this.link.transmit({ structured: this.structured, allocationContext: this.allocationContext });
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
    this.optionReply(option, Reply.INFO, exportInfo(this.link.exported.attributes.size, this.transmissionFlags()));
    // Block sizes are always sent: they are the constraints the request layer checks.
    const { logicalBlockSize, physicalBlockSize } = this.link.exported.attributes;
    this.optionReply(option, Reply.INFO, blockSizeInfo(logicalBlockSize, Math.max(physicalBlockSize, 4096), MAX_PAYLOAD));
    for (const type of parsed.requests) {
      if (type === Info.NAME) this.optionReply(option, Reply.INFO, infoString(Info.NAME, this.link.exported.name));
      if (type === Info.DESCRIPTION && this.link.exported.description) {
        this.optionReply(option, Reply.INFO, infoString(Info.DESCRIPTION, this.link.exported.description));
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
    if (wanted) this.optionReply(option, Reply.META_CONTEXT, metaContextReply(BASE_ALLOCATION_ID, BASE_ALLOCATION));
    this.optionReply(option, Reply.ACK);
  }

  private knows(name: string): boolean {
    return name === '' || name === this.link.exported.name;
  }

  private transmissionFlags(): number {
    return transmissionFlags(this.link.exported, this.structured);
  }

  private optionReply(option: number, type: number, data: Buffer | string = Buffer.alloc(0)): void {
    this.link.socket.write(optionReply(option, type, typeof data === 'string' ? Buffer.from(data) : data));
  }
}
