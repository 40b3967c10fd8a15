/**
 * The device registry: one JSON record per device under RUN_DIR/devices/<index>.json.
 *
 * - Ids are 64-bit, handed out by atomically renaming a counter file (ids/next.<n> -> next.<n+1>),
 *   so two processes never get the same id and ids are not reused until reboot (RUN_DIR is tmpfs).
 * - Indexes are reused: the lowest index whose record file can be created exclusively.
 * - A record whose driver process is gone (same pid but another start time counts as gone) is
 *   stale; `isAlive` tells, and the device module reclaims it.
 *
 * The control-plane daemon (planned) takes this role over; the record format is its state.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { RUN_DIR } from '../util/paths.js';

export type DeviceState = 'initialized' | 'available' | 'terminated';

export interface DeviceRecord {
  /** Decimal string of the 64-bit id. */
  id: string;
  index: number;
  path: string;
  kernelPath: string;
  major: number;
  minor: number;
  frontend: string;
  state: DeviceState;
  pid: number;
  /** The driver process's start time (from /proc/PID/stat), so a reused pid is not mistaken for it. */
  pidStart: string;
  readOnly: boolean;
  attributes: Record<string, number | boolean>;
}

const DEVICES_DIR = `${RUN_DIR}/devices`;
const IDS_DIR = `${RUN_DIR}/ids`;

function recordPath(index: number): string {
  return `${DEVICES_DIR}/${index}.json`;
}

/** Hands out the next device id; never the same twice while the machine runs. */
export function allocateId(): bigint {
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o700 });
  for (;;) {
    let names: string[];
    try {
      names = readdirSync(IDS_DIR).filter((n) => n.startsWith('next.'));
    } catch {
      // First use: build the counter aside and publish it with one rename, so that the counter
      // directory never exists without exactly one counter file in it.
      const staging = mkdtempSync(`${RUN_DIR}/.ids-`);
      writeFileSync(`${staging}/next.1`, '');
      try {
        renameSync(staging, IDS_DIR);
      } catch {
        rmSync(staging, { recursive: true, force: true });
      }
      continue;
    }
    const current = names[0];
    if (current === undefined) continue; // a rename is in progress
    const n = BigInt(current.slice('next.'.length));
    try {
      renameSync(`${IDS_DIR}/${current}`, `${IDS_DIR}/next.${n + 1n}`);
      return n;
    } catch {
      // Another process took this id; try the next one.
    }
  }
}

/** Claims the lowest free index by creating its record exclusively. */
export function allocateIndex(record: Omit<DeviceRecord, 'index' | 'path'>, limit: number): DeviceRecord {
  mkdirSync(DEVICES_DIR, { recursive: true, mode: 0o700 });
  for (let index = 0; index < limit; index++) {
    const full: DeviceRecord = { ...record, index, path: `/dev/bdus-${index}` };
    try {
      writeFileSync(recordPath(index), JSON.stringify(full), { flag: 'wx', mode: 0o600 });
      return full;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
  }
  throw Object.assign(new Error(`too many devices: all ${limit} device indexes are in use`), { code: 'ENOSPC' });
}

/** Replaces a record atomically. */
export function updateRecord(record: DeviceRecord): void {
  const tmp = `${recordPath(record.index)}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(record), { mode: 0o600 });
  renameSync(tmp, recordPath(record.index));
}

export function removeRecord(record: DeviceRecord): void {
  // Only remove it if it is still ours: a reclaimed index may already hold a newer device.
  const current = readRecord(record.index);
  if (current?.id === record.id) rmSync(recordPath(record.index), { force: true });
}

export function readRecord(index: number): DeviceRecord | undefined {
  try {
    return JSON.parse(readFileSync(recordPath(index), 'utf8')) as DeviceRecord;
  } catch {
    return undefined;
  }
}

export function listRecords(): DeviceRecord[] {
  let names: string[];
  try {
    names = readdirSync(DEVICES_DIR);
  } catch {
    return [];
  }
  return names
    .filter((n) => /^\d+\.json$/.test(n))
    .map((n) => readRecord(Number.parseInt(n, 10)))
    .filter((r): r is DeviceRecord => r !== undefined)
    .sort((a, b) => a.index - b.index);
}

/** The start time of a process (field 22 of /proc/PID/stat), or undefined if it is gone. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether the record's driver process still runs. */
export function isAlive(record: DeviceRecord): boolean {
  return processStart(record.pid) === record.pidStart;
}
