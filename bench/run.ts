/**
 * The whole comparison against the peers on this machine, in one run, written to
 * docs/benchmarks.md (tables, targets, scaling), docs/benchmarks.svg (a chart drawn from the same
 * data) and docs/benchmarks.json (the raw numbers).
 *
 * Systems, all RAM-backed:
 *   FUSE+loop path (fio libaio, direct I/O, on the block device)
 *     bdus ram          bdus's FUSE+loop frontend, the ram example driver, over /dev/fuse
 *     bdus ram (2 lanes)  the same served by two threads (`--lanes 2`: docs/performance.md)
 *     bdus ram (io_uring)  the same over FUSE's io_uring (Linux 6.14+; the run switches the
 *                       kernel's enable_uring on for itself and back, and says so)
 *     bdus ram (io_uring, 2 lanes)  the same, two threads each serving half the ring's queues
 *     nbdkit+nbdfuse    nbdkit's memory plugin behind nbdfuse + loop (the C peer, same kernel path)
 *     kernel loop       the kernel loop device over a file in /dev/shm (no user space: the limit)
 *   NBD path (fio's nbd engine over a Unix socket)
 *     bdus export ram   `bdus export ram`
 *     nbdkit memory     `nbdkit memory`
 *
 * Every system of a path gets the same fio job in turn, job by job, repeated, so machine noise
 * hits them alike. Then the scaling runs: 4k random reads by queue depth and
 * maxConcurrentCallbacks, for the ram example and for a driver with 1 ms of latency per request;
 * and the lanes runs (bench/lanes.ts): jobs by the number of threads serving one device.
 *
 *   npm run bench [-- --reps 3 --runtime 5 --scaling-runtime 3]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { ENABLE_URING } from '../src/frontend/fuse/ring.js';
import { execute as sh } from '../src/util/exec.js';
import { ALL_JOBS, precondition, fio as runFio, stop, UNIT, type Measured, type Metric } from './fio.js';
import { lanesLines, lanesRuns, type LanesRow } from './lanes.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = `${ROOT}dist/src/cli/bin.js`;
const SLOW_RAM = `${ROOT}dist/bench/drivers/slow-ram.js`;
const SIZE = '1G';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- Jobs and measurements ----------------------------------------------------------------------

interface Job {
  name: string;
  args: string[];
  /** What the job reports: throughput, or latency (mean and 99th percentile, in us). */
  metrics: Metric[];
}

// bench/fio.ts's jobs, in its order; a latency job reports its 99th percentile too.
const JOBS: Job[] = ALL_JOBS.map(({ name, args, metric }) => ({ name, args, metrics: metric === 'mean' ? ['mean', 'p99'] : [metric] }));

const lowerIsBetter = (metric: Metric) => metric === 'mean' || metric === 'p99';

/** One fio run of SIZE; `target` is the block device's or the NBD URI's fio arguments. */
const fio = (target: string[], args: string[], runtime: number): Promise<Measured> => runFio(target, args, runtime, SIZE);

// ---- Systems ------------------------------------------------------------------------------------

interface System {
  name: string;
  path: 'FUSE+loop' | 'NBD';
  /** fio's arguments that point it at this system. */
  target: string[];
  teardown: () => Promise<void>;
}

function blockTarget(device: string): string[] {
  return [`--filename=${device}`, '--ioengine=libaio'];
}

/** enable_uring as it was before this run switched it on (undefined: untouched, or no such kernel). */
let uringBefore: string | undefined;

/** Whether this kernel has FUSE over io_uring; if so, its parameter is switched on for the run (restoreUring puts it back). */
function enableUring(): boolean {
  if (!existsSync(ENABLE_URING)) return false;
  const before = readFileSync(ENABLE_URING, 'utf8').trim();
  if (before !== 'Y') {
    uringBefore ??= before;
    writeFileSync(ENABLE_URING, 'Y');
  }
  return true;
}

/** The FUSE+loop system over io_uring, with `lanes` lanes, where this kernel has it. */
function uringDevice(lanes: number): () => Promise<System | undefined> {
  return async () => {
    if (!enableUring()) return undefined;
    const name = lanes > 1 ? `bdus ram (io_uring, ${lanes} lanes)` : 'bdus ram (io_uring)';
    return bdusDevice(name, ['ram', '--size', SIZE, '--fuse-io-uring', '--lanes', String(lanes)]);
  };
}

