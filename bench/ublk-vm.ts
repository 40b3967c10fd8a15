/**
 * bdus on ublk against the kernel loop device, in the project's VM (Debian's 6.12 kernel under
 * software emulation: this machine's kernel has no ublk). A sanity figure, not a speed claim:
 * emulated JavaScript runs about 20x slower than on the host and system calls about 8x, so the
 * ratio here understates what ublk gives on real hardware. Both systems get each fio job in
 * turn, repeated, so the emulator's noise hits them alike; kernel NBD (`bdus run --frontend
 * nbd`) runs too, for the same ratio on the other kernel path the VM has.
 *
 *   bench/ublk-vm [--reps 2 --runtime 5]      (boots the VM; writes docs/benchmarks-vm.md)
 */
import { existsSync, rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { execute as sh } from '../src/util/exec.js';
import { fio, type Measured, type Metric } from './fio.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = `${ROOT}dist/src/cli/bin.js`;
const SIZE = '256M';

/** One fio job per vCPU, each on its own: every hardware queue of a ublk device gets requests. */
const BOTH_CPUS = ['--numjobs=2', '--cpus_allowed=0,1', '--cpus_allowed_policy=split', '--offset_increment=128M', '--group_reporting'];

const JOBS: Array<{ name: string; args: string[]; metric: Metric }> = [
  { name: '4k randread QD1 (us mean)', args: ['--rw=randread', '--bs=4k', '--iodepth=1'], metric: 'mean' },
  { name: '4k randread QD16 (IOPS)', args: ['--rw=randread', '--bs=4k', '--iodepth=16'], metric: 'iops' },
  { name: '4k randwrite QD16 (IOPS)', args: ['--rw=randwrite', '--bs=4k', '--iodepth=16'], metric: 'iops' },
  { name: '1M seqread QD4 (MiB/s)', args: ['--rw=read', '--bs=1M', '--iodepth=4'], metric: 'mibs' },
  { name: '1M seqwrite QD4 (MiB/s)', args: ['--rw=write', '--bs=1M', '--iodepth=4'], metric: 'mibs' },
  { name: '4k randread 2 CPUs x QD16 (IOPS)', args: ['--rw=randread', '--bs=4k', '--iodepth=16', ...BOTH_CPUS], metric: 'iops' },
  { name: '1M seqread 2 CPUs x QD4 (MiB/s)', args: ['--rw=read', '--bs=1M', '--iodepth=4', ...BOTH_CPUS], metric: 'mibs' },
];

interface System {
  name: string;
  device: string;
  teardown(): Promise<void>;
}

/** The ram example without writeTarget: its ublk device has no user copy (docs/performance.md). */
const RAM_KERNEL_COPY = `${ROOT}dist/bench/drivers/ram-kernel-copy.js`;

async function bdus(frontend: string, name = frontend, args: string[] = [], driver = 'ram'): Promise<System> {
  const device = (await sh(process.execPath, [BIN, 'run', driver, '--size', SIZE, '--frontend', frontend, ...args])).trim();
  return { name: `bdus ram (${name})`, device, teardown: async () => void (await sh(process.execPath, [BIN, 'destroy', '--force', device])) };
}

async function kernelLoop(): Promise<System> {
  await sh('modprobe', ['loop']).catch(() => undefined);
  const file = '/dev/shm/bdus-bench-vm';
  await sh('truncate', ['-s', SIZE, file]);
  const device = (await sh('losetup', ['--find', '--show', '--direct-io=on', file])).trim();
  return {
    name: 'kernel loop (/dev/shm)',
    device,
    teardown: async () => {
      await sh('losetup', ['-d', device]);
      rmSync(file, { force: true });
    },
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { reps: { type: 'string', default: '2' }, runtime: { type: 'string', default: '5' } } });
  const reps = Number(values.reps);
  const runtime = Number(values.runtime);
  // Two queues on one thread against two lanes of one queue each: what a second lane gives. The
  // ram example has writeTarget, so its ublk devices use user copy; the kernel's copy beside it.
  const systems = [
    await bdus('ublk'),
    await kernelLoop(),
    await bdus('ublk', 'ublk, kernel copy', [], RAM_KERNEL_COPY),
    await bdus('ublk', 'ublk, 2 queues', ['--queues', '2']),
    await bdus('ublk', 'ublk, 2 lanes', ['--lanes', '2']),
    ...(existsSync('/sys/module/nbd') || (await sh('modprobe', ['nbd']).then(() => true, () => false)) ? [await bdus('nbd')] : []),
  ];
  const results = new Map<string, number[]>();
  try {
    for (const s of systems) await sh('fio', ['--name=fill', `--filename=${s.device}`, '--rw=write', '--bs=1M', '--iodepth=4', '--ioengine=libaio', `--size=${SIZE}`, '--direct=1']);
    for (let rep = 0; rep < reps; rep++) {
      for (const job of JOBS) {
        for (const s of rep % 2 ? [...systems].reverse() : systems) {
          const measured: Measured = await fio([`--filename=${s.device}`, '--ioengine=libaio'], job.args, runtime, SIZE);
          const key = `${job.name}\t${s.name}`;
          results.set(key, [...(results.get(key) ?? []), measured[job.metric]]);
        }
      }
    }
  } finally {
    for (const s of systems) await s.teardown();
  }
  const kernel = (await sh('uname', ['-r'])).trim();
  const lines = [
    '# bdus on ublk in the VM (emulated: a sanity figure, not a speed claim)',
    '',
    `Made by \`bench/ublk-vm --reps ${reps} --runtime ${runtime}\` on ${new Date().toISOString().slice(0, 10)}: Linux ${kernel} under QEMU's`,
    'software emulation (multi-threaded TCG: 2 vCPUs on 2 host threads), RAM-backed systems of ' + SIZE + ', fio libaio direct I/O on the block device, the',
    `median of ${reps} runs of ${runtime} s, systems alternating. The ratio is bdus over the kernel loop device (for latency,`,
    'loop over bdus: higher is better for bdus either way). Emulation slows JavaScript about 20x and system calls',
    'about 8x against the kernel\'s own code, so this ratio is far below what the same design gives on real hardware.',
    '"ublk" is the `ram` example as it is, which has writeTarget, so its device uses user copy (one copy of the data,',
    'docs/performance.md); "kernel copy" is the same driver without writeTarget (`bench/drivers/ram-kernel-copy.ts`).',
    '',
    `| job | ${systems.map((s) => s.name).join(' | ')} | ${systems.filter((s) => s.name.startsWith('bdus')).map((s) => `${s.name} / loop`).join(' | ')} |`,
    `|---|${systems.map(() => '---').join('|')}|${systems.filter((s) => s.name.startsWith('bdus')).map(() => '---').join('|')}|`,
  ];
  for (const job of JOBS) {
    const value = (s: System) => median(results.get(`${job.name}\t${s.name}`)!);
    const loop = value(systems[1]!);
    const ratio = (s: System) => (job.metric === 'mean' ? loop / value(s) : value(s) / loop).toFixed(2);
    lines.push(`| ${job.name} | ${systems.map((s) => value(s).toFixed(0)).join(' | ')} | ${systems.filter((s) => s.name.startsWith('bdus')).map(ratio).join(' | ')} |`);
  }
  // The guest's files are a throwaway layer: the host's bench/ublk-vm keeps what comes out.
  process.stdout.write(`${lines.join('\n')}\n`);
}

await main();
