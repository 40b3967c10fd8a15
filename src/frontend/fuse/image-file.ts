/**
 * The one-file filesystem's answers about its file, the device image: attributes, open, statfs
 * and the requests that need no work. Shared by the frontend (in the driver process) and the
 * keeper (in the daemon, while no driver is attached), so the image looks the same to the
 * kernel whoever answers.
 */
import { constants as fsConstants } from 'node:fs';
import { constants } from 'node:os';
import type { Slot } from './slot.js';
import { Attr, AttrOut, InHeader, Opcode, OpenFlag, OpenOut, OutHeader, S_IFREG, StatfsOut } from './protocol.js';

const { ENOENT, ENOSYS, EROFS } = constants.errno;
/** Attributes change only on a resize, which tells the kernel to forget them: let it cache them for a day. */
const ATTR_VALID_SECONDS = 86400;
const OUT = OutHeader.SIZE;

export interface ImageFile {
  readonly size: number;
  readonly physicalBlockSize: number;
  readonly readOnly: boolean;
}

export function readU64(buffer: Buffer, offset: number): number {
  return buffer.readUInt32LE(offset) + buffer.readUInt32LE(offset + 4) * 0x1_0000_0000;
}

export function writeU64(buffer: Buffer, offset: number, value: number): void {
  buffer.writeUInt32LE(value % 0x1_0000_0000, offset);
  buffer.writeUInt32LE(Math.floor(value / 0x1_0000_0000), offset + 4);
}

/** Answers every request that is not I/O or INIT. */
export function answerFileRequest(slot: Slot, opcode: number, image: ImageFile): void {
  switch (opcode) {
    case Opcode.GETATTR:
    case Opcode.SETATTR: // nothing about the image can change; answer with what it is
      return replyAttr(slot, image);
    case Opcode.OPEN:
      return open(slot, image);
    case Opcode.STATFS:
      return statfs(slot, image);
    case Opcode.FLUSH:
    case Opcode.RELEASE:
    case Opcode.ACCESS:
    case Opcode.SYNCFS:
    case Opcode.DESTROY:
      return slot.done(0);
    case Opcode.FORGET:
    case Opcode.BATCH_FORGET:
    case Opcode.INTERRUPT: // we never abandon a request half-way; the reply will come
      return slot.drop();
    case Opcode.LOOKUP: // the root is the image file: it has no children
      return slot.done(ENOENT);
    default:
      // ENOSYS makes the kernel stop asking (GETXATTR, LSEEK, STATX, IOCTL, ...).
      return slot.done(ENOSYS);
  }
}

function replyAttr(slot: Slot, { size, physicalBlockSize, readOnly }: ImageFile): void {
  const buf = slot.buffer;
  const attr = OUT + AttrOut.attr;
  buf.fill(0, OUT, OUT + AttrOut.SIZE);
  writeU64(buf, OUT + AttrOut.attrValid, ATTR_VALID_SECONDS);
  writeU64(buf, attr + Attr.ino, 1);
  writeU64(buf, attr + Attr.size, size);
  writeU64(buf, attr + Attr.blocks, Math.ceil(size / 512));
  buf.writeUInt32LE(S_IFREG | (readOnly ? 0o444 : 0o644), attr + Attr.mode);
  buf.writeUInt32LE(1, attr + Attr.nlink);
  buf.writeUInt32LE(physicalBlockSize, attr + Attr.blksize);
  slot.ok(OUT + AttrOut.SIZE);
}

function open(slot: Slot, image: ImageFile): void {
  const buf = slot.buffer;
  const accessMode = buf.readUInt32LE(InHeader.SIZE) & 3;
  if (image.readOnly && accessMode !== fsConstants.O_RDONLY) return slot.done(EROFS);
  buf.fill(0, OUT, OUT + OpenOut.SIZE);
  buf.writeUInt32LE(OpenFlag.KEEP_CACHE | OpenFlag.NOFLUSH | OpenFlag.PARALLEL_DIRECT_WRITES, OUT + OpenOut.openFlags);
  slot.ok(OUT + OpenOut.SIZE);
}

/** Loop takes its discard granularity from f_bsize. */
function statfs(slot: Slot, { size, physicalBlockSize }: ImageFile): void {
  const buf = slot.buffer;
  buf.fill(0, OUT, OUT + StatfsOut.SIZE);
  writeU64(buf, OUT + StatfsOut.blocks, size / physicalBlockSize);
  writeU64(buf, OUT + StatfsOut.files, 1);
  buf.writeUInt32LE(physicalBlockSize, OUT + StatfsOut.bsize);
  buf.writeUInt32LE(255, OUT + StatfsOut.namelen);
  buf.writeUInt32LE(physicalBlockSize, OUT + StatfsOut.frsize);
  slot.ok(OUT + StatfsOut.SIZE);
}
