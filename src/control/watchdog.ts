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
 */
import type { DeviceRecord } from './protocol.js';
import { LAYOUT_VERSION, mapStats, Slot } from '../stats/layout.js';
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

  constructor(private readonly log: (line: string) => void) {}

  /** Kills the drivers of `records` that are stuck. */
  check(records: readonly DeviceRecord[]): void {
    const now = Date.now();
    const seen = new Set<string>();
    for (const record of records) {
      seen.add(record.id);
      if (record.pid === 0) continue;
      const slots = this.slotsOf(record.id);
      // Only the beats of this driver count (a new one's first beat comes as its instance is made).
      if (!slots || slots[Slot.VERSION] !== LAYOUT_VERSION || slots[Slot.HEARTBEAT_PID] !== record.pid) continue;
      const silent = now - slots[Slot.HEARTBEAT]!;
      if (silent <= Math.max(record.attributes.requestTimeout, LEAST_MS) + GRACE_MS || !isAlive(record.pid, record.pidStart)) continue;
      const line = `the driver in pid ${record.pid} has not run for ${silent} ms (requestTimeout ${record.attributes.requestTimeout} ms): its event loop is stuck; killing it`;
      this.log(`device ${record.id}: ${line}`);
      appendDeviceLog(record.id, line);
      slots[Slot.HEARTBEAT_PID] = 0; // once
      try {
        process.kill(record.pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    for (const id of this.beats.keys()) if (!seen.has(id)) this.beats.delete(id);
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
