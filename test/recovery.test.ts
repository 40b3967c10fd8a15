/**
 * Driver replacement and crash recovery (issue 4), on the real kernel: BDUS's retry-request and
 * fail-while-replacing tests, hot swap under fio verify, each recovery mode as a client sees it,
 * the per-request restart limit and the recovery limit, and the races.
 *
 * The devices run test/drivers/recoverable.js: the loop example over an image file, so the data
 * outlives each driver instance, with misbehaviours chosen by argument.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { rmSync } from 'node:fs';
import { background, bdus, device, DRIVERS, image, info, leftovers, readBlock, records, scratch, sleep, type Result } from './helpers.js';

const DRIVER = `${DRIVERS}/recoverable.js`;
const MiB = 1 << 20;

function readBlockInBackground(dev: string, offset: number) {
  return background('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${offset}`, 'bs=4096', 'count=1', 'status=none']);
}

async function pid(dev: string): Promise<number> {
  return Number(await info(dev, 'pid'));
}

/** Waits until the device has no driver (the daemon saw it die). */
async function untilDriverless(dev: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if ((await pid(dev)) === 0) return;
    await sleep(50);
  }
  assert.fail(`${dev} still has a driver`);
}

async function kill(dev: string): Promise<void> {
  process.kill(await pid(dev), 'SIGKILL');
  await untilDriverless(dev);
}

/** Waits until the device's current driver says it hands the device over (it is then in its flush or terminate). */
async function untilHandingOver(dev: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await bdus(['logs', dev])).stdout.includes('handing the device over to a new driver')) return;
    await sleep(50);
  }
  assert.fail(`${dev}'s driver never started handing over`);
}

function rerun(dev: string, args: readonly string[]): Promise<Result> {
  return bdus(['rerun', dev, DRIVER, ...args], { timeoutMs: 60_000 });
}

async function mustRerun(dev: string, args: readonly string[]): Promise<void> {
  const r = await rerun(dev, args);
  assert.equal(r.code, 0, `bdus rerun failed: ${r.stderr}`);
  assert.equal(r.stdout.trim(), dev, 'rerun prints the device path once the new driver serves');
}

test('retry-request (BDUS): a discard that aborts a recoverable driver completes once a new driver attaches', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, 'abort-on-discard', '--recoverable']);
  const discard = background('blkdiscard', ['-o', String(MiB), '-l', String(MiB), dev]);
  await untilDriverless(dev); // the driver aborted on the discard
  await mustRerun(dev, [img]);
  const result = await discard.done;
  assert.equal(result.code, 0, `blkdiscard failed: ${result.stderr}`);
});

test('hot swap order (BDUS): the old driver is flushed and terminated before the new one initializes (isRerun) and is told the device is available', async (t) => {
  const log = scratch('records');
  t.after(() => rmSync(log, { force: true }));
  const dev = await device(t, [`${DRIVERS}/recorder.js`, log]);
  const first = await pid(dev);
  const r = await bdus(['rerun', dev, `${DRIVERS}/recorder.js`, log]);
  assert.equal(r.code, 0, r.stderr);
  const second = await pid(dev);
  const steps = records(log)
    .filter((e) => ['initialize', 'onDeviceAvailable', 'flush', 'terminate'].includes(String(e.op)))
    .map((e) => `${String(e.op)}@${e.pid === first ? 'old' : e.pid === second ? 'new' : '?'}${e.op === 'initialize' ? `(isRerun=${String(e.isRerun)})` : ''}`);
  assert.equal(steps[0], 'initialize@old(isRerun=false)');
  // From the old driver's onDeviceAvailable to the new one's: flushes (the hand-over's, and any
  // a client sent before it), then terminate, and only then the new driver.
  const swap = steps.slice(steps.indexOf('onDeviceAvailable@old') + 1, steps.indexOf('onDeviceAvailable@new') + 1);
  const flushes = swap.findIndex((step) => step !== 'flush@old');
  assert.ok(flushes >= 1, `the old driver got a flush: ${swap.join(', ')}`);
  assert.deepEqual(swap.slice(flushes), ['terminate@old', 'initialize@new(isRerun=true)', 'onDeviceAvailable@new']);
});

test('fail-while-replacing (BDUS): flush or terminate fails; recoverable devices take the new driver, others are destroyed', async (t) => {
  for (const failure of ['fail-flush', 'fail-terminate']) {
    for (const recoverable of [false, true]) {
      await t.test(`${failure}, ${recoverable ? '' : 'not '}recoverable`, async (t) => {
        const img = image(t);
        const dev = await device(t, [DRIVER, img, failure, ...(recoverable ? ['--recoverable'] : [])]);
        const r = await rerun(dev, [img]);
        if (recoverable) {
          assert.equal(r.code, 0, r.stderr);
          assert.equal((await readBlock(dev, 0)).code, 0, 'the new driver serves');
        } else {
          assert.equal(r.code, 1);
          assert.match(r.stderr, /was destroyed: its driver failed to hand over \(.*fails, as asked\), and it is not recoverable/);
          const listed = JSON.parse((await bdus(['list', '--json'])).stdout) as unknown[];
          assert.deepEqual(listed, [], 'the device is gone');
        }
      });
    }
  }
  assert.deepEqual(await leftovers(), []);
});

