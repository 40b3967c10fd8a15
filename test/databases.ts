/**
 * Real databases through everything bdus promises to survive: PostgreSQL (ext4, pgbench as load)
 * and SQLite (WAL, XFS) on a recoverable device (the loop example over an image in /dev/shm,
 * through test/drivers/recoverable.js), while the driver is replaced every 2 s, every other
 * time after a SIGKILL, and the daemon is stopped and started once halfway. A ledger client
 * (ledger.ts) commits one numbered transaction at a time and records each acknowledged commit.
 * Afterwards the database is stopped the hard way (PostgreSQL: immediate shutdown, which
 * recovers from its WAL at the next start), the filesystem is unmounted, checked (e2fsck -fn,
 * xfs_repair -n) and mounted again, and the database must hold every recorded transaction,
 * pass its own check (pg_amcheck, PRAGMA integrity_check) and have logged no I/O error.
 *
 * With `failWrites`, the driver instead fails every write and flush with EIO for a while
 * halfway (recoverable.js fail-writes-while=FLAG): the database must report the error to its
 * client, and still hold every transaction acknowledged before.
 *
 *   npm run databases -- [--seconds N] [--database postgresql|sqlite] [--fail-writes]
 *
 * (default 300 s each; CI runs a short version through test/databases.test.ts). Everything it
 * creates (database processes, mount, device, image) is removed at the end, also when it fails.
 */
import { mkdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { bdus, BIN, DRIVERS, info, must, sh, sleep } from './helpers.js';
import { postgresql, sqlite, type Database } from './database-kinds.js';
import { kernelIoErrorsSince, markKernelLog } from './torture.js';

export interface DatabaseReport {
  database: string;
  filesystem: string;
  seconds: number;
  /** Transactions the ledger saw commit, and how many of those the database no longer holds. */
  committed: number;
  lost: number;
  /** Transactions other clients (pgbench) committed meanwhile. */
  loadTransactions?: number;
  replacements: number;
  kills: number;
  daemonRestarts: number;
  /** With failWrites: what the database told its client when writes failed. */
  reportedError?: string;
  /** I/O errors the kernel logged for the device (0 unless writes failed on purpose). */
  kernelIoErrors: number;
  /** Problems found afterwards: the filesystem check, the database's check, its log; empty when clean. */
  problems: string[];
}

export interface DatabaseRunOptions {
  failWrites?: boolean;
  log?: (line: string) => void;
}

export async function throughCrashes(kind: 'postgresql' | 'sqlite', seconds: number, options: DatabaseRunOptions = {}): Promise<DatabaseReport> {
  const log = options.log ?? (() => undefined);
  const name = `bdus-db-${kind}-${process.pid}`;
  const image = `/dev/shm/${name}.img`;
  const flag = `/dev/shm/${name}.fail`;
  const mountpoint = `/tmp/${name}`;
  const driver = [`${DRIVERS}/recoverable.js`, image, `fail-writes-while=${flag}`];
  writeFileSync(image, '');
  truncateSync(image, 1 << 30);
  let dev = '';
  let mounted = false;
  let db: Database | undefined;
  try {
    const run = await bdus(['run', ...driver, '--recoverable', '--disable-partition-scanning'], { timeoutMs: 30_000 });
    if (run.code !== 0) throw new Error(`bdus run failed: ${run.stderr}`);
    dev = run.stdout.trim();
    const kernel = (await must('readlink', ['-f', dev])).trim().replace('/dev/', '');
    db = kind === 'postgresql' ? postgresql(mountpoint) : sqlite(mountpoint);
    await must(`mkfs.${db.filesystem}`, db.filesystem === 'xfs' ? ['-q', '-f', dev] : ['-q', '-F', dev]);
    mkdirSync(mountpoint, { recursive: true });
    await must('mount', [dev, mountpoint]);
    mounted = true;
    await db.create();
    log(`${db.name} on ${db.filesystem} on ${dev}: created`);

    const marker = markKernelLog();
    const ledger = db.ledger().start(db.preamble);
    const load = db.load?.(seconds);
    let replacements = 0;
    let kills = 0;
    let daemonRestarts = 0;
    let reportedError: string | undefined;
    const end = Date.now() + seconds * 1000;
    const halfway = Date.now() + (seconds * 1000) / 2;
    while (Date.now() < end && ledger.running) {
      await sleep(2000);
      if (options.failWrites && Date.now() > halfway && reportedError === undefined) {
        writeFileSync(flag, '');
        log('writes fail from now on');
        for (let i = 0; i < 300 && ledger.running; i++) await sleep(100);
        rmSync(flag, { force: true });
        reportedError = ledger.running ? '(none: the client went on committing)' : ledger.stderr.trim().split('\n').slice(-3).join(' | ');
        log(`writes succeed again; the client was told: ${reportedError}`);
        break;
      }
      if (daemonRestarts === 0 && Date.now() > halfway) {
        await must(process.execPath, [BIN, 'daemon', 'stop']);
        await must(process.execPath, [BIN, 'daemon', 'start']);
        daemonRestarts++;
        log('the daemon was stopped and started again');
        continue;
      }
      if (replacements % 2 === 1) {
        process.kill(Number(await info(dev, 'pid')), 'SIGKILL');
        kills++;
      }
      const r = await bdus(['rerun', dev, ...driver], { timeoutMs: 60_000 });
      if (r.code !== 0) throw new Error(`rerun ${replacements + 1} failed: ${r.stderr}`);
      replacements++;
      log(`${replacements} replacements (${kills} after SIGKILL), ${ledger.committed.length} transactions committed`);
    }
    const ledgerCode = await ledger.stop();
    const loaded = load ? await load.stop() : undefined;
    const problems: string[] = [];
    if (!options.failWrites && ledgerCode !== 0) problems.push(`the ledger client failed (${ledgerCode}): ${ledger.stderr}`);
    if (!options.failWrites && loaded?.problem) problems.push(loaded.problem);
    if (options.failWrites && ledgerCode === 0) problems.push('writes failed, yet the database reported no error to its client');

    // Hard stop, then the filesystem is checked and mounted afresh: what follows reads the device.
    await db.stop('crash');
    await must('umount', [mountpoint]);
    mounted = false;
    if (options.failWrites) {
      // A filesystem that met write errors may have shut down with its journal to replay: mounting replays it.
      await must('mount', [dev, mountpoint]);
      await must('umount', [mountpoint]);
    }
    const fsck = db.filesystem === 'xfs' ? await sh('xfs_repair', ['-n', dev], { timeoutMs: 300_000 }) : await sh('e2fsck', ['-fn', dev], { timeoutMs: 300_000 });
    if (fsck.code !== 0) problems.push(`${db.filesystem === 'xfs' ? 'xfs_repair -n' : 'e2fsck -fn'} found problems:\n${fsck.stdout}${fsck.stderr}`);
    await must('mount', [dev, mountpoint]);
    mounted = true;
    await db.start();
    const held = await db.committedIds();
    const lost = ledger.committed.filter((n) => !held.has(n));
    problems.push(...(await db.check()));
    const kernelIoErrors = await kernelIoErrorsSince(marker, kernel);
    if (!options.failWrites && kernelIoErrors > 0) problems.push(`the kernel logged ${kernelIoErrors} I/O errors for ${kernel}`);
    await db.stop('clean');
    log(`${ledger.committed.length} committed, ${lost.length} lost${lost.length ? ` (${lost.slice(0, 10).join(', ')}...)` : ''}`);
    return {
      database: db.name,
      filesystem: db.filesystem,
      seconds,
      committed: ledger.committed.length,
      lost: lost.length,
      ...(loaded ? { loadTransactions: loaded.transactions } : {}),
      replacements,
      kills,
      daemonRestarts,
      kernelIoErrors,
      ...(reportedError !== undefined ? { reportedError } : {}),
      problems,
    };
  } finally {
    rmSync(flag, { force: true });
    await db?.stop('crash').catch(() => undefined);
    db?.remove();
    if (mounted) await sh('umount', ['-l', mountpoint]);
    rmSync(mountpoint, { recursive: true, force: true });
    if (dev) await bdus(['destroy', '--force', '--no-flush', dev], { timeoutMs: 60_000 });
    rmSync(image, { force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: { seconds: { type: 'string', default: '300' }, database: { type: 'string' }, 'fail-writes': { type: 'boolean' } },
  });
  const kinds = values.database ? [values.database] : ['postgresql', 'sqlite'];
  let failed = false;
  for (const kind of kinds) {
    if (kind !== 'postgresql' && kind !== 'sqlite') throw new Error(`--database takes postgresql or sqlite, not '${kind}'`);
    const report = await throughCrashes(kind, Number(values.seconds), {
      failWrites: values['fail-writes'] ?? false,
      log: (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`),
    });
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    failed ||= report.lost !== 0 || report.problems.length !== 0;
  }
  process.exitCode = failed ? 1 : 0;
}
