/**
 * The FUSE+loop frontend: a one-file FUSE filesystem whose file is the device image, spoken in
 * raw FUSE protocol on /dev/fuse (no libfuse), turned into a block device by a loop device with
 * direct I/O.
 *
 * Where a request enters: FuseChannel delivers each /dev/fuse message to `handle()`, which decodes
 * it and calls the request layer; the slot's continuation encodes the reply in the same buffer.
 *
 * Kernel request -> FUSE message -> request layer:
 *   read                         READ                        read
 *   write                        WRITE                       write
 *   flush (fsync, journal, sync) FSYNC                       flush
 *   discard                      FALLOCATE(PUNCH_HOLE)       zeroingDiscard (see RequestLayer)
 *   write-zeroes, may unmap      FALLOCATE(PUNCH_HOLE)       zeroingDiscard
 *   write-zeroes, no unmap       FALLOCATE(ZERO_RANGE)       writeZeros(mayUnmap=false)
 * Loop never sends FUA writes (it reports no FUA), secure erase, write-same or ioctls to the file.
 */
import { closeSync, constants as fsConstants, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import type { EffectiveAttributes } from '../../driver/attributes.js';
import type { Frontend, FrontendOptions, KernelDevice } from '../frontend.js';
import type { RequestLayer } from '../../request/request-layer.js';
import { EXPIRED, IDLE, type TimedRequest } from '../../request/request-timer.js';
import { execute } from '../../util/exec.js';
import { RUN_DIR } from '../../util/paths.js';
import { bufferSizeFor, FuseChannel } from './channel.js';
import {
  Attr,
  AttrOut,
  FallocateIn,
  FallocateMode,
  InHeader,
  InitFlag,
  InitIn,
  InitOut,
  KERNEL_MINOR_VERSION,
  KERNEL_VERSION,
  Opcode,
  OpenFlag,
  OpenOut,
  OutHeader,
  ReadIn,
  S_IFREG,
  StatfsOut,
  WriteIn,
  WriteOut,
} from './protocol.js';

const { ENOENT, ENOSYS, EROFS, EOPNOTSUPP, EPROTO, ETIMEDOUT } = constants.errno;

/** Largest READ/WRITE the kernel sends (max_write; reads follow max_pages). */
const MAX_WRITE = 1 << 20;
const MAX_PAGES = MAX_WRITE / 4096;
/** Requests the kernel keeps in flight to us; bounds the buffers we hold. */
const MAX_BACKGROUND = 256;
/** Attributes never change while mounted; let the kernel cache them for a day. */
const ATTR_VALID_SECONDS = 86400;
const BODY = InHeader.SIZE;
const WRITE_DATA = BODY + WriteIn.SIZE;

function readU64(buffer: Buffer, offset: number): number {
  return buffer.readUInt32LE(offset) + buffer.readUInt32LE(offset + 4) * 0x1_0000_0000;
}
function writeU64(buffer: Buffer, offset: number, value: number): void {
  buffer.writeUInt32LE(value % 0x1_0000_0000, offset);
  buffer.writeUInt32LE(Math.floor(value / 0x1_0000_0000), offset + 4);
}

/** How many reads stay outstanding on /dev/fuse: each blocks a libuv pool thread, so leave some. */
function readerCount(): number {
  const pool = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  return Math.max(1, Math.min(8, pool >> 1));
}

/**
 * One request's buffer with its continuations created once, so that answering a request
 * allocates nothing but the callback's promise. Data views are cached per size.
 */
class Slot implements TimedRequest {
  size = 0;
  startedAt = IDLE;
  private readView: Buffer | undefined;
  private writeView: Buffer | undefined;

  constructor(
    readonly buffer: Buffer,
    private readonly channel: FuseChannel<Slot>,
    /** Where a timeout reply is built: the slot's own buffer may still be the callback's. */
    private readonly expiryReply: Buffer,
  ) {}

  expire(): void {
    this.buffer.copy(this.expiryReply, OutHeader.unique, OutHeader.unique, OutHeader.SIZE);
    this.channel.replyErrno(this.expiryReply, ETIMEDOUT);
  }

  /** Whether the request still wants an answer; an expired one only gives its slot back. */
  private answerable(): boolean {
    const expired = this.startedAt === EXPIRED;
    this.startedAt = IDLE;
    if (expired) this.channel.release(this);
    return !expired;
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
}

export class FuseLoopFrontend implements Frontend {
  readonly name = 'fuse';
  readonly ended: Promise<Error | undefined>;

  private readonly requests: RequestLayer;
  /** Every slot ever made, for the request timer to look at. */
  private readonly slots: Slot[] = [];
  private readonly expiryReply = Buffer.alloc(OutHeader.SIZE);
  private readonly mountpoint: string;
  private fd = -1;
  private channel: FuseChannel<Slot> | undefined;
  private mounted = false;
  private loopPath: string | undefined;
  private initialized!: () => void;
  private readonly initDone = new Promise<void>((resolve) => (this.initialized = resolve));
  private stopping: Promise<void> | undefined;
  private resolveEnded!: (error: Error | undefined) => void;

  constructor(private readonly options: FrontendOptions) {
    this.requests = options.requests;
    this.mountpoint = mountpointOf(options.index);
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
  }

  async start(): Promise<KernelDevice> {
    const { attributes, readOnly, index } = this.options;
    mkdirSync(`${RUN_DIR}/fuse`, { recursive: true, mode: 0o700 });
    writeFileSync(this.mountpoint, '', { mode: 0o600 });
    this.fd = openSync('/dev/fuse', 'r+');
    const mountOptions = `fd=3,rootmode=${S_IFREG.toString(8)},user_id=0,group_id=0,allow_other`;
    await execute('mount', ['-i', '-t', 'fuse.bdus', '-o', mountOptions, `bdus-${index}`, this.mountpoint], {
      stdio: ['ignore', 'pipe', 'pipe', this.fd],
    });
    this.mounted = true;

    const newSlot = (c: FuseChannel<Slot>) => {
      const slot = new Slot(Buffer.allocUnsafeSlow(bufferSizeFor(MAX_WRITE)), c, this.expiryReply);
      this.slots.push(slot);
      return slot;
    };
    const channel = new FuseChannel<Slot>(this.fd, newSlot, (slot, length) => this.handle(slot, length));
    this.channel = channel;
    this.requests.timer.watch(this.slots);
    void channel.ended.then((error) => this.resolveEnded(error ?? (this.stopping ? undefined : new Error('FUSE connection ended'))));
    channel.start(readerCount());
    await withTimeout(this.initDone, 10_000, 'the kernel did not send FUSE INIT');

    const args = ['--find', '--show', '--direct-io=on', '--sector-size', String(attributes.logicalBlockSize)];
    if (!attributes.disablePartitionScanning) args.push('--partscan');
    if (readOnly) args.push('--read-only');
    this.loopPath = (await execute('losetup', [...args, this.mountpoint])).trim();
    const name = this.loopPath.replace('/dev/', '');
    if (readFileSync(`/sys/block/${name}/loop/dio`, 'utf8').trim() !== '1') {
      this.options.log(`warning: ${this.loopPath} runs without direct I/O; data is cached twice`);
    }
    const [major, minor] = readFileSync(`/sys/block/${name}/dev`, 'utf8').trim().split(':').map(Number) as [number, number];
    return { path: this.loopPath, major, minor };
  }

  stop(): Promise<void> {
    this.stopping ??= this.teardown();
    return this.stopping;
  }

  private async teardown(): Promise<void> {
    // Abort the FUSE connection first (umount -f): every request still pending in the kernel then
    // fails with EIO at once, so detaching the loop device cannot wait on an unanswered request.
    // -l detaches the mount even while the loop device still holds the image (a client has the
    // device open); loop then lets go when that client closes it (autoclear).
    const errors: unknown[] = [];
    if (this.mounted) await execute('umount', ['-f', '-l', this.mountpoint]).catch((e) => errors.push(e));
    if (this.loopPath) await execute('losetup', ['-d', this.loopPath]).catch((e) => errors.push(e));
    this.channel?.stop();
    if (this.channel) await withTimeout(this.channel.ended, 5_000, 'FUSE readers did not stop').catch((e) => errors.push(e));
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
    rmSync(this.mountpoint, { force: true });
    for (const e of errors) this.options.log(`teardown: ${(e as Error).message}`);
  }

  // ---- Request decoding -----------------------------------------------------------------------

  private handle(slot: Slot, length: number): void {
    const buf = slot.buffer;
    const opcode = buf.readUInt32LE(InHeader.opcode);
    switch (opcode) {
      case Opcode.READ: {
        slot.startedAt = this.requests.timer.now; // back to IDLE when answered
        const size = buf.readUInt32LE(BODY + ReadIn.size);
        slot.size = size;
        if (size === 0) return slot.readDone(0);
        void this.requests.read(slot.readData(size), readU64(buf, BODY + ReadIn.offset)).then(slot.readDone);
        return;
      }
      case Opcode.WRITE: {
        slot.startedAt = this.requests.timer.now;
        const size = buf.readUInt32LE(BODY + WriteIn.size);
        slot.size = size;
        if (length < WRITE_DATA + size) return slot.done(EPROTO);
        if (size === 0) return slot.writeDone(0);
        void this.requests.write(slot.writeData(size), readU64(buf, BODY + WriteIn.offset)).then(slot.writeDone);
        return;
      }
      case Opcode.FSYNC:
        slot.startedAt = this.requests.timer.now;
        void this.requests.flush().then(slot.done);
        return;
      case Opcode.FALLOCATE:
        slot.startedAt = this.requests.timer.now;
        return this.fallocate(slot);
      case Opcode.INIT:
        return this.init(slot);
      case Opcode.GETATTR:
      case Opcode.SETATTR: // nothing about the image can change; answer with what it is
        return this.replyAttr(slot);
      case Opcode.OPEN:
        return this.open(slot);
      case Opcode.STATFS:
        return this.statfs(slot);
      case Opcode.FLUSH:
      case Opcode.RELEASE:
      case Opcode.ACCESS:
      case Opcode.SYNCFS:
      case Opcode.DESTROY:
        return slot.done(0);
      case Opcode.FORGET:
      case Opcode.BATCH_FORGET:
      case Opcode.INTERRUPT: // we never abandon a request half-way; the reply will come
        return this.channel!.release(slot);
      case Opcode.LOOKUP: // the root is the image file: it has no children
        return slot.done(ENOENT);
      default:
        // ENOSYS makes the kernel stop asking (GETXATTR, LSEEK, STATX, IOCTL, ...).
        return slot.done(ENOSYS);
    }
  }

  private fallocate(slot: Slot): void {
    const buf = slot.buffer;
    const offset = readU64(buf, BODY + FallocateIn.offset);
    const length = readU64(buf, BODY + FallocateIn.length);
    const mode = buf.readUInt32LE(BODY + FallocateIn.mode);
    if (this.options.readOnly) return slot.done(EROFS);
    if (mode & ~(FallocateMode.KEEP_SIZE | FallocateMode.PUNCH_HOLE | FallocateMode.ZERO_RANGE)) return slot.done(EOPNOTSUPP);
    if (mode & FallocateMode.PUNCH_HOLE) {
      void this.requests.zeroingDiscard(offset, length).then(slot.done);
    } else if (mode & FallocateMode.ZERO_RANGE) {
      void this.requests.writeZeros(offset, length, false).then(slot.done);
    } else {
      // Plain preallocation: every block of the image already exists.
      slot.done(offset + length <= this.options.attributes.size ? 0 : EOPNOTSUPP);
    }
  }

  private init(slot: Slot): void {
    const buf = slot.buffer;
    const major = buf.readUInt32LE(BODY + InitIn.major);
    const minor = buf.readUInt32LE(BODY + InitIn.minor);
    const flags = buf.readUInt32LE(BODY + InitIn.flags);
    const maxReadahead = buf.readUInt32LE(BODY + InitIn.maxReadahead);
    if (major !== KERNEL_VERSION) return slot.done(EPROTO);
    const wanted = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.ASYNC_DIO | InitFlag.MAX_PAGES | InitFlag.ABORT_ERROR;
    const out = OutHeader.SIZE;
    buf.fill(0, out, out + InitOut.SIZE);
    buf.writeUInt32LE(KERNEL_VERSION, out + InitOut.major);
    buf.writeUInt32LE(Math.min(minor, KERNEL_MINOR_VERSION), out + InitOut.minor);
    buf.writeUInt32LE(maxReadahead, out + InitOut.maxReadahead);
    buf.writeUInt32LE((flags & wanted) >>> 0, out + InitOut.flags);
    buf.writeUInt16LE(MAX_BACKGROUND, out + InitOut.maxBackground);
    buf.writeUInt16LE((MAX_BACKGROUND * 3) / 4, out + InitOut.congestionThreshold);
    buf.writeUInt32LE(MAX_WRITE, out + InitOut.maxWrite);
    buf.writeUInt32LE(1, out + InitOut.timeGran);
    buf.writeUInt16LE(MAX_PAGES, out + InitOut.maxPages);
    slot.ok(out + InitOut.SIZE);
    this.initialized();
  }

  private replyAttr(slot: Slot): void {
    const buf = slot.buffer;
    const { size, physicalBlockSize } = this.options.attributes;
    const out = OutHeader.SIZE;
    const attr = out + AttrOut.attr;
    buf.fill(0, out, out + AttrOut.SIZE);
    writeU64(buf, out + AttrOut.attrValid, ATTR_VALID_SECONDS);
    writeU64(buf, attr + Attr.ino, 1);
    writeU64(buf, attr + Attr.size, size);
    writeU64(buf, attr + Attr.blocks, Math.ceil(size / 512));
    buf.writeUInt32LE(S_IFREG | (this.options.readOnly ? 0o444 : 0o644), attr + Attr.mode);
    buf.writeUInt32LE(1, attr + Attr.nlink);
    buf.writeUInt32LE(physicalBlockSize, attr + Attr.blksize);
    slot.ok(out + AttrOut.SIZE);
  }

  private open(slot: Slot): void {
    const buf = slot.buffer;
    const accessMode = buf.readUInt32LE(BODY) & 3;
    if (this.options.readOnly && accessMode !== fsConstants.O_RDONLY) return slot.done(EROFS);
    const out = OutHeader.SIZE;
    buf.fill(0, out, out + OpenOut.SIZE);
    buf.writeUInt32LE(OpenFlag.KEEP_CACHE | OpenFlag.NOFLUSH | OpenFlag.PARALLEL_DIRECT_WRITES, out + OpenOut.openFlags);
    slot.ok(out + OpenOut.SIZE);
  }

  private statfs(slot: Slot): void {
    // Loop takes its discard granularity from f_bsize.
    const buf = slot.buffer;
    const { size, physicalBlockSize } = this.options.attributes;
    const out = OutHeader.SIZE;
    buf.fill(0, out, out + StatfsOut.SIZE);
    writeU64(buf, out + StatfsOut.blocks, size / physicalBlockSize);
    writeU64(buf, out + StatfsOut.files, 1);
    buf.writeUInt32LE(physicalBlockSize, out + StatfsOut.bsize);
    buf.writeUInt32LE(255, out + StatfsOut.namelen);
    buf.writeUInt32LE(physicalBlockSize, out + StatfsOut.frsize);
    slot.ok(out + StatfsOut.SIZE);
  }
}

/**
 * What this frontend can show the kernel. Loop sets the physical block size to the logical one
 * (LOOP_CONFIGURE has one block size), so a larger physical block size is lowered to it: a hint
 * lost, never a guarantee broken (requests stay aligned to the logical block size).
 */
export function fuseLoopAttributes(attributes: EffectiveAttributes): EffectiveAttributes {
  if (attributes.physicalBlockSize === attributes.logicalBlockSize) return attributes;
  return Object.freeze({ ...attributes, physicalBlockSize: attributes.logicalBlockSize });
}

function mountpointOf(index: number): string {
  return `${RUN_DIR}/fuse/bdus-${index}`;
}

/**
 * Removes what a dead driver process of device `index` left in the kernel: its FUSE mount (the
 * connection is already aborted when its last holder died) and its loop device.
 */
export async function reclaimFuseLoop(index: number, kernelPath: string): Promise<void> {
  const mountpoint = mountpointOf(index);
  // Which loop device is ours is read before unmounting: a lazily unmounted image shows as "/".
  let backing = '';
  try {
    backing = readFileSync(`/sys/block/${kernelPath.replace('/dev/', '')}/loop/backing_file`, 'utf8').trim();
  } catch {
    // not bound any more
  }
  const mounted = readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mountpoint);
  if (mounted) await execute('umount', ['-f', '-l', mountpoint]).catch(() => undefined);
  if (kernelPath && backing.startsWith(mountpoint)) await execute('losetup', ['-d', kernelPath]).catch(() => undefined);
  rmSync(mountpoint, { force: true });
}

function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms))),
  ]).finally(() => clearTimeout(timer));
}
