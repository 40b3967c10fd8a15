// This test ensures that a device's log outlives each of its drivers: a rerun appends to it, a
// crashed driver's last words and the daemon's note stay, `bdus logs --follow` ends with the
// device, and the log of a gone device can still be read by its id.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { background, bdus, BIN, device, DRIVERS, image, info, sleep } from './helpers.js';

const DRIVER = `${DRIVERS}/recoverable.js`;

async function pidOf(dev: string): Promise<number> {
  return Number(await info(dev, 'pid'));
}

test("a device's log keeps every driver's part, marked with its pid, across reruns and a crash", async (t) => {
  const img = image(t);
  const dev = await device(t, [DRIVER, img, '--recoverable']);
  const id = await info(dev, 'id');
  const first = await pidOf(dev);
  assert.equal((await bdus(['rerun', dev, DRIVER, img], { timeoutMs: 60_000 })).code, 0);
  const second = await pidOf(dev);
  const follow = background(process.execPath, [BIN, 'logs', '--follow', dev]);
  process.kill(second, 'SIGKILL');
  for (let i = 0; i < 100 && (await pidOf(dev)) !== 0; i++) await sleep(50);
  assert.equal((await bdus(['rerun', dev, DRIVER, img], { timeoutMs: 60_000 })).code, 0);
  const third = await pidOf(dev);

  const log = (await bdus(['logs', dev])).stdout;
  for (const pid of [first, second, third]) {
    assert.match(log, new RegExp(`^\\S+ \\[${pid}\\] ${dev}: driver pid ${pid} \\(bdus \\d+\\.\\d+\\.\\d+\\) serves it: \\S+recoverable\\.js `, 'm'));
  }
  assert.match(log, new RegExp(`\\[bdus daemon \\d+\\] the driver in pid ${second} ended without removing the device`));
  assert.ok(log.indexOf(`driver pid ${first}`) < log.indexOf(`driver pid ${second}`), 'in order');
  assert.match(log, new RegExp(`\\[${second}\\] ${dev}: handing the device over|\\[${first}\\] ${dev}: handing the device over`));

  assert.equal((await bdus(['destroy', dev])).code, 0);
  const followed = await follow.done;
  assert.equal(followed.code, 0, 'logs --follow ends with the device');
  assert.match(followed.stdout, new RegExp(`driver pid ${third}`));
  const kept = await bdus(['logs', id]);
  assert.equal(kept.code, 0, kept.stderr);
  assert.match(kept.stdout, new RegExp(`driver pid ${third}`));
});
