/**
 * Stuck drivers (src/control/watchdog.ts): a driver whose event loop never returns is killed by
 * the daemon within max(requestTimeout, 4 s) + 1.5 s, and its device goes as its rules say; a hand-over's
 * flush has a deadline of its own. Real FUSE+loop devices over an image (test/drivers/recoverable.js).
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { DAEMON_LOG_PATH } from '../src/control/protocol.js';
import { isAlive, processStart } from '../src/util/process.js';
import { background, bdus, device, DRIVERS, image, info, leftovers, mustRerun, readBlock, sleep } from './helpers.js';

const DRIVER = `${DRIVERS}/recoverable.js`;
const MiB = 1 << 20;

test('a driver stuck in a callback (an event loop that never returns) is killed; its non-recoverable device goes, the client gets EIO', async (t) => {
  const dev = await device(t, [DRIVER, image(t), `spin-read-at=${MiB}`, '--request-timeout', '2s']);
  const pid = await info(dev, 'pid');
  const started = Date.now();
  const read = await readBlock(dev, MiB);
  const ms = Date.now() - started;
  assert.notEqual(read.code, 0, 'the stuck read fails');
  assert.match(read.stderr, /Input\/output error/);
  assert.ok(ms < 4000 + 1500 + 1500, `within max(requestTimeout, 4 s) + 1.5 s (and some): ${ms} ms`);
  for (let i = 0; i < 50 && existsSync(dev); i++) await sleep(100);
  assert.equal(existsSync(dev), false, 'the device is gone');
  assert.match(readFileSync(DAEMON_LOG_PATH, 'utf8'), new RegExp(`the driver in pid ${pid} has not run for \\d+ ms \\(requestTimeout 2000 ms\\): its event loop is stuck; killing it`));
  // The loop device goes with its last opener, the failed dd, a moment later.
  for (let i = 0; i < 50 && (await leftovers()).length > 0; i++) await sleep(100);
  assert.deepEqual(await leftovers(), []);
});

test('a recoverable device keeps the stuck request for the next driver, which answers it', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, `spin-read-at=${MiB}`, '--request-timeout', '2s', '--recoverable']);
  const reader = background('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${MiB}`, 'bs=4096', 'count=1', 'status=none']);
  for (let i = 0; i < 100 && (await info(dev, 'pid')) !== '0'; i++) await sleep(100);
  assert.equal(await info(dev, 'pid'), '0', 'the stuck driver was killed; the device waits for another');
  await mustRerun(dev, [DRIVER, img]);
  const r = await reader.done;
  assert.equal(r.code, 0, `the read completes through the new driver: ${r.stderr}`);
});

test('a hand-over stuck in the old driver\'s flush ends in bounded time: a recoverable device takes the new driver', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, 'spin-flush', '--request-timeout', '2s', '--recoverable']);
  await sleep(1200); // armed
  const started = Date.now();
  await mustRerun(dev, [DRIVER, img]);
  assert.ok(Date.now() - started < 10_000, `${Date.now() - started} ms`);
  assert.equal((await readBlock(dev, 0)).code, 0);
});

test('a slow flush in a hand-over has a deadline (requestTimeout): a device that is not recoverable is destroyed, and says why', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, 'slow-flush=60000', '--request-timeout', '2s']);
  const pid = Number(await info(dev, 'pid'));
  const start = processStart(pid)!;
  await sleep(1200); // armed
  const started = Date.now();
  const r = await bdus(['rerun', dev, DRIVER, img], { timeoutMs: 60_000 });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /its flush did not finish within 2000 ms \(requestTimeout\)/);
  assert.ok(Date.now() - started < 8000, `${Date.now() - started} ms`);
  for (let i = 0; i < 50 && existsSync(dev); i++) await sleep(100);
  assert.equal(existsSync(dev), false);
  // Its flush's 60 s timer must not keep the old driver's process alive once it has handed over.
  for (let i = 0; i < 50 && isAlive(pid, start); i++) await sleep(100);
  assert.equal(isAlive(pid, start), false, `the old driver (pid ${pid}) has exited`);
});

test('a driver that stops reading requests, its event loop running, is killed too: a recoverable device gives the waiting read to the next driver', async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, `stop-reading-at=${MiB}`, '--request-timeout', '2s', '--recoverable']);
  const pid = await info(dev, 'pid');
  const reader = background('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${MiB}`, 'bs=4096', 'count=1', 'status=none']);
  const started = Date.now();
  for (let i = 0; i < 150 && (await info(dev, 'pid')) !== '0'; i++) await sleep(100);
  const ms = Date.now() - started;
  assert.equal(await info(dev, 'pid'), '0', 'the driver was killed; the device waits for another');
  assert.ok(ms < 4000 + 1500 + 2000, `within max(requestTimeout, 4 s) + 1.5 s (and some): ${ms} ms`);
  assert.match(readFileSync(DAEMON_LOG_PATH, 'utf8'), new RegExp(`the driver in pid ${pid} has taken and answered no request for \\d+ ms while the kernel holds requests for it \\(requestTimeout 2000 ms\\): it stopped serving; killing it`));
  await mustRerun(dev, [DRIVER, img]);
  const r = await reader.done;
  assert.equal(r.code, 0, `the read completes through the next driver: ${r.stderr}`);
});

test('a driver that stops reading requests on a device that is not recoverable: the client gets EIO and the device goes', async (t) => {
  const dev = await device(t, [DRIVER, image(t), `stop-reading-at=${MiB}`, '--request-timeout', '2s']);
  const read = await readBlock(dev, MiB);
  assert.notEqual(read.code, 0, 'the read fails');
  assert.match(read.stderr, /Input\/output error/);
  for (let i = 0; i < 50 && existsSync(dev); i++) await sleep(100);
  assert.equal(existsSync(dev), false, 'the device is gone');
});
