/**
 * ublk as a kernel path (Linux 6.0 and later, module ublk_drv): the driver process serves
 * /dev/ublkbN through io_uring (ublk.ts). The kernel keeps the device while no server runs
 * (every device has USER_RECOVERY): the daemon holds no descriptor of it, stops it when a device
 * that is not recoverable loses its driver, and runs a stand-in server (stand-in.ts) while a
 * `fail-all` device has none.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { lockAttributes } from '../../driver/attributes.js';
import type { FrontendKind, KeptDevice, Keeper } from '../frontend.js';
import { Command, control, deviceInfo, ublkAvailable, ublkNumberOf } from './control.js';
import { InflightTable } from './inflight-table.js';
import { ublkLanes } from './lane.js';
import { ownerOf, processGone, UblkFrontend } from './ublk.js';

const STAND_IN = fileURLToPath(new URL('./stand-in.js', import.meta.url));

/** The stand-in server of a device, while it has no driver. */
class StandIn implements Keeper {
  private readonly child: ChildProcess;

  constructor(device: KeptDevice, log: (line: string) => void) {
    const number = ublkNumberOf(device.kernelPath);
    const args = [STAND_IN, String(number), String(device.attributes.queues), String(device.attributes.maxReadWriteSize), device.id];
    this.child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child.stderr!.on('data', (chunk: Buffer) => log(chunk.toString().trimEnd()));
    log(`its requests fail with EIO until a driver attaches (stand-in server, pid ${this.child.pid})`);
  }

  async stop(): Promise<void> {
    const { pid } = this.child;
    this.child.kill('SIGTERM');
    if (pid) await processGone(pid, 5000);
  }

  close(): void {
    this.child.kill('SIGKILL');
  }
}

/** Whether the ublk device of `device` still exists and is this one (its number may be reused). */
async function isOurs(device: KeptDevice): Promise<number> {
  const number = ublkNumberOf(device.kernelPath);
  if (number < 0) return -1;
  const info = await deviceInfo(number).catch(() => undefined);
  return info && info.serverData === ownerOf(device.id) ? number : -1;
}

export const ublk: FrontendKind = {
  name: 'ublk',
  title: 'ublk',

  async missing() {
    return (await ublkAvailable()) ? undefined : 'the kernel has no ublk (no /dev/ublk-control; modprobe ublk_drv failed: it needs Linux 6.0 or later)';
  },

  /**
   * The kernel gives a device at most one queue per CPU: fewer are asked for, visibly. A lane
   * serves whole queues (lane.ts): with lanes there are at least as many queues (within the
   * CPUs), and no more lanes than queues.
   */
  attributes(attributes) {
    const cpus = availableParallelism();
    const queues = Math.min(Math.max(attributes.queues, attributes.lanes), cpus);
    const lanes = Math.min(attributes.lanes, queues);
    return queues === attributes.queues && lanes === attributes.lanes ? attributes : lockAttributes({ ...attributes, queues, lanes });
  },

  // ublk carries no secure erase, write-same, ioctls or block status queries.
  callable: ['read', 'write', 'fuaWrite', 'flush', 'discard', 'writeZeros'],

  create: (options) => new UblkFrontend(options),

  lanes: ublkLanes,

  keeping: {
    kernelKeepsDevice: true,
    kernelEnd: false,

    async orphan(device, _fd, mode, log) {
      // 'hold': the kernel holds new requests and requeues the dead driver's itself.
      return { keeper: mode === 'fail-all' ? new StandIn(device, log) : undefined, fd: -1 };
    },

    lostInHandover: () => -1,

    /** Stops and deletes the ublk device if it is still there: its requests fail with EIO. */
    async reclaim(device, log) {
      InflightTable.remove(device.id);
      const number = await isOurs(device);
      if (number < 0) return;
      await control(Command.STOP_DEV, number).catch((error: Error) => log(error.message));
      await control(Command.DEL_DEV, number).catch((error: Error) => log(error.message));
    },
  },
};
