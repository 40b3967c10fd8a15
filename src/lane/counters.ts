/**
 * A lane's counters reach the device's stats file through the main thread. The request layer
 * counts with plain stores (src/stats/counters.ts); two threads storing into the same doubles
 * would lose counts, so each lane counts into an array of its own (a SharedArrayBuffer, still
 * plain stores), and the main thread adds what each lane counted since its last look to the
 * device's slots, every heartbeat. `bdus stats` thus sees a lane's requests up to a beat late,
 * and the sum is exact.
 */
import { OPERATIONS, OpSlot, Slot, TOTAL_SLOTS, opBase } from '../stats/layout.js';

/** Slots the main thread keeps for itself: the file's layout, and the beat (a lane's beat is its own). */
const OWN = new Set<number>([Slot.VERSION, Slot.HEARTBEAT, Slot.HEARTBEAT_PID]);
/** Slots that hold the largest value seen, not a count. */
const MAXIMA = new Set<number>(Array.from({ length: OPERATIONS }, (_, op) => opBase(op) + OpSlot.LATENCY_MAX));

export class LaneCounters {
  /** Where the lane counts: share its buffer with the lane's thread. */
  readonly slots = new Float64Array(new SharedArrayBuffer(TOTAL_SLOTS * 8));
  /** What the lane had counted at the last fold. */
  private readonly seen = new Float64Array(TOTAL_SLOTS);

  /** Adds what the lane counted since the last fold to `into` (the device's slots). */
  fold(into: Float64Array<ArrayBufferLike>): void {
    const { slots, seen } = this;
    for (let i = 0; i < TOTAL_SLOTS; i++) {
      const value = slots[i]!;
      if (value === seen[i] || OWN.has(i)) continue;
      if (MAXIMA.has(i)) into[i] = Math.max(into[i]!, value);
      else into[i]! += value - seen[i]!;
      seen[i] = value;
    }
  }

  /** When the lane's event loop last turned (Date.now()), or 0 before it first did. */
  get heartbeat(): number {
    return this.slots[Slot.HEARTBEAT]!;
  }
}
