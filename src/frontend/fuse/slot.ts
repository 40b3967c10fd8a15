/**
 * One FUSE request's buffer, and its exchange with the request layer: made once and reused, so
 * that answering a request allocates nothing but the callback's promise. Data views are cached
 * per size.
 */
import { Exchange } from '../../request/exchange.js';
import type { RestartTable } from './restart-table.js';
import type { FuseChannel } from './channel.js';
import { InHeader, OutHeader, WriteIn, WriteOut } from './protocol.js';

export const BODY = InHeader.SIZE;
export const WRITE_DATA = BODY + WriteIn.SIZE;

/** How a request's success is encoded. */
export const enum Reply {
  /** The header alone. */
  STATUS,
  /** The header and `size` bytes read into the buffer. */
  READ,
  /** struct fuse_write_out: `size` bytes written. */
  WRITE,
}

export class Slot extends Exchange {
  size = 0;
  reply = Reply.STATUS;
  /** The request's entry in the restart table while it holds a re-sent request, else -1. */
  entry = -1;
  private readView: Buffer | undefined;
  private writeView: Buffer | undefined;

  constructor(
    readonly buffer: Buffer,
    private readonly channel: FuseChannel<Slot>,
    /** Where a timeout reply is built: the slot's own buffer may still be the callback's. */
    private readonly expiryReply: Buffer,
    private readonly restartTable: RestartTable | undefined,
  ) {
    super();
    this.takesOwnData = true;
  }

  readData(size: number): Buffer {
    if (this.readView?.length !== size) this.readView = this.buffer.subarray(OutHeader.SIZE, OutHeader.SIZE + size);
    return this.readView;
  }

  writeData(size: number): Buffer {
    if (this.writeView?.length !== size) this.writeView = this.buffer.subarray(WRITE_DATA, WRITE_DATA + size);
    return this.writeView;
  }

  answer(errno: number): void {
    if (this.entry >= 0) this.restartTable!.clear(this.entry);
    this.entry = -1;
    if (this.timedOut) {
      this.buffer.copy(this.expiryReply, OutHeader.unique, OutHeader.unique, OutHeader.SIZE);
      return this.channel.replyErrno(this.expiryReply, errno);
    }
    if (errno !== 0 || this.reply === Reply.STATUS) return this.channel.sendErrno(this.buffer, errno);
    this.buffer.writeInt32LE(0, OutHeader.error);
    if (this.reply === Reply.READ) {
      const data = this.ownData;
      if (!data) return this.channel.send(this.buffer, OutHeader.SIZE + this.size);
      this.ownData = undefined;
      return this.channel.sendGather(this.buffer, data);
    }
    this.buffer.writeUInt32LE(this.size, OutHeader.SIZE + WriteOut.size);
    this.buffer.writeUInt32LE(0, OutHeader.SIZE + 4);
    this.channel.send(this.buffer, OutHeader.SIZE + WriteOut.SIZE);
  }

  finish(): void {
    this.channel.release(this);
  }

  /** Answers at once, without the request layer (a request the frontend itself settles). */
  done(errno: number): void {
    this.answer(errno);
    this.finish();
  }

  /** Replies success with the `length` bytes built in the buffer (header included). */
  ok(length: number): void {
    this.buffer.writeInt32LE(0, OutHeader.error);
    // At once: INIT's reply must have reached the kernel before a FUSE ring registers (EAGAIN).
    this.channel.reply(this.buffer, length);
    this.channel.release(this);
  }

  /** Gives the slot back without answering: its request stays with the kernel. */
  drop(): void {
    this.entry = -1;
    this.channel.release(this);
  }
}
