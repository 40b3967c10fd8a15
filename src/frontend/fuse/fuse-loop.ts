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
 *   discard                      FALLOCATE(PUNCH_HOLE)       discard, zeroes (see RequestLayer.discard)
 *   write-zeroes, may unmap      FALLOCATE(PUNCH_HOLE)       discard, zeroes
 *   write-zeroes, no unmap       FALLOCATE(ZERO_RANGE)       writeZeros(mayUnmap=false)
 * Loop never sends FUA writes (it reports no FUA), secure erase, write-same or ioctls to the file.
 */
import { closeSync, promises as fsp, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import type { Frontend, FrontendOptions, KernelDevice } from '../frontend.js';
import type { RequestLayer } from '../../request/request-layer.js';
import { Holder, isResent, type RestartTable } from './restart-table.js';
import { native } from '../../native.js';
import { execute } from '../../util/exec.js';
import { RUN_DIR } from '../../util/paths.js';
import { withTimeout } from '../../util/process.js';
import { bufferSizeFor, FuseChannel } from './channel.js';
import { answerFileRequest, readU64, type ImageFile } from './image-file.js';
import {
  FUSE_ROOT_ID,
  FallocateIn,
  FallocateMode,
  InHeader,
  INIT2_OVER_IO_URING,
  InitFlag,
  InitIn,
  InitOut,
  KERNEL_MINOR_VERSION,
  KERNEL_VERSION,
  Opcode,
  OutHeader,
  ReadIn,
  S_IFREG,
  WriteIn,
} from './protocol.js';
import { FuseRing } from './ring.js';
import { BODY, Reply, Slot, WRITE_DATA } from './slot.js';

const { EOPNOTSUPP, EPROTO } = constants.errno;

/** Largest READ/WRITE the kernel sends (max_write; reads follow max_pages). */
const MAX_WRITE = 1 << 20;
const MAX_PAGES = MAX_WRITE / 4096;
/** Requests the kernel keeps in flight to us; bounds the buffers we hold. */
const MAX_BACKGROUND = 256;
/**
 * Spin-wait for the next request after handling some (FuseChannel): 20 us brought 4k QD1 latency
 * from ~60 to ~35 us here at no cost to deep queues (docs/performance.md); an idle device never spins.
 */
const SPIN_MICROSECONDS = 20;

export interface FuseLoopOptions extends FrontendOptions {
  /** Where re-sent requests' restart counts are kept across driver deaths. */
  readonly restarts: RestartTable;
}

export class FuseLoopFrontend implements Frontend {
  readonly name = 'fuse';
  readonly ended: Promise<Error | undefined>;

  private readonly requests: RequestLayer;
  private readonly restarts: RestartTable;
  private readonly expiryReply = Buffer.alloc(OutHeader.SIZE);
  private readonly mountpoint: string;
  private image: ImageFile;
  private fd = -1;
  private channel: FuseChannel<Slot> | undefined;
  /** Set when requests come through io_uring (the fuseIoUring attribute, where the kernel offers it). */
  private ring: FuseRing | undefined;
  private mounted = false;
  private loopPath: string | undefined;
  private initialized!: () => void;
  private readonly initDone = new Promise<void>((resolve) => (this.initialized = resolve));
  private stopping: Promise<void> | undefined;
  /** Set once this process gives the device up (to another driver, or to the daemon's keeper). */
  private leaving = false;
  private resolveEnded!: (error: Error | undefined) => void;

  constructor(private readonly options: FuseLoopOptions) {
    this.requests = options.requests;
    this.restarts = options.restarts;
    this.mountpoint = mountpointOf(options.index);
    this.image = { size: options.attributes.size, physicalBlockSize: options.attributes.physicalBlockSize, readOnly: options.readOnly };
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
  }

  get kernelFd(): number {
    return this.fd;
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
    this.read();
    await withTimeout(this.initDone, 10_000, () => new Error('the kernel did not send FUSE INIT'));

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

  async adopt(fd: number, kernel: KernelDevice): Promise<void> {
    this.fd = fd;
    this.mounted = true;
    this.loopPath = kernel.path;
    this.read();
    this.channel!.resend();
  }

  async detach(): Promise<void> {
    this.leaving = true;
    this.channel?.stop();
    this.ring?.close();
  }

  async abandon(): Promise<void> {
    this.leaving = true;
    if (this.channel) this.channel.muted = true;
    // Waiting requests now end at once; their answers (EIO) are not sent: the next reader gets them.
    this.requests.abortAll();
    this.channel?.stop();
    this.ring?.close();
    this.release();
  }

  release(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  /**
   * The image file takes the new size (the kernel forgets its cached attributes and asks again),
   * then loop reads its backing file's size again (LOOP_SET_CAPACITY).
   */
  async resize(size: number): Promise<void> {
    if (!this.channel || !this.loopPath) throw new Error('the device is not being served');
    const before = this.image;
    try {
      await this.showImageSize({ ...before, size });
      const loop = await fsp.open(this.loopPath, 'r');
      try {
        native.loopSetCapacity(loop.fd);
      } finally {
        await loop.close();
      }
    } catch (error) {
      await this.showImageSize(before).catch(() => undefined);
      throw error;
    }
  }

  /** Answers for the image with `image` from now on, and has the kernel ask again. */
  private async showImageSize(image: ImageFile): Promise<void> {
    this.image = image;
    this.channel!.invalidateAttributes(FUSE_ROOT_ID);
    const stat = await fsp.stat(this.mountpoint);
    if (stat.size !== image.size) throw new Error(`the kernel still sees ${stat.size} bytes in ${this.mountpoint}`);
  }

  /** Starts reading requests; requests the restart table knows of are looked up there. */
  private read(): void {
    this.restarts.begin(this.options.attributes.requestTimeout);
    const newSlot = (c: FuseChannel<Slot>) => {
      return new Slot(Buffer.allocUnsafeSlow(bufferSizeFor(MAX_WRITE)), c, this.expiryReply, this.restarts);
    };
    const channel = new FuseChannel<Slot>(this.fd, newSlot, (slot, length) => this.handle(slot, length), SPIN_MICROSECONDS);
    this.channel = channel;
    void channel.ended.then((error) => {
      if (this.leaving && !this.stopping) return;
      this.resolveEnded(error ?? (this.stopping ? undefined : new Error('FUSE connection ended')));
    });
    channel.start();
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
    this.ring?.close();
    this.release();
    rmSync(this.mountpoint, { force: true });
    for (const e of errors) this.options.log(`teardown: ${(e as Error).message}`);
  }

  // ---- Request decoding -----------------------------------------------------------------------

  /** Decodes and starts one request; returns the bytes of data it moves (FuseChannel bounds batches by them). */
  private handle(slot: Slot, length: number): number {
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
        answerFileRequest(slot, opcode, this.image);
        return 0;
    }
  }

  /**
   * A request the kernel sent again after a driver died holding it: its deaths are counted in
   * the restart table (which outlives drivers), and the request layer decides (restartLimit).
   */
  private countRestarts(slot: Slot): void {
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
    // The kernel offers io_uring only where root allowed it (enable_uring).
    const ring = this.options.attributes.fuseIoUring && (flags & InitFlag.INIT_EXT) !== 0 && (buf.readUInt32LE(BODY + InitIn.flags2) & INIT2_OVER_IO_URING) !== 0;
    const wanted = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.ASYNC_DIO | InitFlag.MAX_PAGES | InitFlag.ABORT_ERROR | (ring ? InitFlag.INIT_EXT : 0);
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
    buf.writeUInt32LE(ring ? INIT2_OVER_IO_URING : 0, out + InitOut.flags2);
    slot.ok(out + InitOut.SIZE);
    // The kernel now holds every request until each of its queues has a ring entry.
    if (ring) this.ring = new FuseRing(this.fd, this.channel!, MAX_WRITE, (s, length) => this.handle(s, length), this.options.log);
    else if (this.options.attributes.fuseIoUring) this.options.log('warning: this kernel offers no FUSE over io_uring; serving /dev/fuse');
    this.initialized();
  }
}

export function mountpointOf(index: number): string {
  return `${RUN_DIR}/fuse/bdus-${index}`;
}

/**
 * Removes what a dead driver process of device `index` left in the kernel: its FUSE mount (the
 * connection is already aborted when its last holder died) and its loop device.
 */
export async function reclaimFuseLoop(index: number, kernelPath: string): Promise<void> {
  const mountpoint = mountpointOf(index);
  // Which loop devices are ours is read before unmounting: a lazily unmounted image shows as "/".
  // A driver that died while setting up has not said which loop device it bound (kernelPath is
  // empty then): look for any loop device bound to this image. (One still being bound by the
  // dead driver's losetup binds after this look, and stays: docs/frontends.md.)
  const names = kernelPath ? [kernelPath.replace('/dev/', '')] : loopDevices();
  const ours = names.filter((name) => backingFile(name).startsWith(mountpoint));
  const mounted = readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mountpoint);
  if (mounted) await execute('umount', ['-f', '-l', mountpoint]).catch(() => undefined);
  for (const name of ours) await execute('losetup', ['-d', `/dev/${name}`]).catch(() => undefined);
  rmSync(mountpoint, { force: true });
}

function loopDevices(): string[] {
  try {
    return readdirSync('/sys/block').filter((name) => name.startsWith('loop'));
  } catch {
    return [];
  }
}

function backingFile(name: string): string {
  try {
    return readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim();
  } catch {
    return ''; // not bound
  }
}