function restoreUring(): void {
  if (uringBefore !== undefined) writeFileSync(ENABLE_URING, uringBefore);
}

async function bdusDevice(name: string, args: string[]): Promise<System> {
  const device = (await sh(process.execPath, [BIN, 'run', ...args, '--frontend', 'fuse'])).trim();
  return {
    name,
    path: 'FUSE+loop',
    target: blockTarget(device),
    teardown: async () => void (await sh(process.execPath, [BIN, 'destroy', '--force', '--no-flush', device])),
  };
}

/** Starts a server that listens on `socket`, and waits until it does. */
async function serve(command: string, args: string[], socket: string): Promise<ChildProcess> {
  rmSync(socket, { force: true });
  const child = spawn(command, args, { stdio: 'ignore' });
  for (let i = 0; i < 200 && !existsSync(socket); i++) await sleep(50);
  if (!existsSync(socket)) throw new Error(`${command} did not listen on ${socket}`);
  return child;
}

async function nbdSystem(name: string, command: string, args: (socket: string) => string[]): Promise<System> {
  const socket = `/tmp/bdus-bench-${name.replace(/\W+/g, '-')}.sock`;
  const child = await serve(command, args(socket), socket);
  return {
    name,
    path: 'NBD',
    target: ['--ioengine=nbd', `--uri=nbd+unix:///?socket=${socket}`],
    teardown: async () => {
      await stop(child);
      rmSync(socket, { force: true });
    },
  };
}

