/**
 * The daemon's device registry: ids, indexes, states, and waiters for a device's end.
 *
 * - Ids are 64-bit and never reused while the machine runs: the next id is saved (in RUN_DIR, a
 *   tmpfs) before an id is handed out, and a restarted daemon carries on from it.
 * - Indexes (the N of /dev/bdus-N) are reused: a new device takes the lowest free one. An index is
 *   free only once its old device is entirely gone (kernel device and record).
 * - Operations name a device by id; an id that is not in the registry gets ENODEV, so a stale id
 *   can never reach a newer device that reused the index (seed 003's STOP_BY_INDEX race).
 * - untilGone(id) resolves once the device is removed; since ids are never reused, a waiter can
 *   ask at any time without a race (seed 003's global "device destroyed" completion).
 *
 * The daemon is the only writer. Every change is saved at once (write + rename), so a daemon
 * killed at any point restarts with the registry as it was.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { BdusError } from '../driver/errors.js';
import { RUN_DIR } from '../util/paths.js';
import { REGISTRY_PATH, type DeviceRecord } from './protocol.js';

const MAX_ID = 2n ** 64n - 1n;

interface Saved {
  nextId: string;
  devices: DeviceRecord[];
}

export class Registry {
  private readonly devices = new Map<string, DeviceRecord>();
  private nextId = 1n;
  private readonly waiters = new Map<string, Array<() => void>>();

  constructor(readonly maxDevices: number) {}

  /** Loads what a previous daemon saved; returns the devices it had. */
  load(): DeviceRecord[] {
    let saved: Saved;
    try {
      saved = JSON.parse(readFileSync(REGISTRY_PATH, 'utf8')) as Saved;
    } catch {
      return [];
    }
    this.nextId = BigInt(saved.nextId);
    for (const record of saved.devices) this.devices.set(record.id, record);
    return this.list();
  }

  list(): DeviceRecord[] {
    return [...this.devices.values()].sort((a, b) => a.index - b.index);
  }

  /** The device with this id, or ENODEV naming why (never existed, or already destroyed). */
  get(id: string): DeviceRecord {
    const record = this.devices.get(parseId(id));
    if (record) return record;
    throw new BdusError('ENODEV', BigInt(id) < this.nextId ? `device ${id} no longer exists` : `no device has id ${id}`);
  }

  find(id: string): DeviceRecord | undefined {
    return this.devices.get(id);
  }

  /** Whether this very record (not an older or newer device) is registered. */
  has(record: DeviceRecord): boolean {
    return this.devices.get(record.id) === record;
  }

  byDeviceNumber(major: number, minor: number): DeviceRecord | undefined {
    return this.list().find((r) => r.kernelPath !== '' && r.major === major && r.minor === minor);
  }

  /** Registers a new device in state INITIALIZED with a fresh id and the lowest free index. */
  create(fields: Omit<DeviceRecord, 'id' | 'index' | 'path' | 'state' | 'kernelPath' | 'major' | 'minor' | 'createdAt'>): DeviceRecord {
    const used = new Set([...this.devices.values()].map((r) => r.index));
    let index = 0;
    while (used.has(index)) index++;
    if (index >= this.maxDevices) {
      throw new BdusError('ENOSPC', `too many devices: this daemon allows ${this.maxDevices} (see bdus daemon --help, --max-devices)`);
    }
    if (this.nextId > MAX_ID) throw new BdusError('EOVERFLOW', 'device ids are exhausted until reboot');
    const id = this.nextId++;
    const record: DeviceRecord = {
      ...fields,
      id: id.toString(),
      index,
      path: `/dev/bdus-${index}`,
      state: 'initialized',
      kernelPath: '',
      major: 0,
      minor: 0,
      createdAt: Date.now(),
    };
    this.devices.set(record.id, record);
    this.save();
    return record;
  }

  /** Saves a change made to a record. */
  update(record: DeviceRecord): void {
    if (this.devices.get(record.id) === record) this.save();
  }

  /** Removes a device and wakes everyone waiting for its end. */
  remove(record: DeviceRecord): void {
    if (this.devices.get(record.id) !== record) return;
    this.devices.delete(record.id);
    this.save();
    for (const wake of this.waiters.get(record.id) ?? []) wake();
    this.waiters.delete(record.id);
  }

  /** Resolves once the device with this id is gone: at once if it already is. */
  untilGone(id: string): Promise<void> {
    const key = parseId(id);
    if (!this.devices.has(key)) {
      if (BigInt(key) >= this.nextId) return Promise.reject(new BdusError('ENODEV', `no device has id ${id}`));
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const list = this.waiters.get(key) ?? [];
      list.push(resolve);
      this.waiters.set(key, list);
    });
  }

  private save(): void {
    mkdirSync(RUN_DIR, { recursive: true, mode: 0o700 });
    const saved: Saved = { nextId: this.nextId.toString(), devices: this.list() };
    const tmp = `${REGISTRY_PATH}.tmp`;
    writeFileSync(tmp, JSON.stringify(saved), { mode: 0o600 });
    renameSync(tmp, REGISTRY_PATH);
  }
}

/** A device id in canonical decimal form; EINVAL if it is not one. */
export function parseId(id: unknown): string {
  if (typeof id !== 'string' || !/^\d{1,20}$/.test(id) || BigInt(id) > MAX_ID) {
    throw new BdusError('EINVAL', `invalid device id ${JSON.stringify(id)}: expected a decimal 64-bit number`);
  }
  return BigInt(id).toString();
}
