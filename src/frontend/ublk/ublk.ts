/**
 * The ublk frontend: the kernel's user-space block device (ublk_drv) is the block device,
 * /dev/ublkbN, and the driver process its server, through /dev/ublkcN and one io_uring per
 * hardware queue (queue.ts), all owned by the event loop thread.
 *
 * Every device is created with USER_RECOVERY and USER_RECOVERY_REISSUE, recoverable or not:
 * when its server goes (it closes its queues, or dies) the kernel keeps /dev/ublkbN, holds new
 * requests and requeues those the server had received but not answered. That is what lets a
 * driver hand a live device over (the next one recovers it: START_USER_RECOVERY, fetch on every
 * queue, END_USER_RECOVERY, and gets the requeued requests), and the daemon applies the device's
 * own rules on top: a device that is not recoverable is stopped at once when its driver dies
 * (requests fail with EIO), `fail-received` is enforced with the in-flight table
 * (inflight-table.ts), and `fail-all` by the daemon's stand-in server (stand-in.ts).
 *
 * A device whose driver offers writeTarget (its data lives in its memory) is created with
 * USER_COPY where the kernel has it (6.5): its queues then move each request's data between the
 * request and the driver's memory in one copy (queue.ts). Every later server of the device
 * follows the flag the device was created with (dev_info.flags).
 */
import { closeSync, openSync, readFileSync, statSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BdusError } from '../../driver/errors.js';
import { PAGE_SIZE } from '../../driver/attributes.js';
import { native } from '../../native.js';
import { queuesOfLane, type Frontend, type FrontendOptions, type KernelDevice } from '../frontend.js';
import { Command, control, deviceInfo, encodeDeviceInfo, encodeParams, Feature, kernelFeatures, ublkNumberOf, type DeviceInfo } from './control.js';
import { InflightTable } from './inflight-table.js';
import { UblkQueue, type QueueOptions } from './queue.js';

/** Tags per queue: ublksrv's default is 128; 64 keeps a queue's buffers (2 per tag) smaller. */
export const QUEUE_DEPTH = 64;
/** How long a new driver waits for the previous server to be gone before it recovers the device. */
const RECOVERY_WAIT_MS = 15_000;

/**
 * Serves some of a ublk device's queues (by default all): for a driver, each of its lanes, and
 * the daemon's stand-in. The kernel lets the character device be opened once: the first
 * UblkQueues of a process opens it, and its lanes serve through that descriptor.
 */
export class UblkQueues {
  readonly queues: UblkQueue[] = [];
  private cdev = -1;
  private ownsCdev = false;

  constructor(
    readonly device: number,
    private readonly options: Pick<QueueOptions, 'requests' | 'table' | 'log' | 'aborted' | 'userCopy'> & { readonly maxReadWriteSize: number },
    readonly ids: readonly number[],
  ) {}

  /** Opens the character device, or serves through `cdev` (a lane: its main thread's), and fetches on every queue. */
  open(cdev?: number): void {
    this.ownsCdev = cdev === undefined;
    this.cdev = cdev ?? openSync(`/dev/ublkc${this.device}`, 'r+');
    const bufferSize = bufferSizeOf(this.options.maxReadWriteSize);
    for (const id of this.ids) {
      this.queues.push(new UblkQueue({ ...this.options, cdev: this.cdev, id, depth: QUEUE_DEPTH, bufferSize }));
    }
  }

  /** The character device's descriptor, once open. */
  get fd(): number {
    return this.cdev;
  }

  stopTaking(): void {
    for (const q of this.queues) q.stopTaking();
  }

  async drained(): Promise<void> {
    await Promise.all(this.queues.map((q) => q.drained()));
  }

  /**
   * Closes the queues (the device is stopped) or leaves them to the next driver (`leave`: their
   * rings are closed once their thread is gone, and the kernel quiesces the device once it has
   * every queue back), and, if it opened it, the character device (a process's lanes end theirs
   * first).
   */
  close(leave = false): void {
    for (const q of this.queues) q.close(leave);
    this.queues.length = 0;
    if (this.cdev >= 0 && this.ownsCdev) closeSync(this.cdev);
    this.cdev = -1;
  }
}

/** Queues 0 to count-1. */
export function allQueues(count: number): number[] {
  return Array.from({ length: count }, (_, id) => id);
}

/** What a lane (lane.ts) takes from the frontend to serve its queues. */
export interface UblkLaneShare {
  readonly device: number;
  /** The character device: a descriptor of this process. */
  readonly cdev: number;
  readonly queues: number;
  readonly lanes: number;
  readonly maxReadWriteSize: number;
  /** The device has USER_COPY. */
  readonly userCopy: boolean;
  /** A recoverable device's in-flight table: the device's id, and what the previous driver held (InflightTable.previous). */
  readonly table: { readonly id: string; readonly previous: SharedArrayBuffer } | undefined;
}

