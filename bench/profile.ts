/**
 * Where the time of one benchmark job goes: a `ram` device (or export) filled as the benchmark
 * fills it, one fio job of the benchmark's table run for `--seconds` + 3 s, and `perf record -a
 * -g` over the whole machine for `--seconds` in its middle. Prints the share of all samples by
 * command and object (`node` is the driver: the daemon sleeps; `swapper` is idle time), then the
 * driver's symbols. How docs/performance.md's "What bounds the targets still missed" was taken.
 *
 *   node dist/bench/profile.js --job '1M seqread QD8' [--driver 'ram --size 1G --fuse-io-uring --lanes 2']
 *                              [--frontend fuse|export] [--seconds 4] [--symbols 25]
 *
 * A driver with `--fuse-io-uring` has the kernel's enable_uring switched on for the run and put
 * back after. Needs perf (Debian's linux-perf); this machine is a paravirtualized guest, where
 * samples taken with interrupts off land on `pvm_irq_enable`.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { ENABLE_URING } from '../src/frontend/fuse/ring.js';
import { execute as sh } from '../src/util/exec.js';
import { ALL_JOBS, fio, precondition, UNIT } from './fio.js';
import { driverTarget } from './target.js';

const BIN = fileURLToPath(new URL('../src/cli/bin.js', import.meta.url));

const { values } = parseArgs({
  options: {
    job: { type: 'string' },
    driver: { type: 'string', default: 'ram --size 1G' },
    frontend: { type: 'string', default: 'fuse' },
    seconds: { type: 'string', default: '4' },
    symbols: { type: 'string', default: '25' },
  },
});
const job = ALL_JOBS.find((j) => j.name === values.job);
if (!job) throw new Error(`--job must be one of: ${ALL_JOBS.map((j) => `'${j.name}'`).join(', ')}`);
const seconds = Number(values.seconds);
if (!(seconds > 0)) throw new Error('--seconds must be a positive number');
const driver = values.driver!.split(' ').filter((word) => word !== '');

let uringBefore: string | undefined;
if (driver.includes('--fuse-io-uring') && existsSync(ENABLE_URING)) {
  uringBefore = readFileSync(ENABLE_URING, 'utf8').trim();
  writeFileSync(ENABLE_URING, 'Y');
}
const dir = mkdtempSync(join(tmpdir(), 'bdus-profile-'));
const { target, end } = await driverTarget(BIN, driver, values.frontend!, join(dir, 'export.sock'));
try {
  await precondition(target, '1G');
  const measured = fio(target, job.args, seconds + 2, '1G');
  // fio's ramp is 1 s: the recording starts after it and ends before the run does.
  await sleep(1500);
  await sh('perf', ['record', '-a', '-g', '-q', '-o', join(dir, 'perf.data'), '--', 'sleep', String(seconds)]);
  const result = await measured;
  process.stdout.write(`${job.name}, ${values.frontend === 'export' ? `bdus export ${values.driver}` : `bdus run ${values.driver}`}: ${result[job.metric].toFixed(1)} ${UNIT[job.metric]} (under perf)\n\n`);
  const report = (sort: string, extra: string[]) => sh('perf', ['report', '-i', join(dir, 'perf.data'), '--no-children', '--sort', sort, '--stdio', '-g', 'none', ...extra]);
  process.stdout.write(`All samples by command and object:\n${strip(await report('comm,dso', ['--percent-limit', '1']))}\n`);
  const symbols = strip(await report('sym', ['--comm', 'node', '--percentage', 'relative'])).split('\n').slice(0, Number(values.symbols)).join('\n');
  process.stdout.write(`The driver's symbols (command node, share of its samples):\n${symbols}\n`);
} finally {
  await end();
  rmSync(dir, { recursive: true, force: true });
  if (uringBefore !== undefined) writeFileSync(ENABLE_URING, uringBefore);
}

/** perf report's table without its comment lines. */
function strip(text: string): string {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '' && !line.startsWith('#'))
    .join('\n');
}
