/**
 * Where a FUSE request enters the request layer: decodes one /dev/fuse message and starts its
 * request (the slot's continuation encodes the reply in the same buffer). Shared by the
 * frontend's own reader (fuse-loop.ts) and its lanes' readers (lane.ts); INIT, which comes once
 * before any lane exists, is the frontend's.
 *
 * Kernel request -> FUSE message -> request layer:
 *   read                         READ                        read
 *   write                        WRITE                       write
 *   flush (fsync, journal, sync) FSYNC                       flush
 *   discard                      FALLOCATE(PUNCH_HOLE)       discard, zeroes (see RequestLayer.discard)
 *   write-zeroes, may unmap      FALLOCATE(PUNCH_HOLE)       discard, zeroes
 *   write-zeroes, no unmap       FALLOCATE(ZERO_RANGE)       writeZeros(mayUnmap=false)
 * Loop never sends FUA writes (it reports no FUA), secure erase, write-same or ioctls to the file.
 */
import { constants } from 'node:os';
import type { RequestLayer } from '../../request/request-layer.js';
import { answerFileRequest, readU64, type ImageFile } from './image-file.js';
import { FallocateIn, FallocateMode, InHeader, Opcode, ReadIn, WriteIn } from './protocol.js';
import { Holder, isResent, type RestartTable } from './restart-table.js';
import { BODY, Reply, WRITE_DATA, type Slot } from './slot.js';

const { EOPNOTSUPP, EPROTO } = constants.errno;

export class FuseDispatch {
  constructor(
    private readonly requests: RequestLayer,
    /** The image as the kernel sees it now (it changes on a resize). */
    private readonly image: () => ImageFile,
    /**
     * Where re-sent requests' restart counts are kept across driver deaths; none in a lane (its
     * lanes start once the main thread has read every re-sent request: FuseChannel.resend).
     */
    private readonly restarts: RestartTable | undefined,
    /** INIT: the frontend's alone. */
    private readonly init: (slot: Slot) => void,
  ) {}

  /** Decodes and starts one request; returns the bytes of data it moves (FuseChannel bounds batches by them). */
  readonly handle = (slot: Slot, length: number): number => {
    const buf = slot.buffer;
    const opcode = buf.readUInt32LE(InHeader.opcode);
    slot.reply = Reply.STATUS;
    slot.restarts = 0;
    switch (opcode) {
      case Opcode.READ: {
        if (isResent(buf, InHeader.unique)) this.countRestarts(slot);
        const size = buf.readUInt32LE(BODY + ReadIn.size);
        slot.size = size;
        slot.reply = Reply.READ;
        if (size === 0) slot.done(0);
        else this.requests.read(slot, slot.readData(size), readU64(buf, BODY + ReadIn.offset));
        return size;
      }
      case Opcode.WRITE: {
        if (isResent(buf, InHeader.unique)) this.countRestarts(slot);
        const size = buf.readUInt32LE(BODY + WriteIn.size);
        slot.size = size;
        slot.reply = Reply.WRITE;
        if (length < WRITE_DATA + size) slot.done(EPROTO);
        else if (size === 0) slot.done(0);
        else this.requests.write(slot, slot.writeData(size), readU64(buf, BODY + WriteIn.offset));
        return size;
      }
      case Opcode.FSYNC:
        if (isResent(buf, InHeader.unique)) this.countRestarts(slot);
        this.requests.flush(slot);
        return 0;
      case Opcode.FALLOCATE:
        if (isResent(buf, InHeader.unique)) this.countRestarts(slot);
        this.fallocate(slot);
        return 0;
      case Opcode.INIT:
        this.init(slot);
        return 0;
      default:
        answerFileRequest(slot, opcode, this.image());
        return 0;
    }
  };

  /**
   * A request the kernel sent again after a driver died holding it: its deaths are counted in
   * the restart table (which outlives drivers), and the request layer decides (restartLimit).
   */
  private countRestarts(slot: Slot): void {
    // A lane never should see one; if it does, one death at least, as for a request nobody recorded.
    if (!this.restarts) {
      slot.restarts = 1;
      return;
    }
    slot.entry = this.restarts.track(slot.buffer, InHeader.unique, Holder.DRIVER);
    slot.restarts = this.restarts.restarts;
  }

  private fallocate(slot: Slot): void {
    const buf = slot.buffer;
    const offset = readU64(buf, BODY + FallocateIn.offset);
    const length = readU64(buf, BODY + FallocateIn.length);
    const mode = buf.readUInt32LE(BODY + FallocateIn.mode);
    if (mode & ~(FallocateMode.KEEP_SIZE | FallocateMode.PUNCH_HOLE | FallocateMode.ZERO_RANGE)) return slot.done(EOPNOTSUPP);
    if (mode & FallocateMode.PUNCH_HOLE) {
      this.requests.discard(slot, offset, length, true);
    } else if (mode & FallocateMode.ZERO_RANGE) {
      this.requests.writeZeros(slot, offset, length, false);
    } else {
      // Plain preallocation: every block of the image already exists.
      slot.done(offset + length <= this.image().size ? 0 : EOPNOTSUPP);
    }
  }
}