/** The per-tag buffer: the largest request, in whole pages. */
function bufferSizeOf(maxReadWriteSize: number): number {
  return Math.max(PAGE_SIZE, Math.ceil(maxReadWriteSize / PAGE_SIZE) * PAGE_SIZE);
}

/** Waits until process `pid` is gone (or a zombie), at most `ms`; true if it is. */
export async function processGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
      if (/\) [ZX] /.test(stat)) return true;
    } catch {
      return true;
    }
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}

/** Whether a device was created with USER_COPY (its servers must copy the data themselves). */
export function usesUserCopy(info: Pick<DeviceInfo, 'flags'>): boolean {
  return (info.flags & Feature.USER_COPY) !== 0n;
}

/**
 * Takes over a device whose server is gone or going (START_USER_RECOVERY), serves its queues
 * (`serve`, given the device's info), and lets the kernel send requests again (END_USER_RECOVERY). The kernel accepts the first
 * only once the previous server's queues are closed and the device quiesced, which it does
 * shortly after: retried until then.
 */
export async function recover(device: number, serve: (info: DeviceInfo) => void | Promise<void>, log: (message: string) => void): Promise<void> {
  const info = await deviceInfo(device);
  if (!info) throw new BdusError('ENODEV', `ublk device ${device} is gone`);
  // The previous server's queues come back to the kernel once its threads are gone
  // (UblkQueue.close), and the kernel warns if a recovery starts while one still runs.
  let running = false;
  if (info.serverPid > 0 && info.serverPid !== process.pid && !(await processGone(info.serverPid, RECOVERY_WAIT_MS))) {
    running = true;
    log(`the previous server of ublk device ${device} (pid ${info.serverPid}) is still running; recovering anyway`);
  }
  const deadline = Date.now() + RECOVERY_WAIT_MS;
  for (;;) {
    try {
      await control(Command.START_USER_RECOVERY, device);
      break;
    } catch (error) {
      if ((error as BdusError).code !== 'EBUSY' || Date.now() > deadline) {
        if (!running) throw error;
        throw new BdusError('EBUSY', `${(error as Error).message}: its previous server (pid ${info.serverPid}) has not exited, and a ublk device passes to its next server only once the previous one has (docs/frontends.md)`);
      }
      await sleep(10);
    }
  }
  await serve(info);
  await control(Command.END_USER_RECOVERY, device, undefined, process.pid);
}

/** Names a ublk device's owner in its dev_info, so that the daemon can tell it apart from a newer one. */
export function ownerOf(id: bigint | string): bigint {
  return BigInt.asUintN(64, BigInt(id));
}

export class UblkFrontend implements Frontend {
  readonly name = 'ublk';
  /** The kernel keeps the device: the daemon holds no descriptor of it. */
  readonly kernelFd = -1;
  readonly ended: Promise<Error | undefined>;
  private endWith!: (error: Error | undefined) => void;
  private device = -1;
  private queues: UblkQueues | undefined;
  private stopping = false;
  /** The device has USER_COPY (fixed at its creation; a later driver follows it). */
  private userCopy = false;

  constructor(private readonly options: FrontendOptions) {
    this.ended = new Promise((resolve) => (this.endWith = resolve));
  }

  modes(): readonly string[] {
    return this.userCopy ? ['user copy'] : [];
  }

  /**
   * Serves this thread's queues (lane 0's: every queue without lanes), then has the other lanes
   * serve theirs. Before START_DEV or END_USER_RECOVERY, which wait for every queue's fetches.
   */
  private async serveQueues(count: number, userCopy: boolean): Promise<void> {
    const { attributes, requests, log, id } = this.options;
    const { lanes, maxReadWriteSize } = attributes;
    this.userCopy = userCopy;
    const table = attributes.recoverable ? InflightTable.open(id.toString(), count * QUEUE_DEPTH) : undefined;
    // Someone else's STOP_DEV (or ublk_drv going) ends the device under the driver.
    const aborted = () => {
      if (!this.stopping) this.endWith(new Error(`the kernel stopped ublk device ${this.device}`));
    };
    this.queues = new UblkQueues(this.device, { maxReadWriteSize, requests, log, table, aborted, userCopy }, queuesOfLane(count, lanes, 0));
    this.queues.open();
    if (lanes <= 1) return;
    const share: UblkLaneShare = {
      device: this.device,
      cdev: this.queues.fd,
      queues: count,
      lanes,
      maxReadWriteSize,
      userCopy,
      table: table && { id: id.toString(), previous: table.previous.buffer as SharedArrayBuffer },
    };
    await this.options.startLanes(share);
  }