test('hot swap under load: fio verify on the raw device while the driver is replaced 20 times, 0 errors', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img]);
  const fio = background('fio', [
    '--name=swap', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--ioengine=libaio', '--direct=1',
    '--size=32M', '--verify=crc32c', '--verify_backlog=512', '--verify_fatal=1', '--verify_state_save=0',
    '--time_based', '--runtime=600', '--output-format=terse',
  ]);
  t.after(() => fio.stop());
  const pids = new Set<number>([await pid(dev)]);
  for (let i = 0; i < 20; i++) {
    await sleep(150);
    await mustRerun(dev, [img]);
    pids.add(await pid(dev));
  }
  assert.equal(pids.size, 21, 'each rerun brought a new driver instance');
  fio.stop();
  const result = await fio.done;
  // fio exits with 128 when stopped by a signal; its report says whether any I/O or verify failed.
  assert.ok(result.code === 0 || result.code === 128, `fio failed (${result.code}): ${result.stderr}`);
  assert.equal(result.stdout.split(';')[4], '0', `fio saw errors: ${result.stdout}`);
});

test('recoveryMode reissue (default): a request the dead driver held is served by the next one', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, `hang-read-at=${MiB}`, '--recoverable']);
  const held = readBlockInBackground(dev, MiB);
  await sleep(300);
  await kill(dev);
  await mustRerun(dev, [img]);
  const result = await held.done;
  assert.equal(result.code, 0, `the re-issued read failed: ${result.stderr}`);
});

test('recoveryMode fail-received: what the dead driver held fails with EIO at once; later requests wait for the next driver', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, `hang-read-at=${MiB}`, '--recoverable', '--recovery-mode', 'fail-received']);
  const held = readBlockInBackground(dev, MiB);
  await sleep(300);
  await kill(dev);
  const failed = await held.done;
  assert.notEqual(failed.code, 0);
  assert.match(failed.stderr, /Input\/output error/);
  const waiting = readBlockInBackground(dev, 0);
  await sleep(300);
  await mustRerun(dev, [img]);
  const result = await waiting.done;
  assert.equal(result.code, 0, `a request sent after the death failed: ${result.stderr}`);
  assert.ok(result.ms >= 250, 'it waited for the new driver');
});

test('recoveryMode fail-all: every request fails with EIO until a driver attaches', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, '--recoverable', '--recovery-mode', 'fail-all']);
  await kill(dev);
  const started = Date.now();
  const failed = await readBlock(dev, 0);
  assert.notEqual(failed.code, 0);
  assert.match(failed.stderr, /Input\/output error/);
  assert.ok(Date.now() - started < 1000, 'it failed at once');
  await mustRerun(dev, [img]);
  assert.equal((await readBlock(dev, 0)).code, 0);
});

test('without a driver, a request waits at most one request timeout', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, '--recoverable', '--request-timeout', '1s']);
  await kill(dev);
  const started = Date.now();
  const result = await readBlock(dev, 0);
  const waited = Date.now() - started;
  assert.notEqual(result.code, 0);
  assert.ok(waited >= 900 && waited < 3000, `failed after ${waited} ms, expected 1 to 1.25 timeouts`);
  await mustRerun(dev, [img]);
  assert.equal((await readBlock(dev, 0)).code, 0, 'the device serves again');
});

test('restartLimit: a request that kills every driver fails alone after the limit; the others are served', async (t) => {
  const img = image(t);
  const crashy = [img, `crash-read-at=${MiB}`];
  const dev = await device(t, [DRIVER, ...crashy, '--recoverable', '--restart-limit', '2']);
  const poison = readBlockInBackground(dev, MiB);
  await untilDriverless(dev); // driver 1 died on it
  await rerun(dev, crashy);
  await untilDriverless(dev); // driver 2 died on it, re-sent
  const innocent = readBlockInBackground(dev, 0);
  await sleep(200);
  await mustRerun(dev, crashy); // driver 3 gets it a third time: over the limit
  const failed = await poison.done;
  assert.notEqual(failed.code, 0);
  assert.match(failed.stderr, /Input\/output error/);
  const served = await innocent.done;
  assert.equal(served.code, 0, served.stderr);
  assert.notEqual(await pid(dev), 0, 'driver 3 lives on');
  assert.equal((await readBlock(dev, 2 * MiB)).code, 0);
});

test('recoveryLimit: drivers that fail during recovery exhaust it (EIO), and a later driver still serves', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, '--recoverable', '--recovery-limit', '2']);
  await kill(dev);
  for (let i = 0; i < 2; i++) {
    const r = await rerun(dev, [img, 'fail-initialize']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /initialize fails, as asked/);
  }
  await untilDriverless(dev);
  const started = Date.now();
  const failed = await readBlock(dev, 0);
  assert.notEqual(failed.code, 0, 'the device gave up: I/O fails');
  assert.ok(Date.now() - started < 1000, 'at once');
  assert.equal(await info(dev, 'state'), 'available', 'but the device keeps its record');
  await mustRerun(dev, [img]);
  assert.equal((await readBlock(dev, 0)).code, 0, 'a later driver serves it again');
});

