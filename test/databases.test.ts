/**
 * Real databases through crashes (test/databases.ts): PostgreSQL on ext4 under pgbench and
 * SQLite in WAL mode on XFS, each with a ledger client recording every commit, while the driver
 * is hot-swapped and SIGKILLed every 2 s and the daemon restarts once; then each with writes
 * failing with EIO for a while. Short here (CI); `npm run databases -- --seconds 300` is the long
 * run, recorded in docs/recovery.md.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { throughCrashes, type DatabaseReport } from './databases.js';

const SECONDS = Number(process.env.BDUS_DATABASE_SECONDS ?? 30);

function report(t: { diagnostic(message: string): void }, r: DatabaseReport): void {
  t.diagnostic(
    `${r.database} on ${r.filesystem}: ${r.committed} transactions committed${r.loadTransactions !== undefined ? ` (and ${r.loadTransactions} by pgbench)` : ''}, ` +
      `${r.replacements} replacements (${r.kills} after SIGKILL), ${r.daemonRestarts} daemon restart, lost: ${r.lost}`,
  );
  assert.ok(r.committed > 100, `${r.committed} transactions committed`);
  assert.equal(r.lost, 0, 'every acknowledged transaction is still there');
  assert.deepEqual(r.problems, []);
}

for (const database of ['postgresql', 'sqlite'] as const) {
  test(`${database} through hot swaps, SIGKILLs and a daemon restart: every committed transaction survives, checks clean`, { timeout: 900_000 }, async (t) => {
    const r = await throughCrashes(database, SECONDS, { log: (line) => t.diagnostic(line) });
    report(t, r);
    assert.ok(r.replacements >= 4 && r.kills >= 2 && r.daemonRestarts === 1, JSON.stringify(r));
    assert.equal(r.kernelIoErrors, 0);
  });

  test(`${database} while writes fail with EIO: the database reports it, and loses nothing it acknowledged`, { timeout: 900_000 }, async (t) => {
    const r = await throughCrashes(database, Math.min(SECONDS, 20), { failWrites: true, log: (line) => t.diagnostic(line) });
    report(t, r);
    assert.ok(r.reportedError && !r.reportedError.startsWith('(none'), `the client was told: ${r.reportedError}`);
    assert.ok(r.kernelIoErrors > 0, 'the kernel saw the write errors');
  });
}
