/**
 * Where a FUSE+loop device's requests are completed (src/frontend/fuse/completion-cpu.ts): on
 * the submitting CPU (the loop queue's rq_affinity at 2) while a client runs at queue depth 1,
 * back at the kernel's default (1) once it runs deeper, whoever serves the requests (over
 * /dev/fuse by one thread; over FUSE's ring by two lanes); fio verify passes either way.
 */
import assert from 'node:assert/strict';
import { readFileSync, realpathSync } from 'node:fs';
import { basename } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fuseRingQueues } from '../src/frontend/fuse/ring.js';
import { background, device, fuseUringAvailable, must, setUring, sleep } from './helpers.js';

function affinityOf(dev: string): () => string {
  const path = `/sys/block/${basename(realpathSync(dev))}/queue/rq_affinity`;
  return () => readFileSync(path, 'utf8').trim();
}

function load(t: TestContext, dev: string, iodepth: number): { stop(): Promise<unknown> } {
  const job = background('fio', [
    '--name=load', `--filename=${dev}`, '--ioengine=libaio', '--direct=1', '--size=64M', '--time_based', '--runtime=60',
    '--rw=randread', '--bs=4k', `--iodepth=${iodepth}`,
  ]);
  t.after(() => job.stop());
  return { stop: () => (job.stop(), job.done) };
}

async function becomes(affinity: () => string, value: string, what: string): Promise<void> {
  for (let i = 0; i < 100 && affinity() !== value; i++) await sleep(50);
  assert.equal(affinity(), value, what);
}

async function steers(t: TestContext, dev: string): Promise<void> {
  const affinity = affinityOf(dev);
  assert.equal(affinity(), '1', 'a new device starts at the default');
  const qd1 = load(t, dev, 1);
  await becomes(affinity, '2', 'at queue depth 1 completions go to the submitting CPU');
  await qd1.stop();
  const deep = load(t, dev, 16);
  await becomes(affinity, '1', 'at queue depth 16 back to the default');
  await deep.stop();
  // Data is whole whichever CPU completes: verify at QD1 (steered), then QD8 (not).
  for (const iodepth of [1, 8]) {
    const out = await must('fio', [
      '--name=v', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', `--iodepth=${iodepth}`, '--ioengine=libaio', '--direct=1',
      '--size=8M', '--verify=crc32c', '--verify_fatal=1', '--output-format=terse',
    ], { timeoutMs: 120_000 });
    assert.equal(out.split(';')[4], '0', `fio verify at QD${iodepth} saw no error`);
  }
}

test('/dev/fuse: completions on the submitting CPU at queue depth 1 only; fio verify passes', async (t) => {
  await steers(t, await device(t, ['ram', '--size', '256M']));
});

test('FUSE over io_uring with two lanes: the same', { skip: (!fuseUringAvailable || fuseRingQueues() < 2) && 'needs FUSE over io_uring and two CPUs' }, async (t) => {
  setUring(t, true);
  await steers(t, await device(t, ['ram', '--size', '256M', '--fuse-io-uring', '--lanes', '2']));
});
