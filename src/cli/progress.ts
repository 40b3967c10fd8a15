/**
 * Progress on long waits: a command that waits on a driver says what it waits for once the wait
 * passes a few seconds, and again every few seconds, on stderr, with the device's live counts
 * (src/stats), so that a slow driver is told from a stuck one.
 */
import { withDaemon } from '../control/client.js';
import type { DeviceStatsEntry } from '../control/protocol.js';
import { inFlight } from '../stats/snapshot.js';

const FIRST_MS = 3000;
const EVERY_MS = 5000;

/**
 * Resolves as `work` does; meanwhile, from `firstMs` on and every EVERY_MS, writes what `say`
 * makes of the device's statistics (nothing if it gives undefined or the device is gone).
 */
export async function withProgress<T>(work: Promise<T>, id: string, say: (seconds: number, entry: DeviceStatsEntry) => string | undefined, firstMs = FIRST_MS): Promise<T> {
  const started = Date.now();
  let timer: NodeJS.Timeout | undefined;
  let done = false;
  const tick = async () => {
    const [entry] = await withDaemon((c) => c.request('stats', { id })).catch(() => []);
    if (done) return;
    const line = entry && say(Math.round((Date.now() - started) / 1000), entry);
    if (line) process.stderr.write(`bdus: ${line}\n`);
    timer = setTimeout(() => void tick(), EVERY_MS);
  };
  timer = setTimeout(() => void tick(), firstMs);
  try {
    return await work;
  } finally {
    done = true;
    clearTimeout(timer);
  }
}

/** "3 requests in flight, 2 callbacks running (1 waiting)". */
export function activityOf(entry: DeviceStatsEntry): string {
  const stats = entry.stats;
  if (!stats) return 'no statistics yet';
  const n = inFlight(stats);
  const waiting = stats.waiting > 0 ? ` (${stats.waiting} waiting for a slot)` : '';
  return `${n} request${n === 1 ? '' : 's'} in flight, ${stats.callbacks} callback${stats.callbacks === 1 ? '' : 's'} running${waiting}`;
}
