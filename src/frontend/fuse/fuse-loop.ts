/**
 * The FUSE+loop frontend: a one-file FUSE filesystem whose file is the device image, spoken in
 * raw FUSE protocol on /dev/fuse (no libfuse), turned into a block device by a loop device with
 * direct I/O.
 *
 * Where a request enters: FuseChannel delivers each /dev/fuse message to FuseDispatch
 * (dispatch.ts), which decodes it and calls the request layer; the slot's continuation encodes
 * the reply in the same buffer. Lanes (lane.ts) read the same connection through clones of it.
 */
import { closeSync, promises as fsp, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import { queuesOfLane, type Frontend, type FrontendOptions, type KernelDevice } from '../frontend.js';
import type { RequestLayer } from '../../request/request-layer.js';
import type { RestartTable } from './restart-table.js';
import { native } from '../../native.js';
import { execute } from '../../util/exec.js';
import { RUN_DIR } from '../../util/paths.js';
import { withTimeout } from '../../util/process.js';
import { bufferSizeFor, FuseChannel } from './channel.js';
import { CompletionCpu } from './completion-cpu.js';
import { FuseDispatch } from './dispatch.js';
import type { ImageFile } from './image-file.js';
import { FUSE_ROOT_ID, INIT2_OVER_IO_URING, InitFlag, InitIn, InitOut, KERNEL_MINOR_VERSION, KERNEL_VERSION, OutHeader, S_IFREG } from './protocol.js';
import { ReaderGate } from './reader-gate.js';
import { FuseRing, fuseRingQueues } from './ring.js';
import { BODY, Slot } from './slot.js';

const { EPROTO } = constants.errno;

/** Largest READ/WRITE the kernel sends (max_write; reads follow max_pages). */
export const MAX_WRITE = 1 << 20;
const MAX_PAGES = MAX_WRITE / 4096;
/** Requests the kernel keeps in flight to us; bounds the buffers we hold. */
const MAX_BACKGROUND = 256;
/**
 * Spin-wait for the next request after handling some (FuseChannel): 20 us brought 4k QD1 latency
 * from ~60 to ~35 us here at no cost to deep queues (docs/performance.md); an idle device never
 * spins. The ring spins alike (FuseRing: 4k QD1 45.5 -> 31.0 us). With lanes no reader spins:
 * the spinning main thread took the core a lane needed (the ram example, 2 lanes on 2 vCPUs: 4k
 * QD32 0.62-0.68x of one lane with the spin, 0.71-0.86x without; 1M write 1.01x with, 1.96x
 * without), but for the ring's lanes at queue depth 1, where one lane takes every request
 * (RingLane, ring.ts).
 */
export const SPIN_MICROSECONDS = 20;

/** What a lane (lane.ts) takes from the frontend: the connection's clones (fds of this process), and the image's look. */
export interface FuseLaneShare {
  readonly image: ImageFile;
  /** Lane N reads through clones[N - 1]. */
  readonly clones: readonly number[];
  readonly lanes: number;
  /** The connection's io_uring queues, which the lanes share out (queuesOfLane); 0 without the ring. */
  readonly ringQueues: number;
  /** The ReaderGate's memory: the lanes' readers of /dev/fuse count themselves there while parked. */
  readonly gate: SharedArrayBuffer;
  /** CompletionCpu.depthOne's memory: 1 while a client runs at queue depth 1 (the ring's lanes follow it: RingLane). */
  readonly depthOne: SharedArrayBuffer;
}

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
  private readonly dispatch: FuseDispatch;
  private readonly mountpoint: string;
  private image: ImageFile;
  private fd = -1;
  private channel: FuseChannel<Slot> | undefined;
  /** Set when requests come through io_uring (the fuseIoUring attribute, where the kernel offers it). */
  private ring: FuseRing | undefined;
  private mounted = false;
  private loopPath: string | undefined;
  /** Shared with the lanes' readers (reader-gate.ts): this thread's reader spins only while they are all parked. */
  private readonly gate: ReaderGate;
  /** Steers the loop device's completions by queue depth (completion-cpu.ts). */
  private readonly completion: CompletionCpu;
  /** The lanes' ends of the connection (startLanes). */
  private readonly clones: number[] = [];
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
    this.dispatch = new FuseDispatch(this.requests, () => this.image, this.restarts, (slot) => this.init(slot));
    this.gate = new ReaderGate(options.attributes.lanes - 1);
    this.completion = new CompletionCpu(options.log);
  }

  get kernelFd(): number {
    return this.fd;
  }

  modes(): readonly string[] {
    return this.ring ? ['io_uring'] : [];
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
    // Before any request: over io_uring the kernel holds every request until each of its queues
    // has entries, and some are the lanes' to register.
    await this.startLanes();

    const args = ['--find', '--show', '--direct-io=on', '--sector-size', String(attributes.logicalBlockSize)];
    if (!attributes.disablePartitionScanning) args.push('--partscan');
    if (readOnly) args.push('--read-only');
    this.loopPath = (await execute('losetup', [...args, this.mountpoint])).trim();
    const name = this.loopPath.replace('/dev/', '');
    this.completion.attach(this.loopPath);
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
    this.completion.attach(kernel.path);
    const resent = this.channel!.resend();
    // The lanes join once this thread has read every re-sent request: only it keeps their
    // restart counts (the restart table), and a request a lane takes is always a fresh one.
    // Without lanes nothing waits: a re-sent request may kill this driver at once, and the
    // rerun has succeeded by then (rerun() in src/device/start.ts).
    if (this.options.attributes.lanes > 1) {
      await resent;
      await this.startLanes();
    }
  }

  /**
   * Lanes read the connection through clones of it, which this thread makes (and closes in
   * release(), once the lanes are gone), so that the daemon can hold them too (laneKernelFds).
   */
  private async startLanes(): Promise<void> {
    const { lanes } = this.options.attributes;
    if (lanes <= 1) return;
    for (let lane = 1; lane < lanes; lane++) this.clones.push(native.fuseClone(this.fd));
    const share: FuseLaneShare = { image: this.image, clones: this.clones, lanes, ringQueues: this.ring ? fuseRingQueues() : 0, gate: this.gate.buffer, depthOne: this.completion.depthOne.buffer as SharedArrayBuffer };
    await this.options.startLanes(share);
  }

  /**
   * The lanes' clones of the connection. Closing a clone ends the requests read through it and
   * not answered (fs/fuse/dev.c, fuse_dev_release): the daemon holds a duplicate of each for a
   * recoverable device, so that a dead driver's lanes' requests wait in the kernel for the next
   * driver's resend.
   */
  get laneKernelFds(): readonly number[] {
    return this.clones;
  }

  async detach(): Promise<void> {
    this.leaving = true;
    this.completion.detach();
    this.channel?.stop();
    this.ring?.close();
  }

  async abandon(): Promise<void> {
    this.leaving = true;
    this.completion.detach();
    this.channel?.mute();
    // Waiting requests now end at once; their answers (EIO) are not sent: the next reader gets them.
    this.requests.abortAll();
    this.channel?.stop();
    this.ring?.close();
    this.release();
  }

  release(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
    for (const clone of this.clones) closeSync(clone);
    this.clones.length = 0;
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
    const lanes = this.options.attributes.lanes > 1;
    const channel = new FuseChannel<Slot>(this.fd, newSlot, this.dispatch.handle, SPIN_MICROSECONDS, lanes ? { gate: this.gate, lane: false } : undefined);
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
    this.completion.detach();
    if (this.mounted) await execute('umount', ['-f', '-l', this.mountpoint]).catch((e) => errors.push(e));
    if (this.loopPath) await execute('losetup', ['-d', this.loopPath]).catch((e) => errors.push(e));
    this.channel?.stop();
    this.ring?.close();
    this.release();
    rmSync(this.mountpoint, { force: true });
    for (const e of errors) this.options.log(`teardown: ${(e as Error).message}`);
  }

  // ---- INIT -----------------------------------------------------------------------------------

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
    // The kernel now holds every request until each of its queues has a ring entry (this
    // thread's share of the queues here, the lanes' once they start).
    const { lanes } = this.options.attributes;
    if (ring) {
      const queues = queuesOfLane(fuseRingQueues(), lanes, 0);
      const lane = lanes > 1 ? { cpus: queues, depthOne: this.completion.depthOne } : undefined; // queue q is CPU q's
      this.ring = new FuseRing(this.fd, this.channel!, MAX_WRITE, this.dispatch.handle, this.options.log, queues, SPIN_MICROSECONDS, lane);
    } else if (this.options.attributes.fuseIoUring) {
      this.options.log('warning: this kernel offers no FUSE over io_uring; serving /dev/fuse');
    }
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
