/**
 * The torture test (test/torture.ts) for one minute: XFS + fio verify on a recoverable device
 * whose driver is replaced every 2 s, every other time after a SIGKILL. BDUS_TORTURE_SECONDS
 * changes the duration; `node dist/test/torture.js --seconds 600` runs the ten-minute version.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { torture } from './torture.js';

test('torture: XFS + fio verify while the driver is replaced every 2 s, half the time after SIGKILL', { timeout: 600_000 }, async (t) => {
  const seconds = Number(process.env.BDUS_TORTURE_SECONDS ?? 60);
  const report = await torture(seconds, (line) => t.diagnostic(line));
  t.diagnostic(JSON.stringify(report));
  // What is checked is fio's and the kernel's errors; the count only shows the test did its job.
  // A cycle is the 2 s pause plus a rerun under XFS + fio load, which took 1-1.5 s on these
  // machines (17-18 replacements a minute on one, 20+ on another): at least one every 5 s.
  assert.ok(report.replacements >= seconds / 5, `only ${report.replacements} replacements`);
  assert.ok(report.kills >= seconds / 10, `only ${report.kills} replacements after SIGKILL`);
  assert.equal(report.fioErrors, '0', 'fio saw no error (I/O or verify)');
  assert.equal(report.kernelIoErrors, 0, 'the kernel logged no I/O error for the device');
});
