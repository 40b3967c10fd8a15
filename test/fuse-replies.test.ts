/**
 * How a device served over /dev/fuse sends its replies: those of a batch of requests leave
 * together in one io_uring_enter (native writeBatch), not in a write each, which strace of the
 * driver under fio shows; and where the kernel gives no io_uring (kernel.io_uring_disabled = 2,
 * as hardened machines and container sandboxes have it), each reply is written at once, and fio
 * verify (4k QD32, 1M) and ext4 pass all the same.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { background, device, ext4ThenDestroy, info, must, syscalls } from './helpers.js';

const DISABLED = '/proc/sys/kernel/io_uring_disabled';

function fio(t: TestContext, dev: string, args: readonly string[]): ReturnType<typeof background> {
  const job = background('fio', ['--name=load', `--filename=${dev}`, '--ioengine=libaio', '--direct=1', '--size=64M', '--time_based', '--runtime=60', ...args]);
  t.after(() => job.stop());
  return job;
}

async function verify(dev: string, bs: string, iodepth: number): Promise<void> {
  await must('fio', [
    '--name=verify', `--filename=${dev}`, '--rw=randwrite', `--bs=${bs}`, `--iodepth=${iodepth}`, '--ioengine=libaio', '--direct=1',
    '--size=32M', '--verify=crc32c', '--verify_fatal=1', '--output-format=terse',
  ], { timeoutMs: 120_000 });
}

test('replies of a batch leave in one io_uring_enter, not in a write each', async (t) => {
  const dev = await device(t, ['ram', '--size', '256M']);
  const load = fio(t, dev, ['--rw=randread', '--bs=4k', '--iodepth=32']);
  const calls = await syscalls(Number(await info(dev, 'pid')), 3, ['read', 'write', 'writev', 'io_uring_enter']);
  load.stop();
  await load.done;
  const reads = calls.get('read') ?? 0;
  const enters = calls.get('io_uring_enter') ?? 0;
  const writes = (calls.get('write') ?? 0) + (calls.get('writev') ?? 0);
  t.diagnostic(`under strace: ${reads} reads, ${enters} io_uring_enter, ${writes} writes`);
  assert.ok(reads > 1000, `the driver read requests (${reads} reads)`);
  assert.ok(enters > 0 && enters < reads / 2, `replies submitted in batches: ${enters} io_uring_enter for ${reads} reads`);
  // A batch of one leaves in a plain write (cheaper than io_uring_enter): a deep queue has few.
  assert.ok(writes < reads / 10, `no write per reply (${writes})`);
});

test('without io_uring (kernel.io_uring_disabled = 2) each reply is written at once: fio verify and ext4 pass', async (t) => {
  const before = readFileSync(DISABLED, 'utf8').trim();
  writeFileSync(DISABLED, '2');
  t.after(() => writeFileSync(DISABLED, before));
  const dev = await device(t, ['ram', '--size', '256M']);
  await verify(dev, '4k', 32);
  await verify(dev, '1M', 8);
  const load = fio(t, dev, ['--rw=randwrite', '--bs=4k', '--iodepth=32']);
  const calls = await syscalls(Number(await info(dev, 'pid')), 2, ['read', 'write', 'writev', 'io_uring_enter']);
  load.stop();
  await load.done;
  const writes = (calls.get('write') ?? 0) + (calls.get('writev') ?? 0);
  t.diagnostic(`under strace: ${calls.get('read') ?? 0} reads, ${writes} writes`);
  assert.equal(calls.get('io_uring_enter') ?? 0, 0, 'no io_uring');
  assert.ok(writes > 1000, `a write per reply (${writes})`);
  await ext4ThenDestroy(t, dev);
});
