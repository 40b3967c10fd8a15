/**
 * The kernel NBD frontend (`bdus run --frontend nbd`) on a real nbd.ko. This machine's kernel
 * has none, so on it this file boots the project's VM (test/vm/run: Debian's 6.12 kernel) and
 * runs itself inside; where the kernel has nbd (or can load it), it runs directly.
 *
 * Inside: mkfs.ext4 + mount + write + verify after a remount; discard, write-zeroes and flush
 * reach the driver; a SIGKILLed recoverable driver under fio verify is replaced with no error
 * to the client, and so is a live one (hand-over); a driver that is not recoverable takes its
 * device with it (EIO, nothing left); fail-all; fail-received is refused with a clear error.
 * bdus resize grows the device under a mounted ext4, which resize2fs then grows. And the kernel's
 * NBD client attached to a `bdus export` by nbd-client (its own handshake).
 */
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import { test } from 'node:test';
import { background, bdus, BIN, device, DRIVERS, fioVerify, goneLeavingNothing, image, info, killDriver as kill, killThenSwap, leftovers, must, mustRerun, readBlock, records, ROOT, scratch, sh, sleep } from './helpers.js';

const inVm = process.env.BDUS_IN_VM === '1';
const nbdHere = inVm || existsSync('/sys/module/nbd') || (await sh('modprobe', ['-q', 'nbd'])).code === 0;

if (!nbdHere) {
  test('kernel NBD frontend, in a VM with nbd.ko (test/vm/run)', { timeout: 42 * 60_000 }, async () => {
    const r = await sh(`${ROOT}test/vm/run`, ['--timeout', '2400', process.execPath, '--test', '--test-concurrency=1', new URL(import.meta.url).pathname], {
      timeoutMs: 42 * 60_000,
      env: { ...process.env, BDUS_IN_VM: '1' },
    });
    process.stdout.write(r.stdout.replace(/^/gm, '  vm | '));
    process.stdout.write(r.stderr.replace(/^/gm, '  vm stderr | '));
    assert.equal(r.code, 0, `the kernel NBD tests failed in the VM (exit ${r.code}):\n${r.stdout.slice(-4000)}\n${r.stderr.slice(-4000)}`);
  });
} else {
  kernelTests();
  nbdClientTests();
}

const MiB = 1 << 20;
const RECORDER = `${DRIVERS}/recorder.js`;
const RECOVERABLE = `${DRIVERS}/recoverable.js`;

