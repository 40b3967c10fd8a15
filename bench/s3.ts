/**
 * The s3 driver on a real one-node Ceph cluster (test/ceph/cluster), beside its peers on the same
 * cluster in the same run:
 *
 *   - bdus s3 on FUSE+loop, against the RADOS Gateway;
 *   - s3backer (FUSE mode) behind a loop device with direct I/O: the same kernel path, the same
 *     gateway, the same block (chunk) size and cache size;
 *   - RBD through fio's rbd engine (librbd in fio's process, no kernel path): Ceph's own block
 *     device over RADOS, the ceiling.
 *
 * Each device is filled first (reads of holes would cost nothing), then fio jobs alternate
 * between the systems, repeated; then a filesystem workload (ext4: untar a tree, sync) on the two
 * with a kernel device, timed twice: until `sync` returns, and until the data is in the store.
 * They differ for s3backer: Debian's s3backer (1.5.4) answers FUSE's fsync and flush at once
 * without writing its cache back (fuse_ops.c: `return 0`), so its `sync` returns while the tree
 * is still in its memory; it is durable when its stats file shows no dirty block. bdus answers a
 * flush only when the data is in the store, so for it the two times are one. Prints Markdown:
 * medians, ratios (>1: bdus is better), and the CPU each process used per job (what bounds the
 * number).
 *
 *   node dist/bench/s3.js [--reps 2] [--runtime 5] [--size 1G] [--chunk-size 1M] [--cache-size 256M] [--bluestore]
 */
import { spawn, type ChildProcess } from 'node:child_process';
// The SDK is pinned (package.json): its warning is about later releases needing Node 22.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { execute as sh } from '../src/util/exec.js';
import { parseSize } from '../src/util/units.js';
import { fill, fio, SYSTEM_JOBS, type Metric } from './fio.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = `${ROOT}dist/src/cli/bin.js`;
const CLUSTER = `${ROOT}test/ceph/cluster`;
const DIR = '/tmp/bdus-bench-s3';
const S3B_MNT = `${DIR}/s3backer`;
const FS_MNT = `${DIR}/fs`;
const TREE = `${DIR}/tree.tar`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/**
 * s3backer's cache holds nothing that is not in the store (its stats file, polled; the ratio has
 * four decimals: exact while the cache has fewer than 10,000 blocks).
 */
async function s3backerClean(): Promise<void> {
  for (let i = 0; i < 6000; i++) {
    if (/block_cache_dirty_ratio\s+0\.0000\b/.test(readFileSync(`${S3B_MNT}/stats`, 'utf8'))) return;
    await sleep(10);
  }
  throw new Error('s3backer still had dirty blocks after 60 s');
}
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

const JOBS = SYSTEM_JOBS;

interface System {
  name: string;
  /** fio's arguments for it. */
  target: string[];
  /** Its block device, for the filesystem workload (RBD has none here: no krbd). */
  device?: string;
  /** The processes whose CPU is its own (the driver, s3backer; fio itself for librbd). */
  pids: () => number[];
  /** Resolves once everything written is in the store (when `sync` alone does not ensure it). */
  durable?: () => Promise<void>;
}

