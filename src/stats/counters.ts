/**
 * The request layer's counters (see layout.ts): what it calls on the request path. Each call is
 * a few stores into one Float64Array; the clock is read twice per request (performance.now(),
 * no allocation). Until share() the array is the process's own (an NBD export, bdus/testing);
 * a device's driver shares it through the device's stats file.
 */
import { ERRNO_SLOTS, OpSlot, Slot, TOTAL_SLOTS, bucketOf, claimLayout, mapStats, opBase } from './layout.js';

/** How often a driver process beats (the daemon's patience: src/control/watchdog.ts). */
export const HEARTBEAT_MS = 250;

export class RequestCounters {
  private heart: NodeJS.Timeout | undefined;
  /** The slots (layout.ts); replaced by the shared file's on share(). */
  slots: Float64Array<ArrayBufferLike> = new Float64Array(TOTAL_SLOTS);
  /**
   * Runs at every beat, in the main thread of a device with lanes (src/lane): folds the lanes'
   * counts into these slots and returns the oldest of their beats.
   */
  onBeat: (() => number) | undefined;

  /**
   * Counts in the device's stats file from now on, on top of what earlier drivers of the device
   * counted there. Counts made before (there are none: the device takes requests only later) are
   * dropped.
   */
  share(deviceId: string): void {
    const shared = mapStats(deviceId);
    claimLayout(shared);
    // Gauges are this driver's: whatever a dead one left there is gone with it.
    shared[Slot.CALLBACKS] = 0;
    shared[Slot.WAITING] = 0;
    this.slots = shared;
  }

  /**
   * Beats every HEARTBEAT_MS from now (the driver instance exists) for as long as the process's
   * event loop turns (the timer does not keep the process alive): a driver stuck in a callback
   * that never returns stops beating, and the daemon ends it (src/control/watchdog.ts).
   */
  startHeartbeat(): void {
    const beat = () => {
      // A lane stuck in a callback stops the process's beat too: the daemon's watch then sees it.
      this.slots[Slot.HEARTBEAT] = Math.min(Date.now(), this.onBeat?.() ?? Infinity);
      this.slots[Slot.HEARTBEAT_PID] = process.pid;
    };
    beat();
    clearInterval(this.heart);
    this.heart = setInterval(beat, HEARTBEAT_MS).unref();
  }

  stopHeartbeat(): void {
    clearInterval(this.heart);
    this.heart = undefined;
  }

  /** A request is admitted. */
  started(op: number): void {
    this.slots[opBase(op) + OpSlot.STARTED]!++;
  }

  /**
   * A request is answered: errno 0 with `bytes` done in `us` microseconds, or an error (whose
   * latency is not kept: a timeout's is the timeout, an early EINVAL's says nothing).
   */
  answered(op: number, errno: number, bytes: number, us: number): void {
    const s = this.slots;
    const base = opBase(op);
    s[base + OpSlot.ANSWERED]!++;
    if (errno !== 0) {
      s[base + OpSlot.ERRORS]!++;
      s[base + OpSlot.ERRNOS + (errno < ERRNO_SLOTS ? errno : 0)]!++;
      return;
    }
    s[base + OpSlot.BYTES]! += bytes;
    s[base + OpSlot.LATENCY_SUM]! += us;
    if (us > s[base + OpSlot.LATENCY_MAX]!) s[base + OpSlot.LATENCY_MAX] = us;
    s[base + OpSlot.HISTOGRAM + bucketOf(us)]!++;
  }

  add(slot: number, count = 1): void {
    this.slots[slot]! += count;
  }
}
