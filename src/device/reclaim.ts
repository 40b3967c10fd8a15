/**
 * Reclaiming devices whose driver process died without cleaning up (SIGKILL, a crash in native
 * code): their kernel device, stable path and registry record. Until the control-plane daemon
 * watches drivers, this runs whenever a device is created or destroyed.
 */
import { readlinkSync, rmSync } from 'node:fs';
import { reclaimFuseLoop } from '../frontend/fuse/fuse-loop.js';
import { isAlive, listRecords, removeRecord, type DeviceRecord } from './registry.js';

export async function reclaimDevice(record: DeviceRecord): Promise<void> {
  await reclaimFuseLoop(record.index, record.kernelPath);
  try {
    if (readlinkSync(record.path) === record.kernelPath) rmSync(record.path, { force: true });
  } catch {
    // no stable path left
  }
  removeRecord(record);
}

/** Reclaims every device whose driver process is gone. */
export async function reclaimStaleDevices(): Promise<void> {
  for (const record of listRecords()) {
    if (!isAlive(record)) await reclaimDevice(record);
  }
}
