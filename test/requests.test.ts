// This test ensures that each kernel request reaches the right callback with the right range,
// that a callback's failure reaches the client as BDUS specifies without harming other requests,
// that an abort destroys the device with pending I/O failing promptly, and that concurrency and
// max sizes hold.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { test } from 'node:test';
import { waitUntilDestroyed } from '../src/index.js';
import { background, bdus, BIN, device, DRIVERS, must, records, scratch, sh, sleep } from './helpers.js';

const MiB = 1 << 20;

function recorded(t: { after(fn: () => void): void }): string {
  const file = scratch('record.jsonl');
  t.after(() => rmSync(file, { force: true }));
  return file;
}

test('blkdiscard reaches discard with the right range', async (t) => {
  const log = recorded(t);
  const dev = await device(t, [`${DRIVERS}/recorder.js`, log, 'no-zeros']);
  await must('blkdiscard', ['-o', String(3 * MiB), '-l', String(5 * MiB), dev]);
  const discards = records(log).filter((r) => r.op === 'discard');
  assert.deepEqual(discards, [{ op: 'discard', offset: 3 * MiB, size: 5 * MiB }]);
  // A discard on FUSE+loop must leave zeros (see RequestLayer.discard, zeroes): it is followed by zero writes.
  await must('cmp', ['-n', String(5 * MiB), '-i', `${3 * MiB}:0`, dev, '/dev/zero']);
});

test('blkdiscard -z reaches writeZeros with mayUnmap false', async (t) => {
  const log = recorded(t);
  const dev = await device(t, [`${DRIVERS}/recorder.js`, log]);
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', 'count=4', 'seek=2', 'oflag=direct', 'status=none']);
  await must('blkdiscard', ['-z', '-o', String(2 * MiB), '-l', String(4 * MiB), dev]);
  const zeros = records(log).filter((r) => r.op === 'writeZeros');
  assert.deepEqual(zeros, [{ op: 'writeZeros', offset: 2 * MiB, size: 4 * MiB, mayUnmap: false }]);
  await must('cmp', ['-n', String(4 * MiB), '-i', `${2 * MiB}:0`, dev, '/dev/zero']);
});

test('a discard, when the driver has writeZeros, becomes writeZeros with mayUnmap true', async (t) => {
  const log = recorded(t);
  const dev = await device(t, [`${DRIVERS}/recorder.js`, log]);
  await must('blkdiscard', ['-o', '0', '-l', String(MiB), dev]);
  assert.deepEqual(records(log).filter((r) => r.op === 'writeZeros' || r.op === 'discard'), [{ op: 'writeZeros', offset: 0, size: MiB, mayUnmap: true }]);
});

test('fsync reaches flush', async (t) => {
  const log = recorded(t);
  const dev = await device(t, [`${DRIVERS}/recorder.js`, log]);
  const before = records(log).filter((r) => r.op === 'flush').length;
  await must('dd', ['if=/dev/zero', `of=${dev}`, 'bs=4k', 'count=1', 'oflag=direct', 'conv=fsync', 'status=none']);
  assert.ok(records(log).filter((r) => r.op === 'flush').length > before, 'a flush reached the driver');
});

test('a large request is split to maxReadWriteSize', async (t) => {
  const log = recorded(t);
  const dev = await device(t, [`${DRIVERS}/recorder.js`, log, '--max-read-write-size', '4096', '--disable-partition-scanning']);
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=64k', 'count=1', 'seek=16', 'oflag=direct', 'status=none']);
  const writes = records(log).filter((r) => r.op === 'write');
  assert.equal(writes.length, 16);
  assert.ok(writes.every((w, i) => w.size === 4096 && w.offset === MiB + i * 4096));
  const init = records(log).find((r) => r.op === 'initialize') as { attributes: { maxReadWriteSize: number } };
  assert.equal(init.attributes.maxReadWriteSize, 4096, 'the callback saw the adjusted attribute');
});

test('ENOSPC from a callback reaches the client\'s write(2)', async (t) => {
  const dev = await device(t, [`${DRIVERS}/faulty.js`]);
  const r = await sh('dd', ['if=/dev/zero', `of=${dev}`, 'bs=4k', 'count=1', `seek=${MiB / 4096}`, 'oflag=direct', 'status=none']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /No space left on device/);
});

test('a throwing callback fails only its request; the device keeps working', async (t) => {
  const dev = await device(t, [`${DRIVERS}/faulty.js`]);
  const bad = await sh('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=1', `skip=${(2 * MiB) / 4096}`, 'iflag=direct', 'status=none']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /Input\/output error/);
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=4k', 'count=16', 'oflag=direct', 'status=none']);
  await must('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=16', 'iflag=direct', 'status=none']);
});

test('abort destroys the device; pending I/O fails with EIO within a second', async (t) => {
  const dev = await device(t, [`${DRIVERS}/faulty.js`]);
  const loop = (await must('readlink', ['-f', dev])).trim();
  const id = BigInt((await must(process.execPath, [BIN, 'info', dev, '--id'])).trim());
  // A read the driver never answers is pending when the driver aborts.
  const pending = background('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=1', `skip=${(3 * MiB) / 4096}`, 'iflag=direct', 'status=none']);
  await sleep(300);
  const abortedAt = Date.now();
  const trigger = await sh('dd', ['if=/dev/zero', `of=${dev}`, 'bs=4k', 'count=1', `seek=${(4 * MiB) / 4096}`, 'oflag=direct', 'status=none']);
  assert.notEqual(trigger.code, 0);
  const result = await pending.done;
  assert.notEqual(result.code, 0);
  assert.match(result.stderr, /Input\/output error/);
  assert.ok(Date.now() - abortedAt < 1000, `pending I/O failed after ${Date.now() - abortedAt} ms`);
  await waitUntilDestroyed(id);
  assert.equal(existsSync(dev), false, 'the stable path is gone');
  assert.equal(existsSync(`/sys/block/${loop.replace('/dev/', '')}/loop`), false, 'the loop device is detached');
  assert.deepEqual(JSON.parse((await bdus(['list', '--json'])).stdout), []);
});

test('callbacks stay within maxConcurrentCallbacks, and a slow one does not stop the others', async (t) => {
  const most = recorded(t);
  const dev = await device(t, [`${DRIVERS}/slow.js`, most]);
  const slowRead = background('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=1', 'iflag=direct', 'status=none']);
  await sleep(200);
  const started = Date.now();
  await must('fio', ['--name=c', `--filename=${dev}`, '--direct=1', '--ioengine=libaio', '--iodepth=16', '--rw=randread', '--bs=4k', '--offset=1M', '--size=8M', '--number_ios=64', '--output-format=terse']);
  assert.ok(Date.now() - started < 2500, 'other reads completed while the slow read was in progress');
  assert.equal((await slowRead.done).code, 0);
  assert.equal(readFileSync(most, 'utf8'), '4');
});