const SYSTEMS: Array<() => Promise<System | undefined>> = [
  () => bdusDevice('bdus ram', ['ram', '--size', SIZE]),
  () => bdusDevice('bdus ram (2 lanes)', ['ram', '--size', SIZE, '--lanes', '2']),
  uringDevice(1),
  uringDevice(2),
  async () => {
    const dir = '/tmp/bdus-bench-nbdfuse';
    mkdirSync(dir, { recursive: true });
    const child = spawn('nbdfuse', [dir, '--socket-activation', 'nbdkit', 'memory', SIZE], { stdio: 'ignore' });
    for (let i = 0; i < 100 && !existsSync(`${dir}/nbd`); i++) await sleep(50);
    const device = (await sh('losetup', ['--find', '--show', '--direct-io=on', `${dir}/nbd`])).trim();
    return {
      name: 'nbdkit+nbdfuse',
      path: 'FUSE+loop',
      target: blockTarget(device),
      teardown: async () => {
        await sh('losetup', ['-d', device]);
        await sh('umount', [dir]).catch(() => undefined);
        await stop(child);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  async () => {
    const file = '/dev/shm/bdus-bench-image';
    await sh('truncate', ['-s', SIZE, file]);
    const device = (await sh('losetup', ['--find', '--show', '--direct-io=on', file])).trim();
    return {
      name: 'kernel loop',
      path: 'FUSE+loop',
      target: blockTarget(device),
      teardown: async () => {
        await sh('losetup', ['-d', device]);
        rmSync(file, { force: true });
      },
    };
  },
  () => nbdSystem('bdus export ram', process.execPath, (socket) => [BIN, 'export', 'ram', '--size', SIZE, '--listen', `unix:${socket}`]),
  () => nbdSystem('nbdkit memory', 'nbdkit', (socket) => ['--foreground', '--exit-with-parent', '-U', socket, 'memory', SIZE]),
];

/** The pairs the targets compare: ours, the other system, and what each job must reach. */
interface Target {
  ours: string;
  other: string;
  /** Minimum speed ratio (ours/other for throughput, other/ours for latency) by job and metric. */
  minimum: (job: Job, metric: Metric) => number | undefined;
}

const TARGETS: Target[] = [
  {
    ours: 'bdus ram',
    other: 'nbdkit+nbdfuse',
    minimum: (job) => (/QD32|^1M/.test(job.name) ? 2 : undefined),
  },
  { ours: 'bdus ram', other: 'kernel loop', minimum: againstLoop },
  { ours: 'bdus ram (2 lanes)', other: 'kernel loop', minimum: againstLoop },
  { ours: 'bdus ram (io_uring)', other: 'kernel loop', minimum: againstLoop },
  { ours: 'bdus ram (io_uring, 2 lanes)', other: 'kernel loop', minimum: againstLoop },
  { ours: 'bdus export ram', other: 'nbdkit memory', minimum: () => 1.3 },
];

/** Issue 19's targets for FUSE+loop against the kernel's loop device. */
function againstLoop(job: Job, metric: Metric): number | undefined {
  if (/QD32/.test(job.name)) return 0.7;
  if (/^1M/.test(job.name)) return 0.8;
  if (/QD1$/.test(job.name) && metric === 'mean') return 1 / 1.2;
  return undefined;
}

// ---- Scaling ------------------------------------------------------------------------------------

const DEPTHS = [1, 4, 16, 64];
const CONCURRENCY = [1, 8, 64];

interface ScalingRow {
  driver: string;
  maxConcurrentCallbacks: number;
  /** 4k random-read IOPS by queue depth, then 1M sequential-read MiB/s by queue depth. */
  iops: number[];
  mibs: number[];
}

async function scaling(runtime: number, log: (s: string) => void): Promise<ScalingRow[]> {
  const rows: ScalingRow[] = [];
  for (const [driver, module] of [['ram', 'ram'], ['ram + 1 ms', SLOW_RAM]] as const) {
    for (const concurrency of CONCURRENCY) {
      const system = await bdusDevice(driver, [module, '--size', '256M', '--max-concurrent-callbacks', String(concurrency)]);
      try {
        const row: ScalingRow = { driver, maxConcurrentCallbacks: concurrency, iops: [], mibs: [] };
        for (const depth of DEPTHS) {
          row.iops.push((await fio(system.target, ['--rw=randread', '--bs=4k', `--iodepth=${depth}`, '--size=256M'], runtime)).iops);
          row.mibs.push((await fio(system.target, ['--rw=read', '--bs=1M', `--iodepth=${depth}`, '--size=256M'], runtime)).mibs);
          log('.');
        }
        rows.push(row);
      } finally {
        await system.teardown();
      }
    }
  }
  return rows;
}

// ---- Report -------------------------------------------------------------------------------------

type Results = Map<string, number[]>;
const key = (job: Job, metric: Metric, system: string) => `${job.name}|${metric}|${system}`;

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function format(value: number, metric: Metric): string {
  if (!Number.isFinite(value)) return '-';
  if (metric === 'iops') return value >= 1000 ? `${(value / 1000).toFixed(1)}k` : value.toFixed(0);
  if (metric === 'mibs') return value.toFixed(0);
  return value.toFixed(1);
}

/** Whether both systems of a target ran (FUSE over io_uring does only where the kernel has it). */
function compared(results: Results, target: Target): boolean {
  return [target.ours, target.other].every((name) => results.has(key(JOBS[0]!, JOBS[0]!.metrics[0]!, name)));
}

/** How many times faster ours is than the other (for latency: the other's over ours). */
function speed(results: Results, job: Job, metric: Metric, ours: string, other: string): number {
  const a = median(results.get(key(job, metric, ours))!);
  const b = median(results.get(key(job, metric, other))!);
  return lowerIsBetter(metric) ? b / a : a / b;
}

function table(results: Results, systems: string[], path: string): string[] {
  const lines = [
    `### ${path} path`,
    '',
    `| job | unit | ${systems.join(' | ')} |`,
    `|---|---|${systems.map(() => '---:').join('|')}|`,
  ];
  for (const job of JOBS) {
    for (const metric of job.metrics) {
      const cells = systems.map((s) => {
        const v = results.get(key(job, metric, s))!;
        return `${format(median(v), metric)} (${format(Math.min(...v), metric)}-${format(Math.max(...v), metric)})`;
      });
      lines.push(`| ${job.name} | ${UNIT[metric]} | ${cells.join(' | ')} |`);
    }
  }
  return lines;
}

function targetLines(results: Results): { lines: string[]; met: number; total: number } {
  const lines = ['| comparison | job | speed ratio | target | met |', '|---|---|---:|---:|:---:|'];
  let met = 0;
  let total = 0;
  for (const target of TARGETS.filter((t) => compared(results, t))) {
    for (const job of JOBS) {
      for (const metric of job.metrics) {
        const minimum = target.minimum(job, metric);
        if (minimum === undefined) continue;
        const ratio = speed(results, job, metric, target.ours, target.other);
        total++;
        if (ratio >= minimum) met++;
        const shown = lowerIsBetter(metric) ? `latency ${(1 / ratio).toFixed(2)}x` : `${ratio.toFixed(2)}x`;
        const wanted = lowerIsBetter(metric) ? `<= ${(1 / minimum).toFixed(2)}x` : `>= ${minimum}x`;
        lines.push(`| ${target.ours} / ${target.other} | ${job.name}${lowerIsBetter(metric) ? ` (${UNIT[metric]})` : ''} | ${shown} | ${wanted} | ${ratio >= minimum ? 'yes' : 'no'} |`);
      }
    }
  }
  return { lines, met, total };
}

/** A horizontal bar chart of bdus's speed relative to each peer, per job (log scale, 1x marked). */
function chart(results: Results): string {
  const rows: Array<{ label: string; ratio: number; minimum: number | undefined }> = [];
  for (const target of TARGETS.filter((t) => compared(results, t))) {
    for (const job of JOBS) {
      for (const metric of job.metrics) {
        rows.push({
          label: `${target.ours} / ${target.other}: ${job.name}${job.metrics.length > 1 ? ` ${metric}` : ''}`,
          ratio: speed(results, job, metric, target.ours, target.other),
          minimum: target.minimum(job, metric),
        });
      }
    }
  }
  const left = 420;
  const width = 360;
  const rowHeight = 18;
  const top = 40;
  const height = top + rows.length * rowHeight + 30;
  const [lo, hi] = [0.05, 8];
  const x = (ratio: number) => Math.round((left + (Math.log(Math.min(Math.max(ratio, lo), hi) / lo) / Math.log(hi / lo)) * width) * 10) / 10;
  const escape = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${left + width + 80}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<text x="10" y="18" font-size="13" font-weight="bold">bdus speed relative to each peer (higher is better; log scale; tick: target)</text>`,
  ];
  for (const tick of [0.1, 0.3, 1, 2, 4]) {
    parts.push(`<line x1="${x(tick)}" y1="${top - 8}" x2="${x(tick)}" y2="${height - 25}" stroke="${tick === 1 ? '#000' : '#ccc'}"/>`);
    parts.push(`<text x="${x(tick)}" y="${height - 10}" text-anchor="middle">${tick}x</text>`);
  }
  rows.forEach((row, i) => {
    const y = top + i * rowHeight;
    const good = row.minimum === undefined || row.ratio >= row.minimum;
    parts.push(`<text x="${left - 6}" y="${y + 12}" text-anchor="end">${escape(row.label)}</text>`);
    parts.push(`<rect x="${x(lo)}" y="${y + 3}" width="${Math.max(1, x(row.ratio) - x(lo))}" height="${rowHeight - 6}" fill="${good ? '#4a8' : '#d64'}"/>`);
    parts.push(`<text x="${x(row.ratio) + 4}" y="${y + 12}">${row.ratio.toFixed(2)}x</text>`);
    if (row.minimum !== undefined) parts.push(`<line x1="${x(row.minimum)}" y1="${y + 1}" x2="${x(row.minimum)}" y2="${y + rowHeight - 1}" stroke="#000" stroke-width="2"/>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

function scalingLines(rows: ScalingRow[]): string[] {
  const lines = [
    '4k random reads (IOPS) and 1M sequential reads (MiB/s) on the FUSE+loop path, by the client\'s queue depth (QD)',
    'and the driver\'s `maxConcurrentCallbacks` (MCC). "ram + 1 ms" is the ram example with 1 ms of latency per request',
    '(`bench/drivers/slow-ram.ts`): its IOPS are bounded by MCC x 1000 and by QD x 1000.',
    '',
    `| driver | MCC | ${DEPTHS.map((d) => `4k QD${d}`).join(' | ')} | ${DEPTHS.map((d) => `1M QD${d}`).join(' | ')} |`,
    `|---|---:|${DEPTHS.map(() => '---:').join('|')}|${DEPTHS.map(() => '---:').join('|')}|`,
  ];
  for (const row of rows) {
    lines.push(`| ${row.driver} | ${row.maxConcurrentCallbacks} | ${row.iops.map((v) => format(v, 'iops')).join(' | ')} | ${row.mibs.map((v) => format(v, 'mibs')).join(' | ')} |`);
  }
  return lines;
}

async function machine(): Promise<string> {
  const version = async (file: string, args: string[]) => (await sh(file, args).catch(() => '?')).split('\n')[0]!.trim();
  const cpu = cpus();
  return [
    `${cpu.length} x ${cpu[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM`,
    `kernel ${(await sh('uname', ['-r'])).trim()}, node ${process.version}, ${await version('fio', ['--version'])}, ${await version('nbdkit', ['--version'])}`,
  ].join('; ');
}

// ---- Main ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      reps: { type: 'string', default: '3' },
      runtime: { type: 'string', default: '5' },
      'scaling-runtime': { type: 'string', default: '3' },
      out: { type: 'string', default: `${ROOT}docs/benchmarks` },
    },
  });
  const reps = Number(values.reps);
  const runtime = Number(values.runtime);
  const log = (s: string) => process.stderr.write(s);
  const started = new Date();
  const systems: System[] = [];
  const results: Results = new Map();
  let scaled: ScalingRow[];
  let lanes: LanesRow[];
  // enable_uring goes back as it was however the run ends (SIGINT included: fio.ts).
  try {
    try {
      for (const make of SYSTEMS) {
        const system = await make();
        if (system) systems.push(system);
      }
      if (uringBefore !== undefined) log(`enable_uring was ${uringBefore}: switched on for this run, put back at the end\n`);
      // Fill every system first, so that reads read data, not holes, and precondition it (fio.ts).
      for (const s of systems) await precondition(s.target, SIZE);
      // Progress: one line per fio run, with what is left (runtime plus the 1 s ramp per run).
      const runs = reps * JOBS.length * systems.length;
      let done = 0;
      for (let rep = 0; rep < reps; rep++) {
        for (const job of JOBS) {
          for (const s of systems) {
            const measured = await fio(s.target, job.args, runtime);
            for (const metric of job.metrics) {
              const k = key(job, metric, s.name);
              results.set(k, [...(results.get(k) ?? []), measured[metric]]);
            }
            const left = Math.ceil(((runs - ++done) * (runtime + 1)) / 60);
            const shown = job.metrics.map((m) => `${measured[m].toFixed(1)} ${UNIT[m]}`).join(', ');
            log(`[${done}/${runs}] ${job.name}, ${s.name}: ${shown} (about ${left} min left before the scaling runs)\n`);
          }
        }
      }
    } finally {
      for (const s of [...systems].reverse()) await s.teardown().catch((e: Error) => log(`teardown ${s.name}: ${e.message}\n`));
    }
    log('scaling runs (a dot per run): ');
    scaled = await scaling(Number(values['scaling-runtime']), log);
    log('\nlanes runs (a dot per run): ');
    lanes = await lanesRuns(BIN, Number(values['scaling-runtime']), 2, log, enableUring());
    log('\n');
  } finally {
    restoreUring();
  }

  const names = (path: string) => systems.filter((s) => s.path === path).map((s) => s.name);
  const targets = targetLines(results);
  const lines = [
    '# Benchmarks',
    '',
    `Generated by \`npm run bench -- --reps ${reps} --runtime ${runtime} --scaling-runtime ${values['scaling-runtime']}\` (\`bench/run.ts\`) on ${started.toISOString().slice(0, 10)}; do not edit by hand.`,
    `The chart is \`docs/benchmarks.svg\`, the raw numbers \`docs/benchmarks.json\`.`,
    '',
    `Machine: ${await machine()}.`,
    '',
    ...(uringBefore !== undefined ? [`FUSE over io_uring: the kernel's enable_uring was ${uringBefore}; this run switched it on for itself and put it back.`, ''] : []),
    `fio, direct I/O, 1 GiB RAM-backed systems filled with data first (1 MiB writes), then written once more with 4 KiB writes (preconditioned: bench/fio.ts); every job ${runtime} s after a 1 s ramp, ${reps} repetitions interleaved`,
    'system by system and job by job; median (min-max).',
    '',
    ...table(results, names('FUSE+loop'), 'FUSE+loop'),
    '',
    ...table(results, names('NBD'), 'NBD'),
    '',
    `## Targets (${targets.met} of ${targets.total} met)`,
    '',
    'Speed ratio: bdus over the other system for throughput; for latency, bdus\'s latency as a multiple of the other\'s.',
    '',
    ...targets.lines,
    '',
    '![bdus speed relative to each peer](benchmarks.svg)',
    '',
    '## Scaling',
    '',
    ...scalingLines(scaled),
    '',
    '## Lanes: more than one core per device',
    '',
    ...lanesLines(lanes, cpus().length),
    '',
  ];
  writeFileSync(`${values.out}.md`, lines.join('\n'));
  writeFileSync(`${values.out}.svg`, chart(results));
  writeFileSync(`${values.out}.json`, `${JSON.stringify({ started, reps, runtime, results: Object.fromEntries(results), scaling: scaled, lanes }, null, 1)}\n`);
  process.stdout.write(`${readFileSync(`${values.out}.md`, 'utf8')}`);
}

await main();
