/**
 * The nbd driver against nbdfuse, both in front of one `nbdkit memory` server, on the same kernel
 * path (FUSE + loop, fio libaio direct I/O on the block device): what bdus's NBD client costs
 * beside libnbd's. Jobs alternate between the two, repeated, so machine noise hits both alike;
 * the medians and their ratio are printed as a Markdown table.
 *
 *   node dist/bench/nbd-driver.js [--reps 3] [--runtime 4] [--connections 4]
 *
 * nbd.ko (the kernel's NBD client) is not on this machine's kernel: see docs/benchmarks-vm.md.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { execute as sh } from '../src/util/exec.js';
import { fio, type Metric } from './fio.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = `${ROOT}dist/src/cli/bin.js`;
const SIZE = '1G';
const SOCKET = '/tmp/bdus-bench-nbd-driver.sock';
const FUSE_DIR = '/tmp/bdus-bench-nbd-driver-fuse';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const JOBS: Array<{ name: string; args: string[]; metric: Metric }> = [
  { name: '4k randread QD32', args: ['--rw=randread', '--bs=4k', '--iodepth=32'], metric: 'iops' },
  { name: '4k randwrite QD32', args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], metric: 'iops' },
  { name: '1M seqread QD8', args: ['--rw=read', '--bs=1M', '--iodepth=8'], metric: 'mibs' },
  { name: '1M seqwrite QD8', args: ['--rw=write', '--bs=1M', '--iodepth=8'], metric: 'mibs' },
  { name: '4k randread QD1', args: ['--rw=randread', '--bs=4k', '--iodepth=1'], metric: 'mean' },
];

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { reps: { type: 'string', default: '3' }, runtime: { type: 'string', default: '4' }, connections: { type: 'string', default: '4' } } });
  const reps = Number(values.reps);
  const runtime = Number(values.runtime);
  rmSync(SOCKET, { force: true });
  const server = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', SOCKET, 'memory', SIZE], { stdio: 'ignore' });
  for (let i = 0; i < 100 && !existsSync(SOCKET); i++) await sleep(50);
  const uri = `nbd+unix:///?socket=${SOCKET}`;

  const ours = (await sh(process.execPath, [BIN, 'run', 'nbd', uri, '--connections', values.connections!, '--frontend', 'fuse'])).trim();
  mkdirSync(FUSE_DIR, { recursive: true });
  const fuse = spawn('nbdfuse', [FUSE_DIR, uri], { stdio: 'ignore' });
  for (let i = 0; i < 100 && !existsSync(`${FUSE_DIR}/nbd`); i++) await sleep(50);
  const loop = (await sh('losetup', ['--find', '--show', '--direct-io=on', `${FUSE_DIR}/nbd`])).trim();

  const systems = [
    { name: `bdus nbd driver (${values.connections} connections)`, device: ours },
    { name: 'nbdfuse + loop', device: loop },
  ];
  const results = JOBS.map(() => systems.map(() => [] as number[]));
  try {
    for (let rep = 0; rep < reps; rep++) {
      for (const [j, job] of JOBS.entries()) {
        for (const [s, system] of systems.entries()) {
          const measured = await fio([`--filename=${system.device}`, '--ioengine=libaio'], job.args, runtime, SIZE);
          results[j]![s]!.push(measured[job.metric]);
          process.stderr.write(`${job.name} ${system.name}: ${measured[job.metric].toFixed(0)}\n`);
        }
      }
    }
  } finally {
    await sh('losetup', ['-d', loop]).catch(() => undefined);
    await sh('umount', [FUSE_DIR]).catch(() => undefined);
    fuse.kill();
    await sh(process.execPath, [BIN, 'destroy', '--force', '--no-flush', ours]).catch(() => undefined);
    server.kill();
    rmSync(FUSE_DIR, { recursive: true, force: true });
  }

  const unit: Record<Metric, string> = { iops: 'IOPS', mibs: 'MiB/s', mean: 'us mean', p99: 'us p99' };
  const lines = [`| job | ${systems.map((s) => s.name).join(' | ')} | ratio (bdus / nbdfuse, >1 is faster) |`, '|---|---|---|---|'];
  for (const [j, job] of JOBS.entries()) {
    const [a, b] = results[j]!.map(median) as [number, number];
    const ratio = job.metric === 'mean' ? b / a : a / b;
    lines.push(`| ${job.name} (${unit[job.metric]}) | ${a.toFixed(0)} | ${b.toFixed(0)} | ${ratio.toFixed(2)}x |`);
  }
  process.stdout.write(`${lines.join('\n')}\n\nmedians of ${reps} alternating runs of ${runtime} s each; nbdkit memory ${SIZE} on a Unix socket behind both\n`);
}

await main();
