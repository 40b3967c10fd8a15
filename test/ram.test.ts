// This test ensures that the ram example keeps memory only for what was written: untouched and
// read pages cost nothing, discard and write-zeroes give pages back at once and read back as
// zeros, and mkfs (which discards the whole device) leaves the driver small. It also times
// blkdiscard beside the kernel's loop device over /dev/shm (printed, not asserted: speed is for
// benchmarks).
import assert from 'node:assert/strict';
import { rmSync, truncateSync, writeFileSync } from 'node:fs';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { device, info, must, scratch, sh } from './helpers.js';

const MiB = 1 << 20;

function residentMiB(pid: number): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!;
  return Number(kb) / 1024;
}

async function timedDiscard(dev: string): Promise<number> {
  const started = process.hrtime.bigint();
  await must('blkdiscard', [dev]);
  return Number(process.hrtime.bigint() - started) / 1e6;
}

test('ram: memory only for what was written; discard and write-zeroes hand it back', async (t) => {
  const dev = await device(t, ['ram', '--size', '2G']);
  const pid = Number(await info(dev, 'pid'));
  const idle = residentMiB(pid);
  await must('dd', [`if=${dev}`, 'of=/dev/null', 'bs=1M', 'count=512', 'iflag=direct', 'status=none']);
  assert.ok(residentMiB(pid) < idle + 64, 'reading untouched memory commits none');
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', 'count=512', 'oflag=direct', 'status=none']);
  const written = residentMiB(pid);
  assert.ok(written > idle + 400, `512 MiB written are resident (${written.toFixed(0)} MiB)`);

  const ms = await timedDiscard(dev);
  const discarded = residentMiB(pid);
  assert.ok(discarded < idle + 64, `discard gave the memory back (${discarded.toFixed(0)} MiB resident)`);
  await must('cmp', ['-n', String(512 * MiB), dev, '/dev/zero']);

  // write-zeroes of an unaligned range: whole pages dropped, the partial ones filled.
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', 'count=8', 'oflag=direct', 'status=none']);
  await must('fallocate', ['--zero-range', '--offset', '512', '--length', String(4 * MiB), dev]);
  assert.equal((await sh('cmp', ['-s', '-n', '512', dev, '/dev/zero'])).code, 1, 'the first 512 bytes keep their data');
  assert.equal((await sh('cmp', ['-s', '-n', '512', '-i', String(4 * MiB + 512), dev, '/dev/zero'])).code, 1, 'so do the bytes after the range');
  await must('cmp', ['-n', String(4 * MiB), '-i', '512:0', dev, '/dev/zero']);

  await must('mkfs.ext4', ['-q', dev]);
  assert.ok(residentMiB(pid) < idle + 128, 'mkfs (a discard of everything) leaves the driver small');

  // The kernel's loop device over /dev/shm, same size and data, side by side.
  const file = scratch('shm-image').replace('/tmp/', '/dev/shm/');
  writeFileSync(file, '');
  truncateSync(file, 2 * 1024 * MiB);
  t.after(() => rmSync(file, { force: true }));
  const loop = (await must('losetup', ['--find', '--show', '--direct-io=on', file])).trim();
  t.after(() => sh('losetup', ['-d', loop]));
  await must('dd', ['if=/dev/urandom', `of=${loop}`, 'bs=1M', 'count=512', 'oflag=direct', 'status=none']);
  const loopMs = await timedDiscard(loop);
  t.diagnostic(`blkdiscard of 2 GiB with 512 MiB written: bdus ram ${ms.toFixed(1)} ms, kernel loop over /dev/shm ${loopMs.toFixed(1)} ms`);
});
