/** `bdus stats`: one device's statistics, once (totals) or every interval (rates, as iostat). */
import { withDaemon, type ControlConnection } from '../control/client.js';
import { lookUp } from '../control/manage.js';
import type { DeviceStatsEntry } from '../control/protocol.js';
import { activity, inFlight, READS, WRITES, type Activity, type DeviceStats, type OperationName } from '../stats/snapshot.js';
import { parseCommandLine } from './suggest.js';
import { UsageError } from './usage.js';

export const STATS_HELP = `usage: bdus stats <path or id> [--json] [--interval S [--count N]]

One device's statistics, kept by its request layer since the device was created (across its
drivers: hot swaps and recoveries keep counting): per request type the requests, bytes, errors
by errno and latency percentiles (from admission to answer); requests in flight, callbacks
waiting for a slot, timeouts, transfer retries, re-sent requests; hot swaps and recoveries with
how long they took. See docs/observability.md.

  --json          the same as JSON (with --interval: one line per interval)
  --interval S    every S seconds (decimals allowed), the rates over the last interval, until
                  Ctrl-C or --count lines
  --count N       stop after N intervals
`;

export const STATS_OPTIONS = { json: { type: 'boolean' }, interval: { type: 'string' }, count: { type: 'string' } } as const;

export async function statsCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine('stats', { args: argv, options: STATS_OPTIONS, allowPositionals: true });
  if (positionals.length !== 1) throw new UsageError('bdus stats: give exactly one device (a path or an id)');
  const interval = values.interval === undefined ? undefined : parseInterval(values.interval);
  const count = values.count === undefined ? Infinity : parseCount(values.count);
  if (values.count !== undefined && interval === undefined) throw new UsageError('bdus stats: --count goes with --interval');
  return withDaemon(async (c) => {
    const { id } = await lookUp(c, positionals[0]!);
    const first = await statsOf(c, id);
    if (interval === undefined) {
      process.stdout.write(values.json ? `${JSON.stringify(withSummary(first), null, 2)}\n` : totals(first));
      return 0;
    }
    let before = first;
    if (!values.json) process.stdout.write(`${first.record.path} (${first.record.frontend}), every ${interval} s\n${intervalHeader()}\n`);
    for (let n = 0; n < count; n++) {
      await new Promise((resolve) => setTimeout(resolve, interval * 1000));
      const now = await statsOf(c, id).catch(() => undefined);
      if (!now) {
        process.stderr.write(`bdus: ${first.record.path} is gone\n`);
        return 1;
      }
      process.stdout.write(values.json ? `${JSON.stringify(withSummary(now, before))}\n` : `${intervalLine(now, before)}\n`);
      before = now;
    }
    return 0;
  });
}

export function parseInterval(text: string): number {
  const seconds = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || !(seconds >= 0.1) || seconds > 86400) throw new UsageError(`invalid --interval '${text}': expected seconds, from 0.1 to 86400`);
  return seconds;
}

function parseCount(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new UsageError(`invalid --count '${text}': expected a whole number >= 1`);
  return Number(text);
}

async function statsOf(c: ControlConnection, id: string): Promise<DeviceStatsEntry> {
  const [entry] = await c.request('stats', { id });
  return entry!;
}

const EMPTY: DeviceStats = {
  operations: {},
  timeouts: 0,
  transferRetries: 0,
  resent: 0,
  restartFailures: 0,
  callbacks: 0,
  waiting: 0,
  swaps: { count: 0, lastMs: 0, maxMs: 0, totalMs: 0 },
  recoveries: { count: 0, lastMs: 0, maxMs: 0, totalMs: 0 },
};

/** The span between two entries (s), or the device's age without `before`. */
export function span(now: DeviceStatsEntry, before?: DeviceStatsEntry): number {
  return ((before ? now.takenAt - before.takenAt : now.takenAt - now.record.createdAt) || 1) / 1000;
}

/** Activity of a group of request types (summed counts; latencies of the busiest one). */
export function groupActivity(now: DeviceStatsEntry, before: DeviceStatsEntry | undefined, ops: readonly OperationName[]): Activity {
  const seconds = span(now, before);
  const parts = ops.map((op) => activity(now.stats?.operations[op], before?.stats?.operations[op], seconds));
  const busiest = parts.reduce((a, b) => (b.requests > a.requests ? b : a));
  const sum = (key: 'requests' | 'bytes' | 'errors' | 'iops' | 'bytesPerSecond') => parts.reduce((n, p) => n + p[key], 0);
  return { ...busiest, requests: sum('requests'), bytes: sum('bytes'), errors: sum('errors'), iops: sum('iops'), bytesPerSecond: sum('bytesPerSecond') };
}