function kernelTests(): void {
  test('mkfs.ext4, mount, write, remount, verify; destroy leaves nothing', async (t) => {
    const dev = await device(t, ['ram', '--size', '64M', '--frontend', 'nbd']);
    assert.match(await info(dev, 'kernel-path'), /^\/dev\/nbd\d+$/);
    assert.equal(await info(dev, 'frontend'), 'nbd');
    const mnt = scratch('mnt');
    const data = scratch('data');
    await must('mkdir', ['-p', mnt]);
    t.after(async () => {
      await sh('umount', [mnt]);
      rmSync(mnt, { recursive: true, force: true });
      rmSync(data, { force: true });
    });
    await must('dd', ['if=/dev/urandom', `of=${data}`, 'bs=1M', 'count=8', 'status=none']);
    await must('mkfs.ext4', ['-q', dev]);
    await must('mount', [dev, mnt]);
    await must('cp', [data, `${mnt}/data`]);
    await must('umount', [mnt]);
    await must('sh', ['-c', `echo 3 > /proc/sys/vm/drop_caches`]);
    await must('mount', [dev, mnt]);
    await must('cmp', [data, `${mnt}/data`]);
    await must('umount', [mnt]);
    assert.equal((await bdus(['destroy', dev])).code, 0);
    assert.deepEqual(await leftovers(), []);
  });

  test('bdus resize: the kernel takes the new size at once, and resize2fs grows a mounted ext4', async (t) => {
    const dev = await device(t, ['ram', '--size', '64M', '--frontend', 'nbd']);
    const mnt = scratch('mnt');
    t.after(async () => {
      await sh('umount', [mnt]);
      rmSync(mnt, { recursive: true, force: true });
    });
    await must('mkfs.ext4', ['-q', dev]);
    await must('mkdir', ['-p', mnt]);
    await must('mount', [dev, mnt]);
    await must('sh', ['-c', `head -c 8M /dev/urandom > ${mnt}/data && sha256sum ${mnt}/data > /run/resize.sum`]);
    const resized = await bdus(['resize', dev, '256M']);
    assert.equal(resized.code, 0, resized.stderr);
    assert.equal((await must('blockdev', ['--getsize64', dev])).trim(), String(256 * MiB));
    await must('resize2fs', [dev]);
    const size = Number((await must('df', ['--output=size', '-B1', mnt])).split('\n')[1]);
    assert.ok(size > 200 * MiB, `the mounted ext4 grew to ${size}`);
    await must('sha256sum', ['-c', '/run/resize.sum']);
    await must('umount', [mnt]);
    await must('e2fsck', ['-fn', dev]);
  });

  test('a driver that never answers a read: it fails within the request timeout, and the next request is served', async (t) => {
    const img = image(t);
    // Not at 0: the kernel reads the partition table there at creation (nbd.ko scans partitions
    // whatever disablePartitionScanning says), and every one of its reads would wait too.
    const dev = await device(t, [RECOVERABLE, img, `hang-read-at=${MiB}`, '--request-timeout', '2s', '--frontend', 'nbd']);
    const started = Date.now();
    const stuck = await readBlock(dev, MiB);
    const seconds = (Date.now() - started) / 1000;
    assert.notEqual(stuck.code, 0, 'the read fails');
    assert.match(stuck.stderr, /Input\/output error/, 'nbd.ko turns every error reply into EIO');
    assert.ok(seconds >= 2 && seconds < 4.5, `it failed after ${seconds} s (timeout 2 s)`);
    assert.equal((await readBlock(dev, 4096)).code, 0, 'the next read is served');
  });

  test('every driver error reaches the client as EIO: nbd.ko has one error for all (docs/frontends.md)', async (t) => {
    const dev = await device(t, [`${DRIVERS}/faulty.js`, '--request-timeout', '1s', '--frontend', 'nbd']);
    const cases: Array<[string[], string]> = [
      [['if=/dev/zero', `of=${dev}`, 'oflag=direct,seek_bytes', `seek=${MiB}`, 'conv=notrunc'], 'ENOSPC'],
      [[`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${2 * MiB}`], 'EIO'],
      [[`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${6 * MiB}`], 'ENOLINK'],
      [[`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${7 * MiB}`], 'ETIMEDOUT'],
      [[`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${3 * MiB}`], 'a timeout'],
    ];
    for (const [args, what] of cases) {
      const r = await sh('dd', [...args, 'bs=4096', 'count=1', 'status=none'], { timeoutMs: 30_000 });
      assert.notEqual(r.code, 0, what);
      assert.match(r.stderr, /Input\/output error/, `${what} reaches the client as EIO`);
    }
  });

  test('discard, write-zeroes and flush reach the driver', async (t) => {
    const log = scratch('requests');
    t.after(() => rmSync(log, { force: true }));
    const dev = await device(t, [RECORDER, log, '--size', '16M', '--frontend', 'nbd']);
    await must('blkdiscard', ['-o', '0', '-l', String(MiB), dev]);
    await must('blkdiscard', ['-z', '-o', String(MiB), '-l', String(MiB), dev]);
    await must('sh', ['-c', `dd if=/dev/zero of=${dev} bs=4k count=1 oflag=direct status=none && sync ${dev}`]);
    const calls = records(log).map((r) => r.op);
    for (const op of ['discard', 'writeZeros', 'write', 'flush']) assert.ok(calls.includes(op), `no ${op} in ${calls.join(', ')}`);
  });

  test('a recoverable driver killed under fio verify, then replaced live three times: 0 errors', async (t) => {
    const img = image(t);
    // The kernel holds the dead driver's requests for its timeout plus the dead-connection
    // timeout (each 1.25 request timeouts + 1 s): 42 s here, room for a rerun in the emulated
    // VM (about 6 s there, 20 and more with the host's CPUs loaded: 2s left it too little,
    // 4s once too, and 8s with the host loaded).
    const dev = await device(t, [RECOVERABLE, img, '--recoverable', '--request-timeout', '16s', '--frontend', 'nbd']);
    assert.equal(await killThenSwap(t, dev, [RECOVERABLE, img]), '0');
  });

  test('a live driver replaced three times under fio verify with 1 MiB writes: each hand-over ends at a message boundary, 0 errors', async (t) => {
    // The kernel sends a large write's payload in pieces: a hand-over that stopped reading
    // between its header and its end left the next driver a payload to parse as a header.
    const img = image(t);
    const dev = await device(t, [RECOVERABLE, img, '--recoverable', '--request-timeout', '8s', '--frontend', 'nbd']);
    const fio = fioVerify(t, dev, { bs: '1M', iodepth: 4 });
    for (let i = 0; i < 3; i++) {
      await sleep(1000);
      await mustRerun(dev, [RECOVERABLE, img]);
    }
    await sleep(1000);
    assert.equal(await fio.errors(), '0');
  });

  test('a driver that is not recoverable takes its device with it: EIO, nothing left', async (t) => {
    const img = image(t);
    const dev = await device(t, [RECOVERABLE, img, 'hang-read-at=0', '--frontend', 'nbd']);
    const id = BigInt(await info(dev, 'id'));
    const held = background('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct', 'bs=4096', 'count=1', 'status=none']);
    await sleep(500);
    const started = Date.now();
    process.kill(Number(await info(dev, 'pid')), 'SIGKILL');
    const result = await held.done;
    assert.notEqual(result.code, 0);
    assert.ok(Date.now() - started < 10_000, 'the held read failed promptly');
    await goneLeavingNothing(id);
  });

  test('recoveryMode fail-all: requests fail at once until a driver attaches', async (t) => {
    const img = image(t);
    const dev = await device(t, [RECOVERABLE, img, '--recoverable', '--recovery-mode', 'fail-all', '--frontend', 'nbd']);
    await kill(dev);
    await sleep(500);
    const started = Date.now();
    assert.notEqual((await readBlock(dev, 0)).code, 0);
    assert.ok(Date.now() - started < 5000, 'it failed without waiting for a driver');
    await mustRerun(dev, [RECOVERABLE, img]);
    assert.equal((await readBlock(dev, 0)).code, 0);
  });

  test('recoveryMode fail-received is refused on kernel NBD, with the reason', async () => {
    const r = await bdus(['run', 'ram', '--size', '1M', '--recoverable', '--recovery-mode', 'fail-received', '--frontend', 'nbd']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /recoveryMode=fail-received: the kernel NBD frontend cannot offer it/);
    assert.deepEqual(await leftovers(), []);
  });
}

function nbdClientTests(): void {
  test('nbd-client attaches the kernel to a bdus export: the kernel NBD client does the handshake', async (t) => {
    const socket = `${scratch('export')}.sock`;
    const exported = background(process.execPath, [BIN, 'export', 'ram', '--size', '16M', '--listen', `unix:${socket}`]);
    t.after(() => exported.stop());
    for (let i = 0; i < 100 && !existsSync(socket); i++) await sleep(100);
    const node = '/dev/nbd15';
    await must('nbd-client', ['-u', socket, node, '-b', '4096']);
    t.after(() => sh('nbd-client', ['-d', node]));
    const data = scratch('data');
    t.after(() => rmSync(data, { force: true }));
    await must('dd', ['if=/dev/urandom', `of=${data}`, 'bs=1M', 'count=16', 'status=none']);
    await must('dd', [`if=${data}`, `of=${node}`, 'bs=1M', 'oflag=direct', 'status=none']);
    await must('sh', ['-c', `echo 3 > /proc/sys/vm/drop_caches`]);
    await must('cmp', [data, node]);
    await must('nbd-client', ['-d', node]);
  });
}
