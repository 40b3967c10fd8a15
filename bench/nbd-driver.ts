/**
 * The nbd driver against nbdfuse, both in front of one `nbdkit memory` server, on the same kernel
 * path (FUSE + loop, fio libaio direct I/O on the block device): what bdus's NBD client costs
 * beside libnbd's. Jobs alternate between the two, repeated, so machine noise hits both alike;
 * the medians and their ratio are printed as a Markdown table.
 *
 *   node dist/bench/nbd-driver.js [--reps 3] [--runtime 4] [--connections 4] [--frontend fuse]
 *   test/vm/run --timeout 1800 node dist/bench/nbd-driver.js --kernel-nbd --frontend ublk --size 256M
 *
 * With --kernel-nbd, nbd.ko (the kernel's own NBD client, through nbd-client) joins, in front of
 * the same server: only in the VM (test/vm/), whose kernel has it; there everything is emulated,
 * so the ratios, not the numbers, are what it shows.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { execute as sh } from '../src/util/exec.js';
import { fio, stop, SYSTEM_JOBS, type Metric } from './fio.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = `${ROOT}dist/src/cli/bin.js`;
const SIZE = '1G';
const SOCKET = '/tmp/bdus-bench-nbd-driver.sock';
const FUSE_DIR = '/tmp/bdus-bench-nbd-driver-fuse';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const JOBS = SYSTEM_JOBS;

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      reps: { type: 'string', default: '3' },
      runtime: { type: 'string', default: '4' },
      connections: { type: 'string', default: '4' },
      frontend: { type: 'string', default: 'fuse' },
      size: { type: 'string', default: SIZE },
      'kernel-nbd': { type: 'boolean', default: false },
    },
  });
  const size = values.size!;
  // In the VM, loop and fuse are modules (the host has them built in and loads none).
  for (const module of ['loop', 'fuse']) await sh('modprobe', [module]).catch(() => undefined);
  const reps = Number(values.reps);
  const runtime = Number(values.runtime);
  rmSync(SOCKET, { force: true });
  const server = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', SOCKET, 'memory', size], { stdio: 'ignore' });
  for (let i = 0; i < 100 && !existsSync(SOCKET); i++) await sleep(50);
  const uri = `nbd+unix:///?socket=${SOCKET}`;

  const ours = (await sh(process.execPath, [BIN, 'run', 'nbd', uri, '--connections', values.connections!, '--frontend', values.frontend!])).trim();
  mkdirSync(FUSE_DIR, { recursive: true });
  const fuse = spawn('nbdfuse', [FUSE_DIR, uri], { stdio: 'ignore' });
  for (let i = 0; i < 200 && !existsSync(`${FUSE_DIR}/nbd`); i++) await sleep(50);
  const loop = (await sh('losetup', ['--find', '--show', '--direct-io=on', `${FUSE_DIR}/nbd`])).trim();

  const systems = [
    { name: `bdus nbd driver (${values.frontend}, ${values.connections} connections)`, device: ours },
    { name: 'nbdfuse + loop', device: loop },
  ];
  if (values['kernel-nbd']) {
    await sh('modprobe', ['nbd']);
    await sh('nbd-client', ['-u', SOCKET, '/dev/nbd0', '-b', '512', '-C', values.connections!]);
    systems.push({ name: 'nbd.ko (nbd-client)', device: '/dev/nbd0' });
  }
  const results = JOBS.map(() => systems.map(() => [] as number[]));
  try {
    for (let rep = 0; rep < reps; rep++) {
      for (const [j, job] of JOBS.entries()) {
        for (const [s, system] of systems.entries()) {
          const measured = await fio([`--filename=${system.device}`, '--ioengine=libaio'], job.args, runtime, size);
          results[j]![s]!.push(measured[job.metric]);
          process.stderr.write(`${job.name} ${system.name}: ${measured[job.metric].toFixed(0)}\n`);
        }
      }
    }
  } finally {
    if (values['kernel-nbd']) await sh('nbd-client', ['-d', '/dev/nbd0']).catch(() => undefined);
    await sh('losetup', ['-d', loop]).catch(() => undefined);
    await sh('umount', [FUSE_DIR]).catch(() => undefined);
    fuse.kill();
    await sh(process.execPath, [BIN, 'destroy', '--force', '--no-flush', ours]).catch(() => undefined);
    await stop(server);
    rmSync(SOCKET, { force: true }); // nbdkit, killed, leaves its socket
    rmSync(FUSE_DIR, { recursive: true, force: true });
  }

  const unit: Record<Metric, string> = { iops: 'IOPS', mibs: 'MiB/s', mean: 'us mean', p99: 'us p99' };
  // Ratios: bdus against each other system, >1 where bdus is faster.
  const others = systems.slice(1);
  const lines = [
    `| job | ${systems.map((s) => s.name).join(' | ')} | ${others.map((o) => `bdus / ${o.name}`).join(' | ')} |`,
    `|${'---|'.repeat(1 + systems.length + others.length)}`,
  ];
  for (const [j, job] of JOBS.entries()) {
    const medians = results[j]!.map(median);
    const ratios = medians.slice(1).map((other) => (job.metric === 'mean' ? other / medians[0]! : medians[0]! / other));
    lines.push(`| ${job.name} (${unit[job.metric]}) | ${medians.map((m) => m.toFixed(0)).join(' | ')} | ${ratios.map((r) => `${r.toFixed(2)}x`).join(' | ')} |`);
  }
  process.stdout.write(`${lines.join('\n')}\n\nmedians of ${reps} alternating runs of ${runtime} s each; nbdkit memory ${size} on a Unix socket behind every system\n`);
}

await main();