test('a rerun racing with the current driver crashing: a recoverable device takes the new driver', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, 'slow-terminate=1500', '--recoverable']);
  const old = await pid(dev);
  const replacing = rerun(dev, [img]);
  await untilHandingOver(dev); // the old driver is in its terminate (1.5 s of it)
  process.kill(old, 'SIGKILL');
  const r = await replacing;
  assert.equal(r.code, 0, r.stderr);
  assert.equal((await readBlock(dev, 0)).code, 0);
});

test('a rerun racing with the current driver crashing: a device that is not recoverable is destroyed', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, 'slow-terminate=1500']);
  const old = await pid(dev);
  const replacing = rerun(dev, [img]);
  await untilHandingOver(dev);
  process.kill(old, 'SIGKILL');
  const r = await replacing;
  assert.equal(r.code, 1);
  assert.match(r.stderr, /died while handing over, and it is not recoverable/);
  assert.deepEqual(await leftovers(), []);
});

test('two reruns racing for one device: one wins, the other gets a clear error', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, 'slow-terminate=1000']);
  const results = await Promise.all([rerun(dev, [img]), sleep(200).then(() => rerun(dev, [img]))]);
  assert.deepEqual(results.map((r) => r.code).sort(), [0, 1]);
  const loser = results.find((r) => r.code === 1)!;
  assert.match(loser.stderr, /is already being replaced by the driver in pid \d+/);
  assert.equal((await readBlock(dev, 0)).code, 0);
});

test('a driver that cannot stand in for the current one is refused, and the current one serves on', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img]);
  const before = await pid(dev);
  const bigger = await rerun(dev, [img, '--size', '32M']);
  assert.equal(bigger.code, 1);
  assert.match(bigger.stderr, /size must stay 67108864 \(got 33554432\)/);
  const zero = await bdus(['rerun', dev, 'zero', '--size', '64M']);
  assert.equal(zero.code, 1);
  assert.match(zero.stderr, /lacks the write, writeZeros, flush, discard callbacks/);
  assert.equal(await pid(dev), before);
  assert.equal((await readBlock(dev, 0)).code, 0);
});

test('a rerun checks before it hands over: a bad module, arguments or validate leave the current driver serving', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img]);
  const before = await pid(dev);
  const cases: Array<[string[], RegExp]> = [
    [['rerun', dev, '/nonexistent/driver.js'], /no driver module at \/nonexistent\/driver\.js/],
    [['rerun', dev, DRIVER, '/nonexistent/image'], /ENOENT.*\/nonexistent\/image/],
    [['rerun', dev, DRIVER, img, 'fail-validate'], /^bdus: error: the driver's validate failed: validate refuses, as asked$/m],
    [['rerun', dev, DRIVER, img, '--frobnicate'], /unknown option '--frobnicate'/],
  ];
  for (const [args, pattern] of cases) {
    const r = await bdus(args, { timeoutMs: 60_000 });
    assert.notEqual(r.code, 0, args.join(' '));
    assert.match(r.stderr, pattern);
    assert.equal(await pid(dev), before, 'the current driver still serves');
    assert.equal((await readBlock(dev, 0)).code, 0);
  }
});

test('a rerun whose driver fails after the hand-over says what became of the device', async (t) => {
  const img = image(t);
  const kept = await device(t, [DRIVER, img, '--recoverable']);
  const waits = await rerun(kept, [img, 'fail-initialize']);
  assert.equal(waits.code, 1);
  assert.match(waits.stderr, new RegExp(`the driver's initialize failed: initialize fails, as asked; ${kept} stays without a driver \\(recoverable\\).*bdus rerun ${kept} DRIVER`));
  assert.equal(await pid(kept), 0);
  assert.equal((await rerun(kept, [img])).code, 0, 'a good driver takes it back');
  const other = image(t);
  const lost = await device(t, [DRIVER, other]);
  const destroyed = await rerun(lost, [other, 'fail-initialize']);
  assert.equal(destroyed.code, 1);
  assert.match(destroyed.stderr, new RegExp(`${lost} is not recoverable, so it is destroyed`));
});

test('a recoverable device waiting for a driver can be destroyed; its waiting requests fail, nothing is left', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, '--recoverable']);
  await kill(dev);
  assert.match((await bdus(['list'])).stdout, /available\s+none\s/);
  const waiting = readBlockInBackground(dev, 0);
  await sleep(300);
  const r = await bdus(['destroy', '--force', dev]);
  assert.equal(r.code, 0, r.stderr);
  assert.notEqual((await waiting.done).code, 0, 'the waiting read fails');
  assert.deepEqual(await leftovers(), []);
});
