/**
 * Managing existing devices from any process: finding one by path or id, flushing it, destroying
 * it. A device is addressed by id wherever possible: an index (and so a path) is reused once its
 * device is gone, an id never is.
 */
import { realpathSync, statSync } from 'node:fs';
import { BdusError } from '../driver/errors.js';
import { flushDevice } from './device.js';
import { reclaimDevice } from './reclaim.js';
import { isAlive, listRecords, readRecord, type DeviceRecord } from './registry.js';

/** Finds a device by id (a bigint or a decimal string) or by a path to its node (stable or kernel). */
export function findDevice(target: string | bigint): DeviceRecord {
  const records = listRecords();
  if (typeof target === 'bigint' || /^\d+$/.test(target)) {
    const record = records.find((r) => r.id === target.toString());
    if (!record) throw new BdusError('ENODEV', `no bdus device has id ${target}`);
    return record;
  }
  let rdev: number;
  try {
    const stat = statSync(target);
    if (!stat.isBlockDevice()) throw new BdusError('ENOTBLK', `${target} is not a block device`);
    rdev = stat.rdev;
  } catch (error) {
    if (error instanceof BdusError) throw error;
    throw new BdusError('ENOENT', `${target}: ${(error as NodeJS.ErrnoException).code ?? 'cannot be read'}`);
  }
  const real = realpathSync(target);
  const record = records.find((r) => r.path === target || (r.kernelPath === real && rdevOf(r) === rdev));
  if (!record) throw new BdusError('ENODEV', `${target} is not a bdus device`);
  return record;
}

function rdevOf(record: DeviceRecord): number {
  return statSync(record.kernelPath).rdev;
}

/** The id of the device whose node is at `path`. */
export function getDevIdFromPath(path: string): bigint {
  return BigInt(findDevice(path).id);
}

export interface DestroyOptions {
  /** Flush the device before terminating its driver (default true). */
  flush?: boolean;
  /** Called if the flush has not finished after `slowFlushMs`. */
  onSlowFlush?: () => void;
  slowFlushMs?: number;
}

/**
 * Destroys a device: flushes it (unless told not to), asks its driver to terminate, and resolves
 * once the device is gone. A device whose driver already died is cleaned up directly.
 */
export async function destroyDevice(target: string | bigint, options: DestroyOptions = {}): Promise<void> {
  const record = findDevice(target);
  if (!isAlive(record)) return reclaimDevice(record);
  if (options.flush ?? true) {
    const timer = options.onSlowFlush ? setTimeout(options.onSlowFlush, options.slowFlushMs ?? 3000) : undefined;
    try {
      await flushDevice(record.kernelPath);
    } finally {
      clearTimeout(timer);
    }
  }
  try {
    process.kill(record.pid, 'SIGTERM');
  } catch {
    // already exiting
  }
  for (;;) {
    if (readRecord(record.index)?.id !== record.id) return;
    if (!isAlive(record)) return reclaimDevice(record);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Every device known to the registry. */
export function listDevices(): DeviceRecord[] {
  return listRecords();
}
