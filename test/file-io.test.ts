/**
 * The file driver's transfers through io_uring (src/drivers/file-io.ts, native/file_io.c): many
 * at once, of every size, land where they should, beyond the ring's entries too (those wait in
 * Node's thread pool); the end of the file, a bad descriptor and fdatasync answer as fs would; a
 * file in memory (tmpfs) is read and written at once; an operation still in flight when the ring
 * closes never settles (its memory is the kernel's until it ends); without io_uring
 * (kernel.io_uring_disabled = 2) the same through fs. On a device: fio verify passes, and strace
 * shows the driver reading and writing through io_uring_enter, not pread64 and pwrite64 in
 * libuv's threads for each request.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { test, type TestContext } from 'node:test';
import { FileIo, inMemory } from '../src/drivers/file-io.js';
import { native } from '../src/native.js';
import { background, device, info, must, syscalls } from './helpers.js';

const DISABLED = '/proc/sys/kernel/io_uring_disabled';
let images = 0;

/** A sparse file of `size` bytes on a disk's filesystem (/var/tmp, as /tmp may be tmpfs), removed after the test. */
function diskImage(t: TestContext, size: number): string {
  const path = `/var/tmp/bdus-file-io-test-${process.pid}-${images++}`;
  writeFileSync(path, '');
  truncateSync(path, size);
  t.after(() => rmSync(path, { force: true }));
  return path;
}
const SIZE = 64 << 20;

/** The file at `path` open, and a FileIo for it; both closed after the test (before the file is removed). */
function opened(t: TestContext, path: string): { fd: number; io: FileIo } {
  const fd = openSync(path, 'r+');
  const io = new FileIo(path);
  t.after(() => {
    io.close();
    closeSync(fd);
  });
  return { fd, io };
}

/** 300 writes of 4 KiB to 1 MiB at once (more than the ring's 128 entries), read back at once. */
async function roundTrip(io: FileIo, fd: number): Promise<void> {
  const sizes = [4096, 512, 65536, 1 << 20, 12288];
  const blocks = Array.from({ length: 300 }, (_, i) => ({ at: i * (128 << 10) + (i % 7) * 512, data: randomBytes(sizes[i % sizes.length]!) }));
  // 300 blocks 128 KiB apart: the 1 MiB ones overlap each other and their neighbours, so they go
  // one after the other, and the others at once after them.
  const big = blocks.filter((b) => b.data.length === 1 << 20);
  const small = blocks.filter((b) => b.data.length !== 1 << 20);
  for (const b of big) await io.write(fd, b.data, b.at);
  await Promise.all(small.map((b) => io.write(fd, b.data, b.at)));
  await io.datasync(fd);
  const expected = Buffer.alloc(SIZE);
  for (const b of [...big, ...small]) b.data.copy(expected, b.at);
  const back = blocks.map((b) => Buffer.alloc(b.data.length));
  await Promise.all(blocks.map((b, i) => io.read(fd, back[i]!, b.at)));
  blocks.forEach((b, i) => assert.ok(back[i]!.equals(expected.subarray(b.at, b.at + b.data.length)), `block ${i} at ${b.at}`));
}

async function edges(io: FileIo, fd: number, path: string): Promise<void> {
  // The last 4 KiB read whole; 8 KiB from there meets the end of the file.
  await io.read(fd, Buffer.alloc(4096), SIZE - 4096);
  await assert.rejects(async () => io.read(fd, Buffer.alloc(8192), SIZE - 4096), (e: Error & { code?: string }) => e.code === 'EIO' && e.message.includes(`${path} is shorter`));
  await assert.rejects(async () => io.read(9999, Buffer.alloc(4096), 0), { code: 'EBADF', syscall: 'read' });
  await assert.rejects(io.datasync(9999), { code: 'EBADF', syscall: 'fdatasync' });
}

test('transfers through io_uring land where they should, beyond the ring\'s entries too; errors as fs gives them', async (t) => {
  const path = diskImage(t, SIZE);
  const { fd, io } = opened(t, path);
  assert.equal(io.ring, true, 'this kernel gives io_uring');
  assert.equal(io.inMemory, false, `${path} is on a disk's filesystem`);
  await roundTrip(io, fd);
  await edges(io, fd, path);
});

