/**
 * Before and after: the same fio jobs on `bdus run ram` built from two checkouts, run in turn
 * (before, after, before, after, ...) so that this machine's noise hits both alike; prints each
 * side's median and the after/before ratio. How a change to the request path is judged here.
 *
 *   node dist/bench/ab.js --before CHECKOUT [--after CHECKOUT] [--reps 5] [--runtime 4] [--frontend fuse|nbd|ublk|export]
 *                         [--driver 'ram --size 1G'] [--only 1M]
 *
 * `--driver` gives another driver and its arguments, split at spaces (`'nbd nbd+unix:///?socket=S'`
 * to measure the nbd driver in front of a server started beforehand); it must be 1 GiB or more.
 * `--only` keeps the jobs whose name contains it (`1M`, `QD1`): more rounds of fewer jobs.
 * `--frontend export` measures the NBD server instead: `bdus export ram` and fio's nbd engine.
 * A checkout is a built tree (npm ci; npx tsc -p .); --after defaults to this one. Each side
 * starts its own daemon and stops it after its turn (two builds may speak different control protocols).
 */
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { execute as sh } from '../src/util/exec.js';
import { ALL_JOBS, precondition, fio, UNIT } from './fio.js';
import { driverTarget } from './target.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

const { values } = parseArgs({
  options: { before: { type: 'string' }, after: { type: 'string' }, reps: { type: 'string', default: '5' }, runtime: { type: 'string', default: '4' }, frontend: { type: 'string', default: 'fuse' }, only: { type: 'string', default: '' }, driver: { type: 'string', default: 'ram --size 1G' } },
});
if (!values.before) throw new Error('--before CHECKOUT is required');
const checkout = (path: string) => `${path.replace(/\/$/, '')}/`;
const sides = { before: checkout(values.before), after: values.after ? checkout(values.after) : ROOT };
const JOBS = ALL_JOBS.filter((job) => job.name.includes(values.only!));
if (JOBS.length === 0) throw new Error(`--only ${values.only}: no job's name contains it`);
const reps = Number(values.reps);
const runtime = Number(values.runtime);
const driver = values.driver!.split(' ').filter((word) => word !== '');

const results: Record<string, Record<'before' | 'after', number[]>> = {};
for (let rep = 0; rep < reps; rep++) {
  for (const side of rep % 2 === 0 ? (['before', 'after'] as const) : (['after', 'before'] as const)) {
    const bin = `${sides[side]}dist/src/cli/bin.js`;
    const { target, end: destroy } = await driverTarget(bin, driver, values.frontend!, `/tmp/bdus-ab-${process.pid}.sock`);
    // Each side's own CLI and daemon: two builds may speak different control protocols.
    const end = async () => {
      await destroy();
      if (values.frontend !== 'export') await sh(process.execPath, [bin, 'daemon', 'stop']);
    };
    try {
      await precondition(target, '1G');
      for (const job of JOBS) {
        const measured = await fio(target, job.args, runtime, '1G');
        ((results[job.name] ??= { before: [], after: [] })[side]).push(measured[job.metric]);
        process.stderr.write(`run ${rep + 1}/${reps}, ${side}: ${job.name}: ${measured[job.metric].toFixed(1)} ${UNIT[job.metric]}\n`);
      }
    } finally {
      await end();
    }
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const spread = (xs: number[]) => `${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)}`;
process.stdout.write(`${reps} alternating runs of ${runtime} s per job, ${values.frontend === 'export' ? `bdus export ${values.driver} (fio nbd engine)` : `bdus run ${values.driver} --frontend ${values.frontend}`}\n\n`);
process.stdout.write('| job | unit | before | after | after/before |\n|---|---|---:|---:|---:|\n');
for (const job of JOBS) {
  const { before, after } = results[job.name]!;
  const ratio = median(after) / median(before);
  process.stdout.write(`| ${job.name} | ${UNIT[job.metric]} | ${median(before).toFixed(1)} (${spread(before)}) | ${median(after).toFixed(1)} (${spread(after)}) | ${ratio.toFixed(3)} |\n`);
}
