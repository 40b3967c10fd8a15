/** One fio measurement, as the benchmarks report it (bench/run.ts, bench/ublk-vm.ts), and what their set-up and teardown share. */
import type { ChildProcess } from 'node:child_process';
import { execute as sh } from '../src/util/exec.js';

export type Metric = 'iops' | 'mibs' | 'mean' | 'p99';
export type Measured = Record<Metric, number>;

interface FioSide {
  iops: number;
  bw_bytes: number;
  lat_ns: { mean: number };
  clat_ns: { percentile?: Record<string, number> };
}

/**
 * Set by SIGINT or SIGTERM: the next fio run throws instead of running, so that every section of
 * a benchmark leaves through its `finally` and removes what it set up (devices, loop devices,
 * servers, a Ceph cluster, the FUSE io_uring switch). A second signal kills at once.
 */
let stopping: string | undefined;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    stopping = signal;
    process.stderr.write(`\n${signal}: stopping after this fio run, and cleaning up\n`);
  });
}

/** Ends a server the benchmark started (SIGTERM) and waits until it has exited; at once if it already has (by a signal too). */
export async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

/**
 * Writes all of `size` once (1 MiB writes, direct, QD8): a system's reads then read data, not
 * holes that cost it nothing. `target` as for fio().
 */
export async function fill(target: string[], size: string): Promise<void> {
  if (stopping) throw new Error(`stopped by ${stopping}`);
  await sh('fio', ['--name=fill', ...target, '--rw=write', '--bs=1M', '--iodepth=8', `--size=${size}`, '--direct=1']);
}

/**
 * fill(), then one more pass of 4 KiB writes (sequential, QD32) over all of `size`: every page
 * has then been written through a system's large-request path and its small-request path once,
 * and the jobs measure what follows, not the first touch. Why: on this machine a page's first
 * touch by user space after the kernel wrote it (or the other way round) costs about 5 us
 * (bench/first-touch.ts); a server that receives 1 MiB writes straight into its store (`bdus
 * export ram`: writeTarget) and copies 4 KiB writes there itself pays that once per page, and a
 * 5 s job of random 4 KiB writes over 1 GiB pays it on most of its writes (56-61k IOPS without
 * this pass, 77k with it). A system whose store only one side touches pays nothing here.
 */
export async function precondition(target: string[], size: string): Promise<void> {
  await fill(target, size);
  if (stopping) throw new Error(`stopped by ${stopping}`);
  await sh('fio', ['--name=precondition', ...target, '--rw=write', '--bs=4k', '--iodepth=32', `--size=${size}`, '--direct=1']);
}

/** One time-based fio run over `size`; `target` is the block device's or the NBD URI's fio arguments. */
export async function fio(target: string[], args: string[], runtime: number, size: string): Promise<Measured> {
  if (stopping) throw new Error(`stopped by ${stopping}`);
  const out = await sh('fio', [
    '--name=bench', ...target, '--direct=1', `--size=${size}`, '--time_based', `--runtime=${runtime}`, '--ramp_time=1',
    '--norandommap', '--randrepeat=0', '--output-format=json', ...args,
  ]);
  // The nbd engine prints a line of its own before the report.
  const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ read: FioSide; write: FioSide }> }).jobs[0]!;
  const sides = [job.read, job.write].filter((s) => s.iops > 0);
  const latency = sides[0]!;
  return {
    iops: sides.reduce((sum, s) => sum + s.iops, 0),
    mibs: sides.reduce((sum, s) => sum + s.bw_bytes, 0) / 2 ** 20,
    mean: latency.lat_ns.mean / 1000,
    p99: (latency.clat_ns.percentile?.['99.000000'] ?? NaN) / 1000,
  };
}

export interface FioJob {
  readonly name: string;
  readonly args: string[];
  readonly metric: Metric;
}

/** The jobs every comparison of whole systems runs (bench/nbd-driver.ts, bench/s3.ts), in order. */
export const SYSTEM_JOBS: readonly FioJob[] = [
  { name: '4k randread QD32', args: ['--rw=randread', '--bs=4k', '--iodepth=32'], metric: 'iops' },
  { name: '4k randwrite QD32', args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], metric: 'iops' },
  { name: '1M seqread QD8', args: ['--rw=read', '--bs=1M', '--iodepth=8'], metric: 'mibs' },
  { name: '1M seqwrite QD8', args: ['--rw=write', '--bs=1M', '--iodepth=8'], metric: 'mibs' },
  { name: '4k randread QD1', args: ['--rw=randread', '--bs=4k', '--iodepth=1'], metric: 'mean' },
];

/** The system jobs and two more: the benchmark's table (bench/run.ts, in this order) and what bench/ab.ts can run. */
export const ALL_JOBS: readonly FioJob[] = [
  ...SYSTEM_JOBS,
  { name: '4k randwrite QD1', args: ['--rw=randwrite', '--bs=4k', '--iodepth=1'], metric: 'mean' },
  { name: '4k randrw 70/30 QD16', args: ['--rw=randrw', '--rwmixread=70', '--bs=4k', '--iodepth=16'], metric: 'iops' },
];

export const UNIT: Record<Metric, string> = { iops: 'IOPS', mibs: 'MiB/s', mean: 'us mean', p99: 'us p99' };
