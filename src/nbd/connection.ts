/**
 * One client's NBD connection: its socket and input, its handshake (handshake.ts), then its
 * transmission (transmission.ts), and how it ends: a server shutdown (requests in progress are
 * answered first), a hand-over of a kernel NBD socket (stopReading), an abort (mute), or the
 * client going away.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { NbdExport } from './export-spec.js';
import { Handshake, type Negotiated } from './handshake.js';
import { MessageInput } from './input.js';
import { Transmission } from './transmission.js';

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
  /** The socket's file descriptor, where known: the connection spins on it briefly when idle. */
  fd?: number;
}

export class Connection {
  readonly input: MessageInput;
  readonly fd: number;
  ending = false;
  private transmission: Transmission | undefined;
  private onClose: (() => void) | undefined;
  private endWhenIdle: (() => void) | undefined;
  /** Ends a connection whose client has not finished its handshake in time (a deadline, not an idle timeout). */
  private handshakeDeadline: NodeJS.Timeout | undefined;

  constructor(
    public socket: Socket,
    readonly exported: NbdExport,
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
      this.transmit({ structured: false, allocationContext: false });
      return;
    }
    socket.setNoDelay(true);
    const limit = exported.limits?.handshakeTimeoutMs;
    if (limit !== undefined) {
      this.handshakeDeadline = setTimeout(() => this.hangUp(`the client did not finish its handshake within ${limit / 1000} s`), limit);
    }
    if (!options.input) socket.on('data', (chunk: Buffer) => this.push(chunk));
    new Handshake(this).start();
  }

  /** Ends the connection once the requests in progress are answered (server shutdown). */
  shutdown(): Promise<void> {
    this.ending = true;
    this.input.stop(); // no more requests are read
    const transmission = this.transmission;
    if (!transmission) {
      this.socket.destroy();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.endWhenIdle = () => {
        this.endWhenIdle = undefined;
        transmission.sendStatuses(); // gathered for the end of the turn, which comes after end()
        this.socket.end();
        resolve();
      };
      transmission.idle = () => this.endWhenIdle?.();
      if (transmission.inFlight === 0 || this.socket.destroyed) this.endWhenIdle();
    });
  }

  /**
   * Stops taking requests, at a message boundary, for a hand-over: those taken are still
   * answered. A write whose header was taken is received whole first (the socket reads on while
   * `midMessage`: its reading() says so); the next driver could not parse a payload cut from
   * its header. Resolves to the bytes read but not parsed (part of the next request), which
   * belong to whoever reads this socket next.
   */
  async stopReading(): Promise<Buffer> {
    this.ending = true;
    await this.transmission?.messageEnd();
    return this.input.takeUnread();
  }

  /** Between a write's header and the end of its payload. */
  get midMessage(): boolean {
    return this.transmission?.receiving ?? false;
  }

  /** Writes nothing more, however requests end (the driver aborted: the next one answers them). */
  mute(): void {
    if (this.transmission) this.transmission.muted = true;
    this.ending = true;
    this.input.stop();
  }

  /** Resolves once every reply written so far has left for the socket. */
  flushed(): Promise<void> {
    this.transmission?.sendStatuses();
    if (this.socket.destroyed || this.socket.writableLength === 0) return Promise.resolve();
    return new Promise((resolve) => this.socket.write(Buffer.alloc(0), () => resolve()));
  }

  /** Takes the socket's next bytes (a socket that does not read through readBuffer()). */
  push(chunk: Buffer): void {
    this.input.push(chunk);
  }

  hangUp(why: string): void {
    if (!this.socket.destroyed) this.exported.log(`nbd: closing a connection: ${why}`);
    this.socket.destroy();
  }

  // ---- For the handshake and transmission (HandshakeLink, TransmissionLink) ---------------------

  /** STARTTLS: what arrives in the clear is over; the TLS socket's data and end are ours now. */
  secure(secure: TLSSocket): void {
    const plain = this.socket;
    plain.removeAllListeners('data');
    this.socket = secure;
    secure.on('data', (chunk: Buffer) => this.push(chunk));
    secure.on('error', (error) => this.hangUp(`TLS: ${error.message}`));
    secure.on('close', () => this.closed());
  }

  transmit(negotiated: Negotiated): void {
    clearTimeout(this.handshakeDeadline);
    const transmission = new Transmission(this, negotiated);
    this.transmission = transmission;
    transmission.start();
  }

  disconnect(): void {
    void this.shutdown();
  }

  private closed(): void {
    clearTimeout(this.handshakeDeadline);
    this.transmission?.messageEnded(); // a payload cut short never comes
    this.endWhenIdle?.();
    this.onClose?.();
    this.onClose = undefined;
  }
}