/** CPU seconds a process has used so far (user + system). */
function cpu(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      reps: { type: 'string', default: '2' },
      runtime: { type: 'string', default: '5' },
      size: { type: 'string', default: '1G' },
      'chunk-size': { type: 'string', default: '1M' },
      'cache-size': { type: 'string', default: '256M' },
      bluestore: { type: 'boolean', default: false },
    },
  });
  const reps = Number(values.reps);
  const runtime = Number(values.runtime);
  const size = values.size!;
  const chunk = parseSize(values['chunk-size']!);
  const cacheBytes = parseSize(values['cache-size']!);
  rmSync(DIR, { recursive: true, force: true });
  mkdirSync(DIR, { recursive: true });
  const clusterDir = `${DIR}/ceph`;
  const up = await sh(CLUSTER, ['up', clusterDir, ...(values.bluestore ? ['--bluestore'] : [])]);
  for (const line of up.split('\n')) {
    const m = /^export (\w+)=(.*)$/.exec(line);
    if (m) process.env[m[1]!] = m[2]!;
  }
  const pidOf = (daemon: string) => Number(readFileSync(`${clusterDir}/run/ceph-${daemon}.pid`, 'utf8'));
  const daemons = { radosgw: pidOf('client.rgw.a'), osd: pidOf('osd.0') };
  let s3backer: ChildProcess | undefined;
  let loop = '';
  let ours = '';
  try {
    const { S3Client, CreateBucketCommand } = await import('@aws-sdk/client-s3');
    const client = new S3Client({ forcePathStyle: true });
    for (const bucket of ['bdus', 's3backer']) await client.send(new CreateBucketCommand({ Bucket: bucket }));
    client.destroy();

    ours = (await sh(process.execPath, [BIN, 'run', 's3', 's3://bdus/bench', '--create', '--size', size, '--chunk-size', values['chunk-size']!, '--cache-size', values['cache-size']!, '--recoverable'])).trim();
    mkdirSync(S3B_MNT, { recursive: true });
    s3backer = spawn('s3backer', [
      `--baseURL=${process.env.AWS_ENDPOINT_URL}/`, `--accessId=${process.env.AWS_ACCESS_KEY_ID}`, `--accessKey=${process.env.AWS_SECRET_ACCESS_KEY}`,
      `--size=${size}`, `--blockSize=${chunk}`, `--blockCacheSize=${Math.floor(cacheBytes / chunk)}`, '--blockCacheThreads=32',
      '--listBlocks', '--minWriteDelay=0', '--md5CacheTime=0', '--md5CacheSize=0', 's3backer', S3B_MNT, '-f',
    ], { stdio: 'ignore' });
    for (let i = 0; i < 200 && !existsSync(`${S3B_MNT}/file`); i++) await sleep(100);
    loop = (await sh('losetup', ['--find', '--show', '--direct-io=on', `${S3B_MNT}/file`])).trim();
    await sh('ceph', ['osd', 'pool', 'create', 'rbd', '8', '8']);
    await sh('rbd', ['pool', 'init', 'rbd']);
    await sh('rbd', ['create', '--size', size, 'rbd/bench']);

    const bdusPid = Number((await sh(process.execPath, [BIN, 'info', ours, '--pid'])).trim());
    const systems: System[] = [
      { name: `bdus s3 (FUSE+loop)`, target: [`--filename=${ours}`, '--ioengine=libaio'], device: ours, pids: () => [bdusPid] },
      { name: 's3backer + loop', target: [`--filename=${loop}`, '--ioengine=libaio'], device: loop, pids: () => [s3backer!.pid!], durable: s3backerClean },
      { name: 'RBD (fio rbd engine)', target: ['--ioengine=rbd', '--clientname=admin', '--pool=rbd', '--rbdname=bench'], pids: () => [] },
    ];

    // Fill every device: a read of a chunk never written costs no store access in any of them.
    for (const system of systems) {
      const t0 = Date.now();
      await fill(system.target, size);
      if (system.device) await sh('sync', [system.device]);
      process.stderr.write(`filled ${system.name} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    }

    const results = JOBS.map(() => systems.map(() => [] as number[]));
    const cpuUse = JOBS.map(() => systems.map(() => ({ own: 0, radosgw: 0, osd: 0, seconds: 0 })));
    for (let rep = 0; rep < reps; rep++) {
      for (const [j, job] of JOBS.entries()) {
        for (const [s, system] of systems.entries()) {
          const pids = system.pids();
          const before = { own: pids.reduce((a, p) => a + cpu(p), 0), radosgw: cpu(daemons.radosgw), osd: cpu(daemons.osd), at: Date.now() };
          const measured = await fio(system.target, job.args, runtime, size);
          const use = cpuUse[j]![s]!;
          use.own += pids.reduce((a, p) => a + cpu(p), 0) - before.own;
          use.radosgw += cpu(daemons.radosgw) - before.radosgw;
          use.osd += cpu(daemons.osd) - before.osd;
          use.seconds += (Date.now() - before.at) / 1000;
          results[j]![s]!.push(measured[job.metric]);
          process.stderr.write(`${job.name} ${system.name}: ${measured[job.metric].toFixed(0)}\n`);
        }
      }
    }

    // A filesystem's work: ext4, untar a tree of many files, sync.
    await sh('tar', ['-cf', TREE, '-C', '/usr', 'include']);
    const tarBytes = readFileSync(TREE).length;
    const untar: number[][] = systems.map(() => []);
    const untarDurable: number[][] = systems.map(() => []);
    for (let rep = 0; rep < reps; rep++) {
      for (const [s, system] of systems.entries()) {
        if (!system.device) continue;
        await sh('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', system.device]);
        mkdirSync(FS_MNT, { recursive: true });
        await sh('mount', [system.device, FS_MNT]);
        await system.durable?.();
        const t0 = Date.now();
        await sh('tar', ['-xf', TREE, '-C', FS_MNT]);
        await sh('sync', ['-f', FS_MNT]);
        untar[s]!.push((Date.now() - t0) / 1000);
        await system.durable?.();
        untarDurable[s]!.push((Date.now() - t0) / 1000);
        await sh('umount', [FS_MNT]);
        process.stderr.write(`untar + sync ${system.name}: ${untar[s]!.at(-1)!.toFixed(2)} s, in the store after ${untarDurable[s]!.at(-1)!.toFixed(2)} s\n`);
      }
    }

    const unit: Record<Metric, string> = { iops: 'IOPS', mibs: 'MiB/s', mean: 'us mean', p99: 'us p99' };
    const lines = [
      `| job | ${systems.map((s) => s.name).join(' | ')} | bdus / s3backer | bdus / RBD |`,
      `|${'---|'.repeat(3 + systems.length)}`,
    ];
    for (const [j, job] of JOBS.entries()) {
      const m = results[j]!.map(median);
      const ratio = (other: number) => (job.metric === 'mean' ? other / m[0]! : m[0]! / other).toFixed(2);
      lines.push(`| ${job.name} (${unit[job.metric]}) | ${m.map((v) => v.toFixed(0)).join(' | ')} | ${ratio(m[1]!)}x | ${ratio(m[2]!)}x |`);
    }
    const tarMiB = (tarBytes / 2 ** 20).toFixed(0);
    for (const [what, times] of [['sync returns', untar], ['in the store', untarDurable]] as const) {
      const u = times.map((t) => (t.length ? median(t) : NaN));
      lines.push(`| untar /usr/include (${tarMiB} MiB) + sync: ${what} (s) | ${u.map((v) => (Number.isNaN(v) ? 'n/a' : v.toFixed(2))).join(' | ')} | ${(u[1]! / u[0]!).toFixed(2)}x | n/a |`);
    }
    lines.push('', 'CPU per second of each job (1.0 = one core): the system\'s own process | radosgw | ceph-osd', '');
    lines.push(`| job | ${systems.map((s) => s.name).join(' | ')} |`, `|${'---|'.repeat(1 + systems.length)}`);
    for (const [j, job] of JOBS.entries()) {
      const cells = cpuUse[j]!.map((c) => `${(c.own / c.seconds).toFixed(2)} / ${(c.radosgw / c.seconds).toFixed(2)} / ${(c.osd / c.seconds).toFixed(2)}`);
      lines.push(`| ${job.name} | ${cells.join(' | ')} |`);
    }
    process.stdout.write(
      `${lines.join('\n')}\n\nmedians of ${reps} alternating runs of ${runtime} s each; a ${size} device, ${values['chunk-size']} chunks (s3backer blocks), ${values['cache-size']} cache each; ` +
        `one-node Ceph (${values.bluestore ? 'bluestore on a sparse file' : 'memstore'}) on this machine; RBD's CPU is in fio's own process (librbd)\n`,
    );
  } finally {
    await sh('umount', [FS_MNT]).catch(() => undefined);
    if (loop) await sh('losetup', ['-d', loop]).catch(() => undefined);
    await sh('umount', [S3B_MNT]).catch(() => undefined);
    s3backer?.kill();
    if (ours) await sh(process.execPath, [BIN, 'destroy', '--force', '--no-flush', ours]).catch(() => undefined);
    await sh(CLUSTER, ['down', clusterDir]).catch(() => undefined);
    rmSync(DIR, { recursive: true, force: true });
  }
}

await main();
