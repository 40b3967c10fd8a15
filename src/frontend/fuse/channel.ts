/**
 * One open /dev/fuse file: reading requests and writing replies.
 *
 * Reads are decoupled from handling: `readers` reads are always outstanding (each blocks one
 * libuv pool thread inside the kernel), and a completed read is re-armed at once with another
 * buffer from the pool while the request it brought is handled. A slow callback therefore never
 * stops new requests from being read. Buffers are reused: the handler owns a buffer from delivery
 * until it calls release(); the reply is built in the same buffer, so a request costs no
 * allocation and no copy here.
 *
 * Replies are written synchronously: a write to /dev/fuse never blocks, and an async write could
 * queue behind the pool threads blocked in reads.
 */
import { read, writeSync } from 'node:fs';
import { InHeader, OutHeader } from './protocol.js';

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

export class FuseChannel<S extends ChannelSlot> {
  /** Reads outstanding right now. */
  readersRunning = 0;
  /** Set when this process must not answer anything any more (it is giving the device up). */
  muted = false;
  private readonly pool: S[] = [];
  private stopped = false;
  private resolveEnded!: (error: Error | undefined) => void;
  /** Resolves when every reader has stopped: undefined after unmount/abort (ENODEV), else the error. */
  readonly ended = new Promise<Error | undefined>((resolve) => (this.resolveEnded = resolve));

  constructor(
    readonly fd: number,
    private readonly newSlot: (channel: FuseChannel<S>) => S,
    private readonly handler: (slot: S, length: number) => void,
  ) {}

  start(readers: number): void {
    for (let i = 0; i < readers; i++) {
      this.readersRunning++;
      this.arm(this.take());
    }
  }

  /** Gives a slot back once its request is answered (or dropped). */
  release(slot: S): void {
    this.pool.push(slot);
  }

  /** Writes the reply held in the first `length` bytes of `buffer`. */
  reply(buffer: Buffer, length: number): void {
    if (this.muted) return;
    buffer.writeUInt32LE(length, OutHeader.len);
    try {
      writeSync(this.fd, buffer, 0, length);
    } catch (error) {
      // ENOENT: the request is gone (interrupted or the connection was aborted); ENODEV: the
      // connection is gone. Either way nobody waits for this reply any more.
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENODEV' && code !== 'ECONNABORTED') throw error;
    }
  }

  /** Replies with only a header carrying `errno` (0 for success). */
  replyErrno(buffer: Buffer, errno: number): void {
    buffer.writeInt32LE(-errno, OutHeader.error);
    this.reply(buffer, OutHeader.SIZE);
  }

  /** Stops re-arming reads; outstanding reads end when the connection ends. */
  stop(): void {
    this.stopped = true;
  }

  /**
   * Stops reading while the connection lives on for another reader, and resolves once every
   * outstanding read has returned. A read blocked in the kernel returns only with a request, so
   * `poke` makes one per reader (a statfs of the mount): each reader gets a request (ours or a
   * client's) and does not read again. Extra pokes are answered by the next reader.
   */
  async stopReading(poke: () => Promise<unknown>): Promise<void> {
    this.stopped = true;
    for (let i = 0; i < this.readersRunning; i++) void poke().catch(() => undefined);
    await this.ended;
  }

  /**
   * Has the kernel send again every request read from this connection but not answered (by
   * any reader, live or dead): they come back with bit 63 of their unique id set.
   */
  resend(): void {
    const notify = Buffer.alloc(OutHeader.SIZE);
    notify.writeInt32LE(NOTIFY_RESEND, OutHeader.error);
    this.reply(notify, OutHeader.SIZE);
  }

  private take(): S {
    return this.pool.pop() ?? this.newSlot(this);
  }

  private arm(slot: S): void {
    const buffer = slot.buffer;
    read(this.fd, buffer, 0, buffer.length, null, (error, length) => {
      if (error) return this.readFailed(slot, error);
      if (!this.stopped) this.arm(this.take());
      else this.readerDone(undefined);
      if (length >= InHeader.SIZE) this.handler(slot, length);
      else this.release(slot);
    });
  }

  private readFailed(slot: S, error: NodeJS.ErrnoException): void {
    switch (error.code) {
      case 'ENOENT': // the request was interrupted before we read it
      case 'EINTR':
      case 'EAGAIN':
        if (!this.stopped) return this.arm(slot);
        break;
      case 'ENODEV': // unmounted or aborted: the normal end
        this.release(slot);
        return this.readerDone(undefined);
    }
    this.release(slot);
    this.readerDone(this.stopped ? undefined : error);
  }

  private readerDone(error: Error | undefined): void {
    this.stopped = true;
    if (--this.readersRunning === 0 || error) this.resolveEnded(error);
  }
}
