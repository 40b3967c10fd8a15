/**
 * The daemon's part of a device's statistics: its life (hot swaps and recoveries, and how long
 * each took), written into the device's stats file beside the driver's request counters.
 */
import { rmSync } from 'node:fs';
import { claimLayout, mapStats, Slot, statsPath } from './layout.js';

/** A change of driver: a hot swap (the old one handed over) or a recovery (the old one died). */
export type DriverChange = 'swap' | 'recovery';

const SLOTS = {
  swap: [Slot.SWAPS, Slot.SWAP_LAST_MS, Slot.SWAP_MAX_MS, Slot.SWAP_TOTAL_MS],
  recovery: [Slot.RECOVERIES, Slot.RECOVERY_LAST_MS, Slot.RECOVERY_MAX_MS, Slot.RECOVERY_TOTAL_MS],
} as const;

/** Counts a change of driver that took `ms` (from the rerun or the death until the new driver served). */
export function countDriverChange(deviceId: string, change: DriverChange, ms: number): void {
  try {
    const slots = mapStats(deviceId);
    claimLayout(slots);
    const [count, last, max, total] = SLOTS[change];
    slots[count]!++;
    slots[last] = ms;
    if (ms > slots[max]!) slots[max] = ms;
    slots[total]! += ms;
  } catch {
    // statistics are a courtesy: never fail the daemon over them
  }
}

/** Removes a gone device's statistics. */
export function removeStats(deviceId: string): void {
  rmSync(statsPath(deviceId), { force: true });
}
