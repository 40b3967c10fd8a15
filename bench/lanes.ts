/**
 * The lanes runs of `npm run bench` (bench/run.ts): jobs by lanes (the threads serving one
 * device), for three drivers. `pattern` computes every byte it reads in JavaScript (its thread
 * is the bound: what lanes are for); `file` on a file in /dev/shm leaves the work to the kernel
 * (its copies, made at once in the driver's thread: src/drivers/file-io.ts), with the kernel's
 * loop device on the same file beside it; `ram` answers from memory the lanes share (the headline driver, the lanes' own cost), and
 * `ram (io_uring)` the same over FUSE's ring, where each lane serves its own CPUs' queues;
 * `ram (NBD export)` is `bdus export ram`, a lane per connection. Two fio jobs (threads, on
 * whichever CPUs the scheduler gives them; two NBD connections) beside one: jobs by lanes.
 * Lane counts alternate within each repetition, so noise hits them alike.
 */
import { spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { execute as sh } from '../src/util/exec.js';
import { fio, precondition, UNIT, type Metric } from './fio.js';

const SIZE = '1G';
const LANES = [1, 2];

interface LaneJob {
  readonly name: string;
  readonly args: string[];
  readonly metric: Metric;
  /** Read-only drivers (pattern) skip writes. */
  readonly writes?: boolean;
}

const JOBS: readonly LaneJob[] = [
  { name: '4k randread QD32', args: ['--rw=randread', '--bs=4k', '--iodepth=32'], metric: 'iops' },
  { name: '4k randread 2 jobs x QD16', args: ['--rw=randread', '--bs=4k', '--iodepth=16', '--numjobs=2', '--group_reporting'], metric: 'iops' },
  { name: '4k randwrite QD32', args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], metric: 'iops', writes: true },
  { name: '1M seqread QD8', args: ['--rw=read', '--bs=1M', '--iodepth=8'], metric: 'mibs' },
  { name: '4k randread QD1', args: ['--rw=randread', '--bs=4k', '--iodepth=1'], metric: 'mean' },
];

export interface LanesRow {
  driver: string;
  job: string;
  metric: Metric;
  /** Median by lane count (LANES), then the kernel loop device's where it ran. */
  values: number[];
  loop?: number;
}

const IMAGE = '/dev/shm/bdus-bench-lanes';

interface Subject {
  readonly driver: string;
  readonly args: string[];
  readonly writes: boolean;
  /**
   * Preconditioned before its jobs, as bench/run.ts's systems are (fio.ts: written whole with
   * 1 MiB writes, then once more with 4 KiB writes): a read of a page it never had costs it
   * nothing, and a page's first touch from the other side would weigh on the 4k jobs.
   */
  readonly fill?: boolean;
  /** Served by `bdus export` to fio's nbd engine (a connection per fio job) instead of a device. */
  readonly exported?: boolean;
}

