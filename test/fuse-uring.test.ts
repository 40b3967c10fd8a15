/**
 * FUSE over io_uring (the fuseIoUring attribute) on this machine's kernel: requests come through
 * the driver's ring; ext4 and fio verify on it; what it refuses (recoverable, rerun); a SIGKILLed
 * driver's I/O fails at once and nothing is left; and with the kernel's parameter off, the device
 * is served over /dev/fuse with a warning. With lanes, each lane registers on its own share of
 * the ring's queues: fio verify from every CPU, each lane serving; lanes lowered to the queues.
 *
 * The kernel's enable_uring parameter is the machine's, switched by root: these tests switch it
 * on (as a user would) and put it back as it was.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { inMemory } from '../src/drivers/file-io.js';
import { fuseRingQueues } from '../src/frontend/fuse/ring.js';
import { background, bdus, BIN, device, DRIVERS, ext4ThenDestroy, fioVerify, fuseUringAvailable as available, image, info, laneMarks, lanesSeen, mounted, must, noLeftovers, openFiles, setUring, sleep } from './helpers.js';

function rings(pid: number): number {
  return openFiles(pid).filter((target) => target === 'anon_inode:[io_uring]').length;
}

function hasRing(pid: number): boolean {
  return rings(pid) > 0;
}


const FIO_VERIFY = ['--ioengine=libaio', '--direct=1', '--size=32M', '--verify=crc32c', '--verify_fatal=1', '--output-format=terse'];

test('fuseIoUring: requests come through the ring; ext4 and fio verify (4k QD32 and 1M) on it', { skip: !available && 'this kernel has no FUSE over io_uring (before 6.14)' }, async (t) => {
  setUring(t, true);
  const dev = await device(t, ['ram', '--size', '256M', '--fuse-io-uring']);
  assert.ok(hasRing(Number(await info(dev, 'pid'))), 'the driver holds an io_uring');
  assert.match(await must(process.execPath, [BIN, 'info', dev]), /^frontend:\s+fuse \(io_uring\)$/m, 'bdus info says so');
  for (const [bs, depth] of [['4k', '32'], ['1M', '8']] as const) {
    const fio = await must('fio', ['--name=v', `--filename=${dev}`, '--rw=randwrite', `--bs=${bs}`, `--iodepth=${depth}`, ...FIO_VERIFY], { timeoutMs: 120_000 });
    assert.equal(fio.split(';')[4], '0', `fio ${bs} saw no error`);
  }
  await must('mkfs.ext4', ['-q', '-F', dev]);
  const mnt = await mounted(t, dev);
  writeFileSync(`${mnt}/file`, Buffer.alloc(4 << 20, 7));
  await must('sync', []);
  await must('umount', [mnt]);
  await must('e2fsck', ['-f', '-n', dev]);
  await must('mount', [dev, mnt]);
  assert.deepEqual(readFileSync(`${mnt}/file`), Buffer.alloc(4 << 20, 7));
});

test('fuseIoUring: refused with recoverable, and by rerun; a SIGKILLed driver\'s I/O fails at once and nothing is left', { skip: !available && 'this kernel has no FUSE over io_uring (before 6.14)' }, async (t) => {
  setUring(t, true);
  const refused = await bdus(['run', 'ram', '--size', '64M', '--fuse-io-uring', '--recoverable']);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /fuseIoUring and recoverable exclude each other/);

  const dev = await device(t, ['ram', '--size', '64M', '--fuse-io-uring']);
  const rerun = await bdus(['rerun', dev, 'ram']);
  assert.equal(rerun.code, 1);
  assert.match(rerun.stderr, /served over FUSE io_uring/);

  const fio = background('fio', ['--name=w', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--ioengine=libaio', '--direct=1', '--size=32M', '--time_based', '--runtime=60']);
  t.after(() => fio.stop());
  await sleep(1000);
  process.kill(Number(await info(dev, 'pid')), 'SIGKILL');
  const ended = await fio.done;
  assert.ok(ended.ms < 20_000, `fio ended ${ended.ms} ms after the kill`);
  assert.match(ended.stderr, /Input\/output error/, 'pending I/O failed');
  await noLeftovers();
});

test('fuseIoUring with the kernel\'s parameter off: served over /dev/fuse, with a warning', { skip: !available && 'this kernel has no FUSE over io_uring (before 6.14)' }, async (t) => {
  setUring(t, false);
  const r = await bdus(['run', 'ram', '--size', '64M', '--fuse-io-uring'], { timeoutMs: 30_000 });
  assert.equal(r.code, 0, r.stderr);
  const dev = r.stdout.trim();
  t.after(() => bdus(['destroy', '--force', dev]));
  assert.match(r.stderr, /warning: this kernel offers no FUSE over io_uring; serving \/dev\/fuse/);
  // Not by counting io_uring files: a driver served over /dev/fuse has one for its replies.
  assert.match(await must(process.execPath, [BIN, 'info', dev]), /^frontend:\s+fuse$/m, 'bdus info says so: no ring');
  await must('dd', ['if=/dev/zero', `of=${dev}`, 'bs=1M', 'count=8', 'oflag=direct', 'status=none']);
});

test('fuseIoUring with lanes: each lane serves its own queues of the ring; fio verify from every CPU, ext4; lanes lowered to the queues; destroy leaves nothing', { skip: (!available || fuseRingQueues() < 2) && 'needs FUSE over io_uring and two CPUs' }, async (t) => {
  setUring(t, true);
  const queues = fuseRingQueues();
  const img = image(t, 256 << 20);
  const seen = laneMarks(t);
  const dev = await device(t, ['--frontend', 'fuse', `${DRIVERS}/lanes.js`, 'serve', img, seen, '--fuse-io-uring', '--lanes', String(queues + 1)]);
  assert.equal(await info(dev, 'lanes'), String(queues), 'no more lanes than the ring has queues');
  // Each lane's file driver has a ring of its own for the image's reads and writes, unless the image is in memory.
  assert.equal(rings(Number(await info(dev, 'pid'))), inMemory(img) ? queues : 2 * queues, 'a ring per lane');

  // One fio job per CPU: each CPU's requests go to its own queue, so to its own lane.
  const fio = fioVerify(t, dev, { cpus: queues, iodepth: 16 });
  await sleep(4000);
  assert.equal(await fio.errors(), '0', 'fio verify: no error');
  assert.deepEqual(lanesSeen(seen), Array.from({ length: queues }, (_, i) => String(i)), 'every lane served requests');

  await ext4ThenDestroy(t, dev);
});
