/**
 * Benchmarks the ram example against its peers on the same kernel path, in the same run:
 *
 *   bdus ram           bdus's FUSE+loop frontend, the ram example driver
 *   nbdkit+nbdfuse     nbdkit's memory plugin behind nbdfuse + loop (the C peer, same kernel path)
 *   kernel loop        the kernel loop device over a file in /dev/shm (no user space: the limit)
 *
 * Every system gets the same fio jobs, interleaved job by job and repeated, so machine noise
 * hits them alike. Prints a markdown table of medians (min-max) and ratios.
 *
 *   npm run bench [-- --reps 3 --runtime 5]
 */
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync, existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { execute as sh } from '../src/util/exec.js';

const BIN = fileURLToPath(new URL('../src/cli/bin.js', import.meta.url));
const SIZE = '1G';

interface Job {
  name: string;
  args: string[];
  metric: 'iops' | 'mibs' | 'lat';
}

const JOBS: Job[] = [
  { name: '4k randread QD32', args: ['--rw=randread', '--bs=4k', '--iodepth=32'], metric: 'iops' },
  { name: '4k randwrite QD32', args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], metric: 'iops' },
  { name: '1M seqread QD8', args: ['--rw=read', '--bs=1M', '--iodepth=8'], metric: 'mibs' },
  { name: '1M seqwrite QD8', args: ['--rw=write', '--bs=1M', '--iodepth=8'], metric: 'mibs' },
  { name: '4k randread QD1 (mean latency)', args: ['--rw=randread', '--bs=4k', '--iodepth=1'], metric: 'lat' },
  { name: '4k randwrite QD1 (mean latency)', args: ['--rw=randwrite', '--bs=4k', '--iodepth=1'], metric: 'lat' },
];

interface System {
  name: string;
  device: string;
  teardown: () => Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function bdusRam(): Promise<System> {
  const device = (await sh(process.execPath, [BIN, 'run', 'ram', '--size', SIZE])).trim();
  return { name: 'bdus ram', device, teardown: async () => void (await sh(process.execPath, [BIN, 'destroy', '--no-flush', device])) };
}

async function nbdkitNbdfuse(): Promise<System> {
  const dir = '/tmp/bdus-bench-nbdfuse';
  mkdirSync(dir, { recursive: true });
  const child = spawn('nbdfuse', [dir, '--socket-activation', 'nbdkit', 'memory', SIZE], { stdio: 'ignore', detached: true });
  for (let i = 0; i < 100 && !existsSync(`${dir}/nbd`); i++) await sleep(50);
  const device = (await sh('losetup', ['--find', '--show', '--direct-io=on', `${dir}/nbd`])).trim();
  return {
    name: 'nbdkit+nbdfuse',
    device,
    teardown: async () => {
      await sh('losetup', ['-d', device]);
      await sh('umount', [dir]).catch(() => undefined);
      child.kill();
      await sleep(200);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function kernelLoop(): Promise<System> {
  const file = '/dev/shm/bdus-bench-image';
  await sh('truncate', ['-s', SIZE, file]);
  const device = (await sh('losetup', ['--find', '--show', '--direct-io=on', file])).trim();
  return {
    name: 'kernel loop',
    device,
    teardown: async () => {
      await sh('losetup', ['-d', device]);
      rmSync(file, { force: true });
    },
  };
}

async function fio(device: string, job: Job, runtime: number): Promise<number> {
  const out = await sh('fio', [
    '--name=bench', `--filename=${device}`, '--direct=1', '--ioengine=libaio', '--size=1G', '--time_based',
    `--runtime=${runtime}`, '--ramp_time=1', '--norandommap', '--randrepeat=0', '--output-format=json', ...job.args,
  ]);
  const result = (JSON.parse(out) as { jobs: Array<Record<'read' | 'write', { iops: number; bw_bytes: number; lat_ns: { mean: number } }>> }).jobs[0]!;
  const side = job.args.some((a) => a.includes('write')) ? result.write : result.read;
  if (job.metric === 'iops') return side.iops;
  if (job.metric === 'mibs') return side.bw_bytes / 2 ** 20;
  return side.lat_ns.mean / 1000;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function format(value: number, metric: Job['metric']): string {
  if (metric === 'iops') return `${(value / 1000).toFixed(1)}k`;
  if (metric === 'mibs') return value.toFixed(0);
  return value.toFixed(1);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { reps: { type: 'string', default: '3' }, runtime: { type: 'string', default: '5' } } });
  const reps = Number(values.reps);
  const runtime = Number(values.runtime);
  const systems: System[] = [];
  try {
    systems.push(await bdusRam(), await nbdkitNbdfuse(), await kernelLoop());
    // Fill every device first, so that reads read data, not holes.
    for (const s of systems) await sh('dd', ['if=/dev/urandom', `of=${s.device}`, 'bs=1M', `count=${1024}`, 'oflag=direct', 'status=none']);
    const results = new Map<string, number[]>();
    for (let rep = 0; rep < reps; rep++) {
      for (const job of JOBS) {
        for (const s of systems) {
          const key = `${job.name}|${s.name}`;
          results.set(key, [...(results.get(key) ?? []), await fio(s.device, job, runtime)]);
          process.stderr.write('.');
        }
      }
    }
    process.stderr.write('\n');
    const [ours, peer, limit] = systems.map((s) => s.name) as [string, string, string];
    const lines = [
      `Machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, kernel ${(await sh('uname', ['-r'])).trim()}, node ${process.version}; ${reps} reps x ${runtime} s, median (min-max).`,
      '',
      `| job | unit | ${ours} | ${peer} | ${limit} | ${ours} / ${peer} | ${ours} / ${limit} |`,
      '|---|---|---:|---:|---:|---:|---:|',
    ];
    for (const job of JOBS) {
      const cell = (name: string) => {
        const v = results.get(`${job.name}|${name}`)!;
        return `${format(median(v), job.metric)} (${format(Math.min(...v), job.metric)}-${format(Math.max(...v), job.metric)})`;
      };
      const m = (name: string) => median(results.get(`${job.name}|${name}`)!);
      // For latency lower is better: report how many times the other's latency ours is.
      const ratio = (other: string) => (m(ours) / m(other)).toFixed(2);
      const unit = job.metric === 'iops' ? 'IOPS' : job.metric === 'mibs' ? 'MiB/s' : 'us';
      lines.push(`| ${job.name} | ${unit} | ${cell(ours)} | ${cell(peer)} | ${cell(limit)} | ${ratio(peer)} | ${ratio(limit)} |`);
    }
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    for (const s of systems.reverse()) await s.teardown().catch((e: Error) => process.stderr.write(`teardown ${s.name}: ${e.message}\n`));
  }
}

await main();
