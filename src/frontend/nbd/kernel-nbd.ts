/**
 * The kernel NBD frontend: the kernel's own NBD client (nbd.ko) is the block device, /dev/nbdN,
 * and the driver process is its server, over a socket pair whose other end the kernel holds.
 * Requests are decoded and answered by the same NBD connection code as an export (without the
 * handshake: netlink tells the kernel the size and flags), through the same request layer.
 *
 * Where the device outlives its driver: the kernel holds it. The daemon keeps a duplicate of our
 * end of the socket, so a hand-over passes the very same stream to the next driver, with the
 * bytes we read but did not parse (in RUN_DIR/nbd/<id>.unread). If the driver dies, the daemon
 * closes that duplicate: the kernel sees the socket die, holds new requests for the
 * dead-connection timeout, re-queues those in flight once they time out, and sends them all
 * down the socket the next driver gives it with a netlink reconfigure.
 */
import { closeSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { EffectiveAttributes } from '../../driver/attributes.js';
import { native } from '../../native.js';
import { MessageInput } from '../../nbd/input.js';
import { Connection, readingSocket, transmissionFlags } from '../../nbd/server.js';
import { RUN_DIR } from '../../util/paths.js';
import type { Frontend, FrontendOptions, KernelDevice } from '../frontend.js';
import { backendOf, nbdConnect, nbdDisconnect, nbdIndexOf, nbdReconfigure } from './netlink.js';


/** Where a driver handing over leaves the bytes it read but did not parse. */
export function unreadPath(id: bigint | string): string {
  return `${RUN_DIR}/nbd/${id}.unread`;
}

/**
 * How long the kernel lets a request run before it re-queues it and takes the socket for dead:
 * longer than the request layer's own timeout, so that a live driver always answers first (with
 * ETIMEDOUT) and only a dead or stuck one loses its socket.
 */
export function kernelTimeouts(attributes: EffectiveAttributes): { timeout: number; deadConnTimeout: number } {
  const timeout = Math.ceil((attributes.requestTimeout * 1.25) / 1000) + 1;
  // While no driver serves a recoverable device, its requests wait about as long as the FUSE
  // keeper holds them; any other device's requests fail at once.
  return { timeout, deadConnTimeout: attributes.recoverable ? timeout : 0 };
}

export class KernelNbdFrontend implements Frontend {
  readonly name = 'nbd';
  readonly ended: Promise<Error | undefined>;
  private endWith!: (error: Error | undefined) => void;
  private socket: Socket | undefined;
  private connection: Connection | undefined;
  private index = -1;
  private fd = -1;
  private reading = true;
  /** What the connection read but did not parse when it stopped at a message boundary (detach): the next driver's. */
  private unread: Buffer | undefined;
  private stopping = false;

  constructor(private readonly options: FrontendOptions) {
    this.ended = new Promise((resolve) => (this.endWith = resolve));
  }

  get kernelFd(): number {
    return this.fd;
  }

  modes(): readonly string[] {
    return [];
  }

  async start(): Promise<KernelDevice> {
    const { attributes } = this.options;
    await this.serveNewSocket(async (socket) => {
      this.index = await nbdConnect({
        socket,
        sizeBytes: attributes.size,
        blockSize: attributes.logicalBlockSize,
        serverFlags: transmissionFlags(this.options, false),
        ...kernelTimeouts(attributes),
        backend: backendOf(this.options.id),
      });
    });
    return this.kernelDevice();
  }

  /**
   * Serves a device another driver served until now: through `fd`, its socket (a hand-over,
   * with the bytes it read but did not parse), or, with -1 (that driver died), through a new
   * socket the kernel is given now.
   */
  async adopt(fd: number, kernel: KernelDevice): Promise<void> {
    this.index = nbdIndexOf(kernel.path);
    const unread = unreadPath(this.options.id);
    if (fd >= 0) {
      let bytes: Buffer | undefined;
      try {
        bytes = readFileSync(unread);
        rmSync(unread, { force: true });
      } catch {
        // nothing was left unread
      }
      this.serve(fd, bytes);
      return;
    }
    rmSync(unread, { force: true }); // from a driver that handed over and then died
    await this.serveNewSocket((socket) =>
      nbdReconfigure(this.index, { socket, ...kernelTimeouts(this.options.attributes), backend: backendOf(this.options.id) }),
    );
  }

  /** Makes a socket pair, has `give` hand the kernel its end, and serves ours. */
  private async serveNewSocket(give: (kernelEnd: number) => Promise<void>): Promise<void> {
    const [ours, theirs] = native.socketPair();
    try {
      await give(theirs);
    } catch (error) {
      closeSync(ours);
      throw error;
    } finally {
      closeSync(theirs); // the kernel holds its own reference
    }
    this.serve(ours, undefined);
  }

  private serve(fd: number, unread: Buffer | undefined): void {
    this.fd = fd;
    const input = new MessageInput();
    const socket = readingSocket(fd, input, () => this.reading || (this.connection?.midMessage ?? false));
    this.socket = socket;
    const connection = new Connection(socket, { name: '', description: '', ...this.options }, { kernel: true, unread, input, fd });
    this.connection = connection;
    socket.on('close', () => {
      if (this.reading && !this.stopping) this.endWith(new Error(`the kernel ended the NBD connection of ${this.path}`));
    });
  }

  private get path(): string {
    return `/dev/nbd${this.index}`;
  }

  private kernelDevice(): KernelDevice {
    const { rdev } = statSync(this.path);
    // Linux's new_encode_dev: minor in bits 0-7 and 20-31, major in bits 8-19.
    return { path: this.path, major: (rdev >> 8) & 0xfff, minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00) };
  }

  async detach(): Promise<void> {
    // The socket stops at a message boundary: reading() keeps it reading while a write's payload
    // is still arriving, and the connection takes nothing after it.
    this.reading = false;
    this.unread = await this.connection?.stopReading();
    this.socket?.pause();
  }

  async release(): Promise<void> {
    const { socket, connection } = this;
    if (!socket || !connection) return;
    if (!this.unread) await this.detach();
    await connection.flushed();
    const unread = this.unread!;
    if (unread.length) {
      mkdirSync(`${RUN_DIR}/nbd`, { recursive: true, mode: 0o700 });
      writeFileSync(unreadPath(this.options.id), unread, { mode: 0o600 });
    }
    // Closes our descriptor only: the socket lives on in the daemon's duplicate.
    socket.destroy();
    this.socket = undefined;
  }

  async abandon(): Promise<void> {
    this.reading = false;
    this.connection?.mute();
    this.options.requests.abortAll();
    this.socket?.destroy();
    this.socket = undefined;
  }

  /** The kernel takes the new size at once (netlink reconfigure, Linux 5.3 and later). */
  async resize(size: number): Promise<void> {
    await nbdReconfigure(this.index, { sizeBytes: size, backend: backendOf(this.options.id) });
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    // The kernel sends NBD_CMD_DISC and fails what it still waits for with EIO.
    if (this.index >= 0) await nbdDisconnect(this.index).catch((error: Error) => this.options.log(error.message));
    this.socket?.destroy();
    this.socket = undefined;
    this.endWith(undefined);
  }
}