/** The entry with each request type's activity added (percentiles over the interval, or the device's life). */
function withSummary(now: DeviceStatsEntry, before?: DeviceStatsEntry): object {
  const seconds = span(now, before);
  const stats = now.stats ?? EMPTY;
  const operations = Object.fromEntries(
    Object.entries(stats.operations).map(([op, o]) => {
      const { histogram: _, ...rest } = o;
      return [op, { ...rest, ...activity(o, before?.stats?.operations[op as OperationName], seconds) }];
    }),
  );
  const { record } = now;
  return { id: record.id, path: record.path, frontend: record.frontend, state: record.state, pid: record.pid, takenAt: now.takenAt, seconds, ...stats, operations };
}

export function formatLatency(us: number): string {
  if (us === 0) return '-';
  if (us < 1000) return `${Math.round(us)}µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)}ms`;
  return `${(us / 1e6).toFixed(2)}s`;
}

export function formatCount(n: number): string {
  if (n < 1e4) return Number.isInteger(n) ? String(n) : n.toFixed(1);
  if (n < 1e7) return `${(n / 1e3).toFixed(1)}k`;
  return `${(n / 1e6).toFixed(1)}M`;
}

export function formatMiB(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}

function totals(entry: DeviceStatsEntry): string {
  const { record } = entry;
  const stats = entry.stats ?? EMPTY;
  const seconds = span(entry);
  const lines = [`${record.path} (${record.frontend}, ${record.state}, driver pid ${record.pid === 0 ? 'none' : record.pid}), over ${formatDuration(seconds)}`, ''];
  const rows = [['REQUEST', 'COUNT', 'BYTES', 'PER S', 'MIB/S', 'ERRORS', 'IN FLIGHT', 'P50', 'P90', 'P99', 'MAX']];
  for (const [op, o] of Object.entries(stats.operations)) {
    const a = activity(o, undefined, seconds);
    const errnos = Object.entries(o.errnos).map(([name, n]) => `${name} ${n}`).join(', ');
    rows.push([op, formatCount(o.requests), formatCount(o.bytes), formatCount(a.iops), formatMiB(a.bytesPerSecond), errnos ? `${o.errors} (${errnos})` : '0', String(o.inFlight), formatLatency(a.p50), formatLatency(a.p90), formatLatency(a.p99), formatLatency(a.max)]);
  }
  lines.push(...(rows.length > 1 ? table(rows) : ['no requests yet']), '');
  const changes = (c: DeviceStats['swaps']) => (c.count === 0 ? '0' : `${c.count} (last ${c.lastMs} ms, longest ${c.maxMs} ms)`);
  lines.push(
    `in flight: ${inFlight(stats)}   callbacks running: ${stats.callbacks}   waiting for a slot: ${stats.waiting}`,
    `timeouts: ${stats.timeouts}   transfer retries: ${stats.transferRetries}   re-sent after a driver died: ${stats.resent} (failed at restartLimit: ${stats.restartFailures})`,
    `hot swaps: ${changes(stats.swaps)}   recoveries: ${changes(stats.recoveries)}`,
  );
  return `${lines.join('\n')}\n`;
}

function formatDuration(seconds: number): string {
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function intervalHeader(): string {
  return ['TIME    ', 'R/S', 'RMIB/S', 'R P99', 'W/S', 'WMIB/S', 'W P99', 'OTHER/S', 'INFL', 'ERRORS'].map(pad).join(' ');
}

function intervalLine(now: DeviceStatsEntry, before: DeviceStatsEntry): string {
  const r = groupActivity(now, before, READS);
  const w = groupActivity(now, before, WRITES);
  const all = Object.keys({ ...now.stats?.operations }) as OperationName[];
  const other = all.filter((op) => !READS.includes(op) && !WRITES.includes(op));
  const o = other.length ? groupActivity(now, before, other) : undefined;
  const errors = r.errors + w.errors + (o?.errors ?? 0);
  const time = new Date(now.takenAt).toTimeString().slice(0, 8);
  return [time, formatCount(r.iops), formatMiB(r.bytesPerSecond), formatLatency(r.p99), formatCount(w.iops), formatMiB(w.bytesPerSecond), formatLatency(w.p99), formatCount(o?.iops ?? 0), String(inFlight(now.stats ?? EMPTY)), String(errors)]
    .map(pad)
    .join(' ');
}

function pad(cell: string): string {
  return cell.padStart(8);
}

/** Rows as aligned columns: the first `left` columns (names) left-aligned, the rest (numbers) right-aligned. */
export function table(rows: string[][], left = 1): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => (i < left ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  '));
}