/** fio's arguments for a subject served by `lanes` lanes, and how to end it. */
async function serve(bin: string, subject: Subject, lanes: number): Promise<{ target: string[]; end: () => Promise<unknown> }> {
  if (!subject.exported) {
    const device = (await sh(process.execPath, [bin, 'run', ...subject.args, '--lanes', String(lanes), '--frontend', 'fuse'])).trim();
    return { target: [`--filename=${device}`, '--ioengine=libaio'], end: () => sh(process.execPath, [bin, 'destroy', '--force', '--no-flush', device]) };
  }
  const socket = `/tmp/bdus-bench-lanes-${process.pid}.sock`;
  rmSync(socket, { force: true });
  const child = spawn(process.execPath, [bin, 'export', ...subject.args, '--lanes', String(lanes), '--listen', `unix:${socket}`], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  for (let i = 0; i < 200 && !existsSync(socket); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  const end = async () => {
    child.kill('SIGTERM');
    await exited;
    rmSync(socket, { force: true });
  };
  if (!existsSync(socket)) {
    await end();
    throw new Error(`bdus export ${subject.args.join(' ')} did not listen on ${socket}`);
  }
  return { target: ['--ioengine=nbd', `--uri=nbd+unix:///?socket=${socket}`], end };
}

/** `ring`: this kernel has FUSE over io_uring, switched on (bench/run.ts). */
export async function lanesRuns(bin: string, runtime: number, reps: number, log: (s: string) => void, ring: boolean): Promise<LanesRow[]> {
  await sh('fio', ['--name=fill', `--filename=${IMAGE}`, '--rw=write', '--bs=1M', `--size=${SIZE}`]);
  const subjects: Subject[] = [
    { driver: 'pattern', args: ['pattern', '--size', SIZE], writes: false },
    { driver: 'file (/dev/shm)', args: ['file', IMAGE], writes: true },
    { driver: 'ram', args: ['ram', '--size', SIZE], writes: true, fill: true },
    ...(ring ? [{ driver: 'ram (io_uring)', args: ['ram', '--size', SIZE, '--fuse-io-uring'], writes: true, fill: true }] : []),
    { driver: 'ram (NBD export)', args: ['ram', '--size', SIZE], writes: true, fill: true, exported: true },
  ];
  const samples = new Map<string, number[]>();
  const add = (k: string, v: number) => samples.set(k, [...(samples.get(k) ?? []), v]);
  try {
    for (let rep = 0; rep < reps; rep++) {
      for (const subject of subjects) {
        for (const lanes of LANES) {
          const { target, end } = await serve(bin, subject, lanes);
          try {
            if (subject.fill) await precondition(target, SIZE);
            for (const job of JOBS.filter((j) => subject.writes || !j.writes)) {
              add(`${subject.driver}|${job.name}|${lanes}`, (await fio(target, job.args, runtime, SIZE))[job.metric]);
              log('.');
            }
          } finally {
            await end();
          }
        }
      }
      const loop = (await sh('losetup', ['--find', '--show', '--direct-io=on', IMAGE])).trim();
      try {
        for (const job of JOBS) {
          add(`loop|${job.name}`, (await fio([`--filename=${loop}`, '--ioengine=libaio'], job.args, runtime, SIZE))[job.metric]);
          log('.');
        }
      } finally {
        await sh('losetup', ['-d', loop]);
      }
    }
  } finally {
    rmSync(IMAGE, { force: true });
  }
  const rows: LanesRow[] = [];
  for (const subject of subjects) {
    for (const job of JOBS.filter((j) => subject.writes || !j.writes)) {
      const values = LANES.map((lanes) => median(samples.get(`${subject.driver}|${job.name}|${lanes}`)!));
      const loop = subject.writes && !subject.exported ? { loop: median(samples.get(`loop|${job.name}`)!) } : {};
      rows.push({ driver: subject.driver, job: job.name, metric: job.metric, values, ...loop });
    }
  }
  return rows;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function lanesLines(rows: LanesRow[], cores: number): string[] {
  const lines = [
    `Jobs by lanes (threads serving one device, \`--lanes N\`) on this ${cores}-vCPU machine, FUSE+loop over /dev/fuse unless said;`,
    'median of the repetitions, lane counts alternating. `pattern` computes every byte it reads (its thread is the bound);',
    '`file` on a file in /dev/shm leaves the work to the kernel (its copies, in the driver\'s thread), beside the kernel loop device',
    'on the same file; `ram` answers from memory its lanes share (the loop column is the same /dev/shm file\'s); `ram (io_uring)` is',
    '`ram` over FUSE\'s ring, each lane serving (and pinned to) its own CPUs\' queues; `ram (NBD export)` is `bdus export ram`',
    'to fio\'s nbd engine, a connection per fio job and each connection served by one lane. "2 jobs" is two fio threads. "2 / 1"',
    'is the gain of the second lane (for latency, below 1 is better).',
    '',
    `| driver | job | ${LANES.map((n) => `${n} lane${n > 1 ? 's' : ''}`).join(' | ')} | 2 / 1 | kernel loop |`,
    `|---|---|${LANES.map(() => '---:').join('|')}|---:|---:|`,
  ];
  for (const row of rows) {
    const shown = row.values.map((v) => `${v.toFixed(row.metric === 'mean' ? 1 : 0)} ${UNIT[row.metric]}`);
    const gain = (row.values[1]! / row.values[0]!).toFixed(2);
    const loop = row.loop === undefined ? '' : `${row.loop.toFixed(row.metric === 'mean' ? 1 : 0)} ${UNIT[row.metric]}`;
    lines.push(`| ${row.driver} | ${row.job} | ${shown.join(' | ')} | ${gain}x | ${loop} |`);
  }
  return lines;
}
