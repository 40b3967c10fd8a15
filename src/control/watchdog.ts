/**
 * The daemon's watch on stuck drivers. A driver whose event loop never returns (`while (true)`
 * in a callback, a synchronous wait that never ends) answers nothing, not even the ETIMEDOUT its
 * own request timer would give, and nothing in its process can notice. A driver process beats
 * into its device's stats file every 250 ms (src/stats/counters.ts); the daemon reads the beats
 * (a mapped file: no system call) every WATCH_INTERVAL_MS, and SIGKILLs a driver that has not
 * beaten for longer than its device's requestTimeout (at least 4 s) plus one second. Its end
 * then goes as any death does (devices.ts): a recoverable device keeps its requests for the next
 * driver; any other is removed and its clients get EIO. So a stuck driver holds its clients for
 * at most max(requestTimeout, 4 s) + 1.5 s, whether it sets its device up, serves, hands over
 * (flush, terminate) or is being destroyed; and no callback, initialize included, may block the
 * event loop for that long (asynchronous work may take as long as it likes).
 *
 * A driver can also stop serving with its event loop running: its process no longer reads the
 * kernel's requests (a driver that closed descriptors it does not own, a frontend gone wrong).
 * Its beats go on, so the watch also compares the kernel's side with the driver's: while the
 * kernel holds requests for the device (/sys/block/NAME/inflight) and the driver has taken none
 * and answered none (its counters, timeouts included, stand still) for the same time, a driver
 * that is serving (not being replaced, set up or destroyed) is killed the same way. A driver
 * whose callbacks are merely slow does not stand still: its request timer answers ETIMEDOUT
 * within requestTimeout.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { DeviceRecord } from './protocol.js';
import { LAYOUT_VERSION, mapStats, opBase, OPERATIONS, OpSlot, Slot } from '../stats/layout.js';
import { appendDeviceLog } from '../util/device-log.js';
import { isAlive } from '../util/process.js';

/** Past requestTimeout: four missed beats and then some, for a loaded machine. */
const GRACE_MS = 1000;
/**
 * The least silence taken for stuck, whatever the requestTimeout: an event loop can pause for a
 * second or two on a loaded machine (a VM, a big garbage collection), and killing a healthy
 * driver is worse than noticing a stuck one a little later.
 */
const LEAST_MS = 4000;

export class Watchdog {
  private readonly beats = new Map<string, Float64Array<ArrayBufferLike>>();
  /** Per device: the driver watched, its progress count, and since when it stood still with requests waiting. */
  private readonly progress = new Map<string, { pid: number; count: number; since: number }>();

  constructor(private readonly log: (line: string) => void) {}

  /** Kills the drivers of `records` that are stuck; `serving(id)`: the device's driver serves it (no change of driver under way). */
  check(records: readonly DeviceRecord[], serving: (id: string) => boolean = () => true): void {
    const now = Date.now();
    const seen = new Set<string>();
    for (const record of records) {
      seen.add(record.id);
      if (record.pid === 0) continue;
      const slots = this.slotsOf(record.id);
      // Only the beats of this driver count (a new one's first beat comes as its instance is made).
      if (!slots || slots[Slot.VERSION] !== LAYOUT_VERSION || slots[Slot.HEARTBEAT_PID] !== record.pid) continue;
      const limit = Math.max(record.attributes.requestTimeout, LEAST_MS) + GRACE_MS;
      const silent = now - slots[Slot.HEARTBEAT]!;
      if (silent > limit) {
        this.kill(record, slots, `has not run for ${silent} ms (requestTimeout ${record.attributes.requestTimeout} ms): its event loop is stuck`);
        continue;
      }
      const still = this.standingStill(record, slots, now, record.state === 'available' && serving(record.id));
      if (still > limit) this.kill(record, slots, `has taken and answered no request for ${still} ms while the kernel holds requests for it (requestTimeout ${record.attributes.requestTimeout} ms): it stopped serving`);
    }
    for (const id of this.beats.keys()) if (!seen.has(id)) this.beats.delete(id);
    for (const id of this.progress.keys()) if (!seen.has(id)) this.progress.delete(id);
  }

  /** How long the driver has stood still with requests waiting in the kernel (0 if it has not, or is not watched now). */
  private standingStill(record: DeviceRecord, slots: Float64Array<ArrayBufferLike>, now: number, watched: boolean): number {
    let count = slots[Slot.TIMEOUTS]!;
    for (let op = 0; op < OPERATIONS; op++) count += slots[opBase(op) + OpSlot.STARTED]! + slots[opBase(op) + OpSlot.ANSWERED]!;
    const last = this.progress.get(record.id);
    if (!watched || !last || last.pid !== record.pid || last.count !== count || inflight(record.kernelPath) === 0) {
      this.progress.set(record.id, { pid: record.pid, count, since: now });
      return 0;
    }
    return now - last.since;
  }

  private kill(record: DeviceRecord, slots: Float64Array<ArrayBufferLike>, why: string): void {
    if (!isAlive(record.pid, record.pidStart)) return;
    const line = `the driver in pid ${record.pid} ${why}; killing it`;
    this.log(`device ${record.id}: ${line}`);
    appendDeviceLog(record.id, line);
    slots[Slot.HEARTBEAT_PID] = 0; // once
    this.progress.delete(record.id);
    try {
      process.kill(record.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }

  private slotsOf(id: string): Float64Array<ArrayBufferLike> | undefined {
    let slots = this.beats.get(id);
    if (!slots) {
      try {
        slots = mapStats(id);
      } catch {
        return undefined;
      }
      this.beats.set(id, slots);
    }
    return slots;
  }
}

/** Requests the kernel holds for a block device (submitted, not completed); 0 if unknown. */
function inflight(kernelPath: string): number {
  if (!kernelPath) return 0;
  try {
    const [reads = 0, writes = 0] = readFileSync(`/sys/block/${basename(kernelPath)}/inflight`, 'utf8').trim().split(/\s+/).map(Number);
    return reads + writes;
  } catch {
    return 0;
  }
}