  async start(): Promise<KernelDevice> {
    const { attributes, readOnly, callbacks, requests } = this.options;
    const userCopy = requests.hasWriteTarget && ((await kernelFeatures()) & Feature.USER_COPY) !== 0n;
    const flags = Feature.USER_RECOVERY | Feature.USER_RECOVERY_REISSUE | Feature.CMD_IOCTL_ENCODE | (userCopy ? Feature.USER_COPY : 0n);
    const info = encodeDeviceInfo({
      queues: attributes.queues,
      depth: QUEUE_DEPTH,
      maxIoBytes: bufferSizeOf(attributes.maxReadWriteSize),
      flags,
      serverData: ownerOf(this.options.id),
    });
    await control(Command.ADD_DEV, -1, info);
    this.device = info.readUInt32LE(12);
    const has = (name: string) => callbacks.includes(name as never);
    const can = { flush: has('flush'), fuaWrite: has('fuaWrite'), discard: has('discard'), writeZeros: has('writeZeros') };
    await control(Command.SET_PARAMS, this.device, encodeParams(attributes, readOnly, can));
    await this.serveQueues(info.readUInt16LE(0), userCopy);
    // START_DEV waits for every queue's fetches and then reads the partition table, which the
    // queues answer meanwhile.
    await control(Command.START_DEV, this.device, undefined, process.pid);
    await this.useNoScheduler();
    return this.kernelDevice();
  }

  /**
   * Keeps each request on its tag when it is requeued (see inflight-table.ts); also the fastest.
   * Off the event loop: the kernel freezes the queue for the change, which waits for the
   * requests in flight, which this process answers.
   */
  private async useNoScheduler(): Promise<void> {
    const path = `/sys/block/ublkb${this.device}/queue/scheduler`;
    try {
      if ((await readFile(path, 'latin1')).includes('[none]')) return;
      await writeFile(path, 'none');
    } catch (error) {
      this.options.log(`cannot set the I/O scheduler of ublkb${this.device} to none: ${(error as Error).message}`);
    }
  }

  private kernelDevice(): KernelDevice {
    const path = `/dev/ublkb${this.device}`;
    const { rdev } = statSync(path);
    // Linux's new_encode_dev: minor in bits 0-7 and 20-31, major in bits 8-19.
    return { path, major: (rdev >> 8) & 0xfff, minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00) };
  }

  async adopt(_fd: number, kernel: KernelDevice): Promise<void> {
    this.device = ublkNumberOf(kernel.path);
    const info = await deviceInfo(this.device);
    if (!info || info.serverData !== ownerOf(this.options.id)) throw new BdusError('ENODEV', `${kernel.path} is no longer this device`);
    await recover(this.device, () => this.serveQueues(info.queues, usesUserCopy(info)), this.options.log);
    await this.useNoScheduler();
  }

  async detach(): Promise<void> {
    this.queues?.stopTaking();
  }

  /**
   * The queues are left, not closed (UblkQueue.close): the next driver recovers the device once
   * this process has exited, which it does after a hand-over or an abort (a program that embeds
   * bdus must exit too: docs/frontends.md).
   */
  async release(): Promise<void> {
    await this.queues?.drained();
    this.leaveQueues();
  }

  async abandon(): Promise<void> {
    this.options.requests.abortAll();
    this.leaveQueues();
  }

  /** Leaves this thread's queues; the lanes' threads have ended, so their queues go back to the kernel now. */
  private leaveQueues(): void {
    this.queues?.close(true);
    native.ublkCloseLeft();
  }

  /** Older kernels than 6.16 cannot change a ublk device's size while it runs. */
  async cannotResize(): Promise<string | undefined> {
    if ((await kernelFeatures()) & Feature.UPDATE_SIZE) return undefined;
    return 'this kernel cannot resize a ublk device (UPDATE_SIZE needs Linux 6.16)';
  }

  /** UPDATE_SIZE (Linux 6.16). */
  async resize(size: number): Promise<void> {
    const cannot = await this.cannotResize();
    if (cannot) throw new BdusError('EOPNOTSUPP', cannot);
    await control(Command.UPDATE_SIZE, this.device, undefined, size / 512);
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.device >= 0) {
      // The queues the lanes left as their threads ended are closed first: STOP_DEV waits for
      // every request in flight, and the kernel takes back what a left queue held only then.
      for (let i = 0; native.ublkCloseLeft() > 0 && i < 100; i++) await sleep(50);
      // STOP_DEV removes the disk (requests in flight are served meanwhile; the rest fail with
      // EIO) and ends the queues' fetches; DEL_DEV then waits for the queues to be closed.
      await control(Command.STOP_DEV, this.device).catch((error: Error) => this.options.log(error.message));
      this.queues?.close();
      await control(Command.DEL_DEV, this.device).catch((error: Error) => this.options.log(error.message));
    }
    if (this.options.attributes.recoverable) InflightTable.remove(this.options.id.toString());
    this.endWith(undefined);
  }
}
