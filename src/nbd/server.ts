/**
 * An NBD server for one export served by one driver instance: it listens, accepts, and keeps
 * its connections (connection.ts), each with its handshake (handshake.ts) and transmission
 * (transmission.ts); other connections never notice one going wrong.
 */
import { createServer, Socket, type Server, type SocketConstructorOpts } from 'node:net';
import { rmSync } from 'node:fs';
import { native } from '../native.js';
import { Connection } from './connection.js';
import type { ListenAddress, NbdExport } from './export-spec.js';
import { MessageInput, readsInto } from './input.js';

export { Connection, type ConnectionOptions } from './connection.js';
export { MAX_PAYLOAD, transmissionFlags, type ListenAddress, type NbdExport, type NbdTls } from './export-spec.js';

/**
 * Where accepted connections are served, for an export with lanes (src/nbd/lane.ts): each in
 * turn by one thread, this one being lane 0.
 */
export interface ConnectionSpread {
  /** The lane the next accepted connection goes to (0: this thread). */
  next(): number;
  /** Hands an accepted connection's descriptor to lane `lane`, whose it is from now on. */
  deliver(lane: number, fd: number): void;
  /** Connections the other lanes serve right now (for maxConnections). */
  elsewhere(): number;
}

export class NbdServer {
  private server: Server | undefined;
  private readonly connections = new Set<Connection>();

  constructor(
    private readonly exported: NbdExport,
    private readonly spread?: ConnectionSpread,
  ) {}

  /** Starts listening; resolves with the address actually bound (the port, if 0 was asked). */
  async listen(address: ListenAddress): Promise<ListenAddress> {
    // Paused: a connection without TLS moves to a socket reading into our buffers (ownSocket).
    const server = createServer({ pauseOnConnect: true }, (accepted) => {
      const refusal = this.refusal(accepted);
      if (refusal) {
        this.exported.log(`nbd: refused a connection from ${accepted.remoteAddress ?? 'a Unix socket'}: ${refusal}`);
        accepted.destroy();
        return;
      }
      const fd = ownDescriptor(accepted);
      const lane = fd >= 0 ? (this.spread?.next() ?? 0) : 0;
      if (lane > 0) return this.spread!.deliver(lane, fd);
      const onClose = () => this.connections.delete(connection);
      let connection: Connection;
      if (fd >= 0) {
        connection = connectionOn(fd, this.exported, onClose);
      } else {
        connection = new Connection(accepted, this.exported, { onClose });
        accepted.resume();
      }
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

  /** Why a new connection is not served, if it is not (limits.ts); a Unix socket's clients are its file permissions' business. */
  private refusal(accepted: Socket): string | undefined {
    const limits = this.exported.limits;
    if (!limits) return undefined;
    const address = accepted.remoteAddress;
    if (limits.allow && address !== undefined && !limits.allow.allows(address)) return `not in the allowed clients (${limits.allow.text})`;
    if (this.connections.size + (this.spread?.elsewhere() ?? 0) >= limits.maxConnections) return `${limits.maxConnections} connections are open, the limit`;
    return undefined;
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

/** A Unix socket's send buffer: room for a few 1 MiB replies at once (see growUnixSendBuffer). */
const SEND_BUFFER = 4 << 20;

/**
 * A connection of `exported` on an accepted descriptor, this thread's from now on (an export's
 * lane serves one so: src/nbd/lane.ts). Without TLS its socket reads into the connection's own
 * buffers (net.Socket's `onread`, which a server's sockets cannot be given); with TLS, whose
 * socket takes the bytes as they come, a plain socket.
 */
export function connectionOn(fd: number, exported: NbdExport, onClose: () => void): Connection {
  if (exported.tls) return new Connection(new Socket({ fd, readable: true, writable: true }), exported, { onClose });
  const input = new MessageInput();
  return new Connection(readingSocket(fd, input, () => true), exported, { onClose, input, fd });
}

/**
 * A duplicate of the accepted connection's descriptor, the accepted socket closed (it has read
 * nothing: the server pauses on connect), or -1 where Node does not show the descriptor (then
 * the accepted socket is used as it is).
 */
function ownDescriptor(accepted: Socket): number {
  const fd = (accepted as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return -1;
  const copy = native.dup(fd);
  accepted.destroy(); // closes its descriptor only: the connection lives on in the copy
  return copy;
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
    onread: readsInto(input, reading),
  } as SocketConstructorOpts);
}
