/**
 * One request's buffer with its continuations created once, so that answering a request
 * allocates nothing but the callback's promise. Data views are cached per size.
 */
import { constants } from 'node:os';
import { EXPIRED, IDLE, type TimedRequest } from '../../request/request-timer.js';
import type { RestartTable } from '../../request/restart-table.js';
import type { FuseChannel } from './channel.js';
import { InHeader, OutHeader, WriteIn, WriteOut } from './protocol.js';

const { ETIMEDOUT } = constants.errno;
export const BODY = InHeader.SIZE;
export const WRITE_DATA = BODY + WriteIn.SIZE;

export class Slot implements TimedRequest {
  size = 0;
  startedAt = IDLE;
  /** The request's entry in the restart table while it holds a re-sent request, else -1. */
  entry = -1;
  private readView: Buffer | undefined;
  private writeView: Buffer | undefined;

  constructor(
    readonly buffer: Buffer,
    private readonly channel: FuseChannel<Slot>,
    /** Where a timeout reply is built: the slot's own buffer may still be the callback's. */
    private readonly expiryReply: Buffer,
    private readonly restarts: RestartTable | undefined,
  ) {}

  expire(): void {
    this.answered();
    this.buffer.copy(this.expiryReply, OutHeader.unique, OutHeader.unique, OutHeader.SIZE);
    this.channel.replyErrno(this.expiryReply, ETIMEDOUT);
  }

  /** Whether the request still wants an answer; an expired one only gives its slot back. */
  private answerable(): boolean {
    const expired = this.startedAt === EXPIRED;
    this.startedAt = IDLE;
    if (expired) this.channel.release(this);
    else this.answered();
    return !expired;
  }

  private answered(): void {
    if (this.entry >= 0) this.restarts!.clear(this.entry);
    this.entry = -1;
  }

  readData(size: number): Buffer {
    if (this.readView?.length !== size) this.readView = this.buffer.subarray(OutHeader.SIZE, OutHeader.SIZE + size);
    return this.readView;
  }

  writeData(size: number): Buffer {
    if (this.writeView?.length !== size) this.writeView = this.buffer.subarray(WRITE_DATA, WRITE_DATA + size);
    return this.writeView;
  }

  /** Replies success with the `length` bytes built in the buffer (header included). */
  ok(length: number): void {
    this.buffer.writeInt32LE(0, OutHeader.error);
    this.channel.reply(this.buffer, length);
    this.channel.release(this);
  }

  readonly readDone = (errno: number): void => {
    if (!this.answerable()) return;
    if (errno !== 0) return this.done(errno);
    this.ok(OutHeader.SIZE + this.size);
  };

  readonly writeDone = (errno: number): void => {
    if (!this.answerable()) return;
    if (errno !== 0) return this.done(errno);
    this.buffer.writeUInt32LE(this.size, OutHeader.SIZE + WriteOut.size);
    this.buffer.writeUInt32LE(0, OutHeader.SIZE + 4);
    this.ok(OutHeader.SIZE + WriteOut.SIZE);
  };

  readonly done = (errno: number): void => {
    if (!this.answerable()) return;
    this.channel.replyErrno(this.buffer, errno);
    this.channel.release(this);
  };

  /** Gives the slot back without answering: its request stays with the kernel. */
  drop(): void {
    this.startedAt = IDLE;
    this.entry = -1;
    this.channel.release(this);
  }
}
