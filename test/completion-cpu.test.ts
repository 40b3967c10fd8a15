/**
 * Where a FUSE+loop device's requests are completed (src/frontend/fuse/completion-cpu.ts): on
 * the submitting CPU (the loop queue's rq_affinity at 2) while a client runs at queue depth 1,
 * back at the kernel's default (1) once it runs deeper, whoever serves the requests (over
 * /dev/fuse by one thread; over FUSE's ring by two lanes); fio verify passes either way. The
 * ring's lanes follow the same reading: pinned to their queues' CPUs, but a lane that serves a
 * client at queue depth 1 unpins (and spins) until the depth grows (RingLane in ring.ts).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, realpathSync } from 'node:fs';
import { basename } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fuseRingQueues } from '../src/frontend/fuse/ring.js';
import { background, device, fuseUringAvailable, info, must, setUring, sleep } from './helpers.js';

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

/** How many of the driver's threads are pinned to one CPU (the ring's lanes, while not at queue depth 1). */
async function pinnedThreads(dev: string): Promise<() => string> {
  const pid = await info(dev, 'pid');
  return () =>
    String(readdirSync(`/proc/${pid}/task`).filter((tid) => {
      try {
        return /^Cpus_allowed_list:\s*\d+$/m.test(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
      } catch {
        return false; // a thread that ended meanwhile
      }
    }).length);
}

async function steers(t: TestContext, dev: string, ringLanes = 0): Promise<void> {
  const affinity = affinityOf(dev);
  const pinned = await pinnedThreads(dev);
  assert.equal(affinity(), '1', 'a new device starts at the default');
  if (ringLanes) assert.equal(pinned(), String(ringLanes), 'each lane pinned to its queue\'s CPU');
  const qd1 = load(t, dev, 1);
  await becomes(affinity, '2', 'at queue depth 1 completions go to the submitting CPU');
  // A lane that serves the client at queue depth 1 unpins (and spins); which one (or both, as
  // the client's CPU changes) is the scheduler's.
  if (ringLanes) {
    for (let i = 0; i < 100 && Number(pinned()) >= ringLanes; i++) await sleep(50);
    assert.ok(Number(pinned()) < ringLanes, `at queue depth 1 a serving lane is unpinned (pinned: ${pinned()} of ${ringLanes})`);
  }
  await qd1.stop();
  const deep = load(t, dev, 16);
  await becomes(affinity, '1', 'at queue depth 16 back to the default');
  if (ringLanes) await becomes(pinned, String(ringLanes), 'at queue depth 16 every lane pinned again');
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

test('FUSE over io_uring with two lanes: the same, and the serving lane unpinned at queue depth 1 only', { skip: (!fuseUringAvailable || fuseRingQueues() < 2) && 'needs FUSE over io_uring and two CPUs' }, async (t) => {
  setUring(t, true);
  await steers(t, await device(t, ['ram', '--size', '256M', '--fuse-io-uring', '--lanes', '2']), 2);
});
