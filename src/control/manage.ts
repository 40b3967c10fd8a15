/**
 * Managing devices from any process (the CLI and the typed API): list, info, flush, destroy, wait.
 *
 * A device is named by id wherever it matters: an index (and so a path) is reused once its device
 * is gone, an id never is. A path is turned into an id once, at the start; after that, a device
 * that was destroyed meanwhile gives ENODEV instead of reaching a newer one at the same path.
 */
import { promises as fsp, statSync } from 'node:fs';
import type { Context } from '../driver/driver.js';
import { splitDeviceNumber } from '../util/device-number.js';
import { BdusError } from '../driver/errors.js';
import { withDaemon, type ControlConnection } from './client.js';
import { processStart, sleep } from '../util/process.js';
import type { DeviceRecord, DeviceState, Requests } from './protocol.js';

/**
 * A device as the API reports it: the fields a driver sees in its Context (id, index, path,
 * kernelPath, major, minor, readOnly, adjusted attributes), plus the registry's own.
 */
export interface DeviceInfo extends Pick<Context, 'id' | 'index' | 'path' | 'kernelPath' | 'major' | 'minor' | 'readOnly' | 'attributes'> {
  readonly frontend: string;
  /** How the frontend reaches the kernel beyond its kind: 'io_uring' (FUSE), 'user copy' (ublk); empty for the plain path. */
  readonly modes: readonly string[];
  readonly state: DeviceState;
  /** The driver process; 0 while a recoverable device waits for a new driver (`rerun`). */
  readonly pid: number;
  /** How its driver was started: the module and the arguments after it (empty if not said). */
  readonly command: readonly string[];
  /** The request callbacks its driver has (a replacement must have them too). */
  readonly callbacks: readonly string[];
  readonly createdAt: Date;
}

/** A device: its id, or a path to its node (/dev/bdus-N or the kernel's own node). */
export type DeviceName = bigint | string;

/** The fields naming a device and its nodes, as the API shows them (ids as bigints). */
export function deviceNames(record: DeviceRecord): Pick<Context, 'id' | 'index' | 'path' | 'kernelPath' | 'major' | 'minor'> {
  const { index, path, kernelPath, major, minor } = record;
  return { id: BigInt(record.id), index, path, kernelPath, major, minor };
}

function toInfo(record: DeviceRecord): DeviceInfo {
  return Object.freeze({
    ...deviceNames(record),
    frontend: record.frontend,
    modes: Object.freeze([...(record.modes ?? [])]),
    state: record.state,
    pid: record.pid,
    command: Object.freeze([...(record.command ?? [])]),
    callbacks: Object.freeze([...record.callbacks]),
    readOnly: record.readOnly,
    attributes: Object.freeze({ ...record.attributes }),
    createdAt: new Date(record.createdAt),
  });
}

/** The record of `device`, looked up through `connection`. */
export async function lookUp(connection: ControlConnection, device: DeviceName): Promise<DeviceRecord> {
  if (typeof device === 'bigint' || /^\d+$/.test(device)) return connection.request('info', { id: device.toString() });
  let rdev: number;
  try {
    const stat = statSync(device);
    if (!stat.isBlockDevice()) throw new BdusError('ENOTBLK', `${device} is not a block device`);
    rdev = stat.rdev;
  } catch (error) {
    if (error instanceof BdusError) throw error;
    const code = (error as NodeJS.ErrnoException).code ?? 'ENOENT';
    throw new BdusError(code, `${device}: ${code === 'ENOENT' ? 'no such file or device' : code}`);
  }
  try {
    return await connection.request('info', splitDeviceNumber(rdev));
  } catch (error) {
    if ((error as BdusError).code === 'ENODEV') throw new BdusError('ENODEV', `${device} is not a bdus device`);
    throw error;
  }
}

/** Every device on this machine, by index. */
export function listDevices(): Promise<DeviceInfo[]> {
  return withDaemon(async (c) => (await c.request('list', {})).map(toInfo));
}

/** One device. ENODEV if there is no such device (or not any more). */
export function deviceInfo(device: DeviceName): Promise<DeviceInfo> {
  return withDaemon(async (c) => toInfo(await lookUp(c, device)));
}

/** The id of the device whose node is at `path`. */
export async function getDevIdFromPath(path: string): Promise<bigint> {
  return (await deviceInfo(path)).id;
}

/**
 * Flushes a device: the OS cache for it, then a flush request to its driver (fsync on the node).
 * Checks after opening that the node still belongs to the same device, so a device destroyed
 * meanwhile gives ENODEV instead of flushing whatever reused its kernel node.
 */
export function flushDevice(device: DeviceName): Promise<void> {
  return withDaemon(async (c) => {
    const record = await lookUp(c, device);
    await flushRecord(c, record);
  });
}

