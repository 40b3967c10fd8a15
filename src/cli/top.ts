/**
 * `bdus top`: every device's activity on one screen, redrawn every interval, as top and iostat
 * users expect. Plain ANSI (the alternate screen, cursor home, clear to end of line): it draws
 * the same over SSH, in tmux or in a console. q, Q or Ctrl-C quits and gives the terminal back
 * as it was, also on SIGTERM or a hang-up. Without a terminal (or with --batch) it prints frames
 * one after another, as `top -b`.
 */
import { ControlConnection } from '../control/client.js';
import type { DeviceStatsEntry } from '../control/protocol.js';
import { errors, inFlight, READS, WRITES } from '../stats/snapshot.js';
import { formatCount, formatLatency, formatMiB, groupActivity, parseInterval, table } from './stats.js';
import { parseCommandLine } from './suggest.js';
import { UsageError } from './usage.js';

export const TOP_HELP = `usage: bdus top [--interval S] [--batch] [--iterations N]

Every device's activity, redrawn every interval (default 1 s): reads and writes per second, MiB/s,
read and write latency p50/p99 over the interval, requests in flight, errors so far, driver pid,
state and frontend; devices sorted by requests per second. q or Ctrl-C quits.

  --interval S      seconds between frames (default 1; decimals allowed)
  -b, --batch       print frames one after another, without redrawing (the default without a terminal)
  -n, --iterations N  stop after N frames
`;

export const TOP_OPTIONS = {
  interval: { type: 'string' },
  batch: { type: 'boolean', short: 'b' },
  iterations: { type: 'string', short: 'n' },
} as const;

const ESC = '\x1b[';
const ENTER = `${ESC}?1049h${ESC}?25l`;
const LEAVE = `${ESC}?25h${ESC}?1049l`;

export async function topCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine('top', { args: argv, options: TOP_OPTIONS, allowPositionals: true });
  if (positionals.length > 0) throw new UsageError('bdus top: takes no device; it shows them all');
  const interval = values.interval === undefined ? 1 : parseInterval(values.interval);
  const iterations = values.iterations === undefined ? Infinity : Number(values.iterations);
  if (values.iterations !== undefined && !(/^\d+$/.test(values.iterations) && iterations >= 1)) {
    throw new UsageError(`invalid --iterations '${values.iterations}': expected a whole number >= 1`);
  }
  const screen = !values.batch && process.stdout.isTTY === true;
  const control = await ControlConnection.open();
  let stop!: () => void;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  const stdin = process.stdin;
  const onKey = (key: Buffer) => {
    if (key.includes(0x71) || key.includes(0x51) || key.includes(0x03)) stop(); // q, Q, Ctrl-C
  };
  const onSignal = () => stop();
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal).on('SIGHUP', onSignal);
  if (screen) {
    process.stdout.write(ENTER);
    if (stdin.isTTY) stdin.setRawMode(true);
    stdin.on('data', onKey).resume();
  }
  let before = new Map<string, DeviceStatsEntry>();
  let frame = '';
  const redraw = () => screen && process.stdout.write(`${ESC}H${frame}${ESC}J`);
  process.stdout.on('resize', redraw);
  try {
    for (let n = 0; n < iterations; n++) {
      const entries = await control.request('stats', {}).catch((error: Error) => error);
      frame = entries instanceof Error ? `bdus top: ${entries.message}\n` : draw(entries, before, interval, screen);
      if (!(entries instanceof Error)) before = new Map(entries.map((e) => [e.record.id, e]));
      if (screen) redraw();
      else process.stdout.write(`${frame}\n`);
      if (n + 1 >= iterations) break;
      let timer: NodeJS.Timeout | undefined;
      const next = await Promise.race([stopped.then(() => false), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), interval * 1000)))]);
      clearTimeout(timer);
      if (!next) break;
    }
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal).off('SIGHUP', onSignal);
    process.stdout.off('resize', redraw);
    if (screen) {
      stdin.off('data', onKey).pause();
      if (stdin.isTTY) stdin.setRawMode(false);
      process.stdout.write(LEAVE);
    }
    control.close();
  }
  return 0;
}

/** One frame: a header line and a row per device, cut to the terminal's size on a screen. */
function draw(entries: DeviceStatsEntry[], before: Map<string, DeviceStatsEntry>, interval: number, screen: boolean): string {
  const header = ['DEVICE', 'FRONTEND', 'STATE', 'PID', 'R/S', 'RMIB/S', 'R P50', 'R P99', 'W/S', 'WMIB/S', 'W P50', 'W P99', 'INFL', 'ERRORS'];
  const rows = entries.map((e) => {
    const last = before.get(e.record.id);
    const r = groupActivity(e, last, READS);
    const w = groupActivity(e, last, WRITES);
    const stats = e.stats;
    const row = [
      e.record.path,
      e.record.frontend,
      e.record.state,
      e.record.pid === 0 ? 'none' : String(e.record.pid),
      formatCount(Math.round(r.iops)),
      formatMiB(r.bytesPerSecond),
      formatLatency(r.p50),
      formatLatency(r.p99),
      formatCount(Math.round(w.iops)),
      formatMiB(w.bytesPerSecond),
      formatLatency(w.p50),
      formatLatency(w.p99),
      stats ? String(inFlight(stats)) : '-',
      stats ? String(errors(stats)) : '-',
    ];
    return { row, iops: r.iops + w.iops };
  });
  rows.sort((a, b) => b.iops - a.iops);
  const lines = table([header, ...rows.map((r) => r.row)], 4);
  const time = new Date().toTimeString().slice(0, 8);
  const title = `bdus top - ${time}  ${entries.length} device${entries.length === 1 ? '' : 's'}  every ${interval} s${screen ? '  (q quits)' : ''}`;
  let all = [title, '', ...(entries.length ? lines : ['no devices'])];
  const width = process.stdout.columns;
  const height = process.stdout.rows;
  if (screen && height) all = all.slice(0, height - 1);
  if (screen && width) all = all.map((line) => line.slice(0, width));
  return all.map((line) => (screen ? `${line}${ESC}K\n` : `${line}\n`)).join('');
}
