/**
 * `bdus check` on real devices (FUSE+loop here): the loop example passes; the three broken
 * fixtures fail the properties they break (ram: its memory dies with it; write-back: a cache lost
 * in a crash, flushes acknowledged early; log-no-seq: a log replayed without sequence numbers).
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { test } from 'node:test';
import { BIN, DRIVERS, bdus, image, leftovers, scratch, sh } from './helpers.js';

interface Report {
  recoverable: boolean;
  seed: number;
  faults: Array<{ kind: string; ms: number; wrong: number }>;
  operations: { writes: number; reads: number; flushes: number; writeZeroes: number };
  properties: Array<{ property: string; verdict: string; violations: number; smallest?: { history: string[]; expected: string; found: string } }>;
}

async function check(args: string[], seconds = 8): Promise<{ code: number; report: Report; stderr: string }> {
  const r = await sh(process.execPath, [BIN, 'check', '--seconds', String(seconds), '--json', ...args], { timeoutMs: 180_000 });
  assert.ok(r.stdout.trim().startsWith('{'), `bdus check printed no report (exit ${r.code}): ${r.stderr}`);
  return { code: r.code, report: JSON.parse(r.stdout) as Report, stderr: r.stderr };
}

const verdicts = (report: Report) => Object.fromEntries(report.properties.map((p) => [p.property, p.verdict]));

test('bdus check passes the loop example: every property holds across swaps, SIGKILLs and SIGKILLs inside callbacks', async (t) => {
  const { code, report, stderr } = await check(['loop', image(t)]);
  assert.deepEqual(verdicts(report), {
    'read-back': 'pass', 'acknowledged-writes': 'pass', 'flushed-writes': 'pass', 'resent-writes': 'pass', 'never-written': 'pass', zeroes: 'pass',
  });
  assert.equal(report.recoverable, true);
  assert.equal(code, 0);
  const kinds = new Set(report.faults.map((f) => f.kind));
  assert.deepEqual(kinds, new Set(['hot swap', 'SIGKILL', 'SIGKILL inside a callback']));
  assert.ok(report.operations.writes > 1000 && report.operations.flushes > 10 && report.operations.writeZeroes > 10, JSON.stringify(report.operations));
  assert.match(stderr, /SIGKILL inside a callback: every block reads back right/);
  assert.deepEqual(await leftovers(), []);
});

test('bdus check fails the ram example marked recoverable: its writes, flushed or not, die with it', async () => {
  const { code, report } = await check(['ram', '--size', '32M']);
  assert.equal(code, 1);
  assert.equal(report.recoverable, false);
  const v = verdicts(report);
  assert.equal(v['acknowledged-writes'], 'fail');
  assert.equal(v['flushed-writes'], 'fail');
  assert.equal(v['never-written'], 'pass');
  const smallest = report.properties.find((p) => p.property === 'flushed-writes')!.smallest!;
  assert.equal(smallest.found, 'zeros');
  assert.ok(smallest.history.length <= 3, `the smallest case is small: ${smallest.history.join(' / ')}`);
});

test('bdus check fails a write-back cache that is lost in a crash and acknowledges flushes early', async (t) => {
  const { code, report } = await check([`${DRIVERS}/write-back.js`, image(t)]);
  assert.equal(code, 1);
  const v = verdicts(report);
  assert.equal(v['acknowledged-writes'], 'fail');
  assert.equal(v['flushed-writes'], 'fail', 'a flush acknowledged before its data is down');
  assert.equal(v['never-written'], 'pass');
  assert.equal(report.faults.find((f) => f.kind === 'hot swap')?.wrong, 0, 'terminate writes the cache back: a hot swap loses nothing');
});

test('bdus check fails a log replayed without sequence numbers: a torn record shows data never written', async (t) => {
  const log = scratch('log');
  t.after(() => rmSync(log, { force: true }));
  const { code, report } = await check([`${DRIVERS}/log-no-seq.js`, log], 20);
  assert.equal(code, 1);
  const v = verdicts(report);
  assert.equal(v['never-written'], 'fail');
  assert.equal(v['acknowledged-writes'], 'fail');
  const smallest = report.properties.find((p) => p.property === 'never-written')!.smallest!;
  assert.equal(smallest.found, 'data never written there');
});

test('bdus check: clear errors for bad arguments and for a driver that cannot start; nothing left behind', async () => {
  let r = await bdus(['check']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /missing the driver/);
  r = await bdus(['check', '--seconds', '0', 'ram']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /invalid --seconds '0'/);
  r = await bdus(['check', '--region', 'lots', 'ram']);
  assert.equal(r.code, 2);
  r = await bdus(['check', '--seconds', '2', './no-such-driver.js']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no driver module at/);
  r = await bdus(['check', '--seconds', '2', 'ram', '--size', '64K']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /too small to check/);
  assert.deepEqual(await leftovers(), []);
});