async function flushRecord(c: ControlConnection, record: DeviceRecord): Promise<void> {
  if (record.state !== 'available') throw new BdusError('ENODEV', `device ${record.id} is ${record.state}: nothing to flush`);
  const handle = await fsp.open(record.kernelPath, 'r');
  try {
    const { rdev } = await handle.stat();
    const { major, minor } = splitDeviceNumber(rdev);
    const now = await c.request('info', { id: record.id });
    if (major !== record.major || minor !== record.minor || now.state !== 'available') {
      throw new BdusError('ENODEV', `device ${record.id} was destroyed while opening it`);
    }
    try {
      await handle.sync();
    } catch (error) {
      // A destroy that began meanwhile fails the flush with EIO: say what happened.
      const after = await c.request('info', { id: record.id }).catch(() => undefined);
      if (after?.state !== 'available') throw new BdusError('ENODEV', `device ${record.id} was destroyed while flushing`);
      throw error;
    }
  } finally {
    await handle.close();
  }
}

export interface DestroyOptions {
  /** Flush the device before its driver terminates (default true). */
  flush?: boolean;
  /**
   * Destroy it even while it is in use: mounted, stacked on, or open in another process
   * (default false: refused with EBUSY naming the holders). Its users then get I/O errors.
   */
  force?: boolean;
  /** Called once if the flush has not finished after `slowFlushMs` (default 3000). */
  onSlowFlush?: () => void;
  slowFlushMs?: number;
}

/**
 * Destroys a device: refuses one in use unless `force` (EBUSY), flushes it (unless told not to,
 * or it has no driver), asks its driver to finish the requests in progress and terminate, and
 * resolves once the device is gone. Destroying a device that is being
 * destroyed waits for that; destroying one that is gone gives ENODEV.
 */
export function destroyDevice(device: DeviceName, options: DestroyOptions = {}): Promise<void> {
  return withDaemon(async (c) => {
    const record = await lookUp(c, device);
    // A device without a driver (a recoverable one waiting for a rerun) has nobody to flush to.
    if ((options.flush ?? true) && record.state === 'available' && record.pid !== 0) {
      const timer = options.onSlowFlush ? setTimeout(options.onSlowFlush, options.slowFlushMs ?? 3000) : undefined;
      try {
        await flushRecord(c, record);
      } catch (error) {
        // A destroy that raced ours took the device away: wait for it like any other.
        if ((error as BdusError).code !== 'ENODEV') throw error;
      } finally {
        clearTimeout(timer);
      }
    }
    await c.request('destroy', { id: record.id, force: options.force ?? false }).catch((error: BdusError) => {
      if (error.code !== 'ENODEV') throw error;
    });
  });
}

/**
 * Resizes a device while it runs: its driver's resize callback takes the new size (or refuses),
 * then the kernel (loop's capacity change on FUSE+loop, a netlink reconfigure on kernel NBD), and
 * clients see it (blockdev --getsize64; resize2fs can grow a mounted ext4 then). `size` is a
 * positive multiple of the physical block size. Rejects with the reason, the size unchanged, if
 * the driver has no resize callback or refuses, or the device has no driver right now.
 */
export function resizeDevice(device: DeviceName, size: number): Promise<DeviceInfo> {
  return withDaemon(async (c) => {
    const record = await lookUp(c, device);
    return toInfo(await c.request('resize', { id: record.id, size }));
  });
}

/** Resolves once the device with this id has been destroyed (at once if it already has). */
export function waitUntilDestroyed(id: bigint): Promise<void> {
  return withDaemon(async (c) => {
    await c.request('wait', { id: id.toString() });
  });
}

/** Runs `work` on the running daemon (any protocol version); undefined if none runs. Never starts one. */
async function ifRunning<T>(work: (connection: ControlConnection) => Promise<T>): Promise<T | undefined> {
  try {
    return await withDaemon(work, { start: false, anyProtocol: true });
  } catch (error) {
    if ((error as BdusError).code === 'ECONNREFUSED') return undefined;
    throw error;
  }
}

/** The running daemon's version, or undefined if none runs (never starts one). */
export function daemonVersion(): Promise<Requests['version']['result'] | undefined> {
  return ifRunning((c) => c.request('version', {}));
}

/** Asks the daemon to exit; devices keep running. Resolves false if none was running. */
export async function stopDaemon(): Promise<boolean> {
  const stopped = await ifRunning(async (c) => {
    const version = await c.request('version', {});
    await c.request('shutdown', {});
    return version;
  });
  if (!stopped) return false;
  // It answers before it exits: wait until the process is gone, so that a new daemon can start.
  while (processStart(stopped.pid) !== undefined) await sleep(10);
  return true;
}