test('a file in memory (tmpfs) is read and written at once, in the calling thread', async (t) => {
  const path = `/dev/shm/file-io-test-${process.pid}`;
  writeFileSync(path, '');
  truncateSync(path, SIZE);
  t.after(() => rmSync(path, { force: true }));
  const { fd, io } = opened(t, path);
  assert.equal(io.inMemory, true);
  assert.equal(io.ring, false, 'no ring for a file in memory');
  // /dev is devtmpfs, which statfs calls tmpfs: a block device's node there is no file in memory.
  assert.equal(inMemory('/dev/loop-control'), false);
  const data = randomBytes(4096);
  assert.equal(io.write(fd, data, 8192), undefined, 'no promise: written at once');
  const back = Buffer.alloc(4096);
  assert.equal(io.read(fd, back, 8192), undefined, 'no promise: read at once');
  assert.ok(back.equals(data));
  await roundTrip(io, fd);
  await edges(io, fd, path);
});

test('without io_uring (kernel.io_uring_disabled = 2) the same through fs', async (t) => {
  const before = readFileSync(DISABLED, 'utf8').trim();
  writeFileSync(DISABLED, '2');
  t.after(() => writeFileSync(DISABLED, before));
  const path = diskImage(t, SIZE);
  const { fd, io } = opened(t, path);
  assert.equal(io.ring, false);
  await roundTrip(io, fd);
  await edges(io, fd, path);
});

test('an operation still in flight when its ring closes never settles: the kernel may still write into its memory, which must not be reused', async (t) => {
  // A read of a socket with nothing to read stays in flight, as a read of a disk that never answers would.
  const [quiet, other] = native.socketPair();
  t.after(() => {
    closeSync(quiet);
    closeSync(other);
  });
  const io = new FileIo(`/proc/self/fd/${quiet}`);
  if (!io.ring) return t.skip('no io_uring here');
  let settled = '';
  io.read(quiet, Buffer.alloc(4096), 0)!.then(
    () => (settled = 'resolved'),
    (e: Error) => (settled = `rejected: ${e.message}`),
  );
  await delay(50);
  io.close();
  writeSync(other, Buffer.alloc(4096, 1));
  await delay(100);
  assert.equal(settled, '', 'a read in flight when its ring closed settled: its request\'s buffer could be reused while the kernel still holds it');
});

test('the file driver reads and writes through io_uring: fio verify passes, strace shows no pread64 or pwrite64 per request', async (t) => {
  const img = diskImage(t, 256 << 20);
  const dev = await device(t, ['file', img]);
  for (const [bs, iodepth] of [['4k', 32], ['1M', 8]] as const) {
    await must('fio', [
      '--name=verify', `--filename=${dev}`, '--rw=randwrite', `--bs=${bs}`, `--iodepth=${iodepth}`, '--ioengine=libaio', '--direct=1',
      '--size=64M', '--verify=crc32c', '--verify_fatal=1', '--output-format=terse',
    ], { timeoutMs: 120_000 });
  }
  const load = background('fio', ['--name=load', `--filename=${dev}`, '--ioengine=libaio', '--direct=1', '--size=64M', '--time_based', '--runtime=60', '--rw=randrw', '--bs=4k', '--iodepth=32']);
  t.after(() => load.stop());
  const pid = await info(dev, 'pid');
  const calls = await syscalls(Number(pid), 3, ['pread64', 'pwrite64', 'io_uring_enter']);
  load.stop();
  await load.done;
  t.diagnostic(`under strace: ${JSON.stringify(Object.fromEntries(calls))}`);
  assert.ok((calls.get('io_uring_enter') ?? 0) > 100, 'transfers submitted through io_uring');
  // The only pread64 are the loop device's in-flight count, sampled 40 times a second
  // (src/frontend/fuse/completion-cpu.ts); through the thread pool it was one per request.
  assert.equal(calls.get('pwrite64') ?? 0, 0, 'no write through the thread pool');
  assert.ok((calls.get('pread64') ?? 0) < 500, 'no read through the thread pool');
});
