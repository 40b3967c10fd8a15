/**
 * The daemon's stand-in for a missing driver on a FUSE+loop device. The daemon holds a duplicate
 * of every device's /dev/fuse file, so the FUSE connection (and with it the loop device and the
 * client's requests) outlives the driver. While a recoverable device has no driver, the keeper
 * reads the connection in the daemon:
 *
 * - requests about the image file get the answers the driver would give (image-file.ts);
 * - I/O requests are held until a driver attaches ('hold'), or failed with EIO at once
 *   ('fail-all'). A held request that was re-sent after too many driver deaths fails instead
 *   (restartLimitOf: with recoveryMode fail-received, one death is too many). A held request
 *   that waits a whole request timeout fails with ETIMEDOUT.
 *
 * Held requests are never answered here: when a driver attaches, the keeper stops reading and
 * the driver has the kernel send them again. The restart table records them as held by the
 * keeper, so the wait does not count as a driver death.
 */
import { constants } from 'node:os';
import { EXPIRED, IDLE, RequestTimer, type TimedRequest } from '../../request/request-timer.js';
import { restartLimitOf } from '../../driver/attributes.js';
import { Holder, isResent, type RestartTable } from './restart-table.js';
import { bufferSizeFor, FuseChannel } from './channel.js';
import { answerFileRequest, type ImageFile } from './image-file.js';
import { InHeader, Opcode, OutHeader } from './protocol.js';
import { Slot } from './slot.js';
import type { KeeperMode } from '../frontend.js';

const { EIO, ETIMEDOUT } = constants.errno;

/** Requests the kernel may send without any size (FSYNC, FALLOCATE) still need a full-size read buffer. */
const MAX_WRITE = 1 << 20;

export interface HeldDevice extends ImageFile {
  readonly index: number;
  readonly requestTimeout: number;
  readonly recoveryMode: string;
  readonly restartLimit: number;
}

/** A request held for the next driver: just its id, so that it can be timed out. */
class HeldRequest implements TimedRequest {
  startedAt = IDLE;
  entry = -1;
  private readonly reply = Buffer.alloc(OutHeader.SIZE);

  constructor(
    private readonly keeper: FuseKeeper,
    private readonly restarts: RestartTable,
  ) {}

  hold(request: Buffer, entry: number, now: number): void {
    request.copy(this.reply, OutHeader.unique, InHeader.unique, InHeader.unique + 8);
    this.entry = entry;
    this.startedAt = now;
  }

  expire(): void {
    this.restarts.clear(this.entry);
    this.keeper.answer(this.reply, ETIMEDOUT);
  }
}

export class FuseKeeper {
  private readonly held: HeldRequest[] = [];
  private readonly expiryReply = Buffer.alloc(OutHeader.SIZE);
  private channel: FuseChannel<Slot> | undefined;
  private timer: RequestTimer | undefined;
  private mode: KeeperMode = 'hold';

  constructor(
    /** The daemon's duplicate of the device's /dev/fuse file. */
    readonly fd: number,
    private readonly device: HeldDevice,
    private readonly restarts: RestartTable,
    private readonly log: (line: string) => void,
  ) {}

  /** Starts reading: the requests the dead driver left unanswered are sent again first. */
  start(mode: KeeperMode): void {
    this.mode = mode;
    this.restarts.begin(this.device.requestTimeout);
    const timer = new RequestTimer(this.device.requestTimeout, this.log);
    this.timer = timer;
    timer.watch(this.held);
    const channel = new FuseChannel<Slot>(
      this.fd,
      (c) => new Slot(Buffer.allocUnsafeSlow(bufferSizeFor(MAX_WRITE)), c, this.expiryReply, this.restarts),
      (slot) => {
        this.handle(slot);
        return 0; // nothing is answered here: no batch to bound
      },
    );
    this.channel = channel;
    void channel.ended.then((error) => error && this.log(`keeper: ${error.message}`));
    void channel.resend();
    channel.start();
  }

  /** Stops reading, for a driver that is about to attach; held requests stay with the kernel. */
  async stop(): Promise<void> {
    const channel = this.channel;
    if (!channel) return;
    this.channel = undefined;
    this.timer?.stop();
    for (const request of this.held) request.startedAt = IDLE;
    channel.stop();
  }

  /** Stops at once (the device is being removed: its connection is about to be aborted). */
  close(): void {
    this.channel?.stop();
    this.channel = undefined;
    this.timer?.stop();
  }

  /** @internal a reply with only a header carrying `errno`. */
  answer(header: Buffer, errno: number): void {
    this.channel?.replyErrno(header, errno);
  }

  private handle(slot: Slot): void {
    const buf = slot.buffer;
    const opcode = buf.readUInt32LE(InHeader.opcode);
    switch (opcode) {
      case Opcode.READ:
      case Opcode.WRITE:
      case Opcode.FSYNC:
      case Opcode.FALLOCATE:
        return this.io(slot);
      default:
        return answerFileRequest(slot, opcode, this.device);
    }
  }

  private io(slot: Slot): void {
    if (this.mode === 'fail-all') return slot.done(EIO);
    const buf = slot.buffer;
    const entry = this.restarts.track(buf, InHeader.unique, Holder.KEEPER);
    const restarts = this.restarts.restarts;
    if (isResent(buf, InHeader.unique) && restarts >= restartLimitOf(this.device)) {
      this.restarts.clear(entry);
      return slot.done(EIO);
    }
    let request = this.held.find((r) => r.startedAt === IDLE || r.startedAt === EXPIRED);
    if (!request) this.held.push((request = new HeldRequest(this, this.restarts)));
    request.hold(buf, entry, this.timer!.now);
    slot.drop();
  }
}
