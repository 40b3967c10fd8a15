/**
 * The ublk frontend (`bdus run --frontend ublk`, and what `auto` picks where ublk exists) on a
 * real ublk_drv. This machine's kernel has none, so on it this file boots the project's VM
 * (test/vm/run: Debian's 6.12 kernel, two vCPUs for the two-queue test) and runs itself inside.
 *
 * Inside: mkfs.ext4 and mkfs.xfs, mount, verify; read-only; block sizes and device hints; each
 * request type reaching its callback (discard, write-zeroes with and without unmap, FUA writes,
 * flush); a driver's ENOSPC, ETIMEDOUT and ENOLINK reaching the client as themselves; a request
 * that never ends; two queues served by one event loop; two lanes, each serving a queue, also
 * recoverable across a SIGKILL and hot swaps; a SIGKILLed driver that is not
 * recoverable; each recovery mode; the restart limit; hot swaps under fio verify; the torture
 * test; resize refused on a kernel without UPDATE_SIZE; destroy of a device in use; a STOP_DEV
 * from outside. User copy (a driver with writeTarget, such as the `ram` example, which also
 * answers reads with its own memory): every write received in the driver's memory, fio verify,
 * a hot swap to drivers without writeTarget and a SIGKILL, the stand-in on such a device.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  background, bdus, device, DRIVERS, fioVerify, goneLeavingNothing, image, info, killDriver, killThenSwap, laneMarks, lanesSeen, leftovers, mounted, must, mustRerun, readBlock, records, rerunLanes, ROOT, scratch, sh, sleep,
} from './helpers.js';
import { ABORT_AT } from './drivers/lanes.js';
import { torture } from './torture.js';

const inVm = process.env.BDUS_IN_VM === '1';
const ublkHere = inVm || existsSync('/dev/ublk-control') || (await sh('modprobe', ['-q', 'ublk_drv'])).code === 0;

const MiB = 1 << 20;
const RECORDER = `${DRIVERS}/recorder.js`;
const RECOVERABLE = `${DRIVERS}/recoverable.js`;
const TARGET = `${DRIVERS}/target.js`;
const LANES = `${DRIVERS}/lanes.js`;
const UBLK = ['--frontend', 'ublk'];

if (!ublkHere) {
  test('ublk frontend, in a VM with ublk_drv (test/vm/run)', { timeout: 42 * 60_000 }, async () => {
    const r = await sh(`${ROOT}test/vm/run`, ['--timeout', '2400', '--cpus', '2', process.execPath, '--test', '--test-concurrency=1', new URL(import.meta.url).pathname], {
      timeoutMs: 42 * 60_000,
      env: { ...process.env, BDUS_IN_VM: '1' },
    });
    process.stdout.write(r.stdout.replace(/^/gm, '  vm | '));
    process.stdout.write(r.stderr.replace(/^/gm, '  vm stderr | '));
    assert.equal(r.code, 0, `the ublk tests failed in the VM (exit ${r.code}):\n${r.stdout.slice(-4000)}\n${r.stderr.slice(-4000)}`);
  });
} else {
  ublkTests();
}

/** The ublk block device's name (ublkbN) behind /dev/bdus-N. */
async function ublkName(dev: string): Promise<string> {
  return (await info(dev, 'kernel-path')).replace('/dev/', '');
}

function queueFile(name: string, file: string): string {
  return readFileSync(`/sys/block/${name}/queue/${file}`, 'utf8').trim();
}

/** One 4 KiB direct read or write with dd; its exit status and message. */
function dd(dev: string, write: boolean, offset: number) {
  const io = write ? ['if=/dev/zero', `of=${dev}`, 'oflag=direct,seek_bytes', `seek=${offset}`, 'conv=notrunc'] : [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${offset}`];
  return sh('dd', [...io, 'bs=4096', 'count=1', 'status=none'], { timeoutMs: 60_000 });
}

function ublkTests(): void {
  test('auto picks ublk: mkfs.ext4, mount, write, remount, verify; destroy leaves nothing', async (t) => {
    const dev = await device(t, ['ram', '--size', '64M']);
    assert.equal(await info(dev, 'frontend'), 'ublk');
    assert.match(await info(dev, 'kernel-path'), /^\/dev\/ublkb\d+$/);
    assert.match(await must('readlink', ['-f', dev]), /^\/dev\/ublkb\d+$/m);
    assert.match((await bdus(['list'])).stdout, /\/dev\/ublkb\d+\s+ublk\s+available/);
    const data = scratch('data');
    t.after(() => rmSync(data, { force: true }));
    await must('dd', ['if=/dev/urandom', `of=${data}`, 'bs=1M', 'count=8', 'status=none']);
    await must('mkfs.ext4', ['-q', dev]);
    {
      const mnt = await mounted(t, dev);
      await must('cp', [data, `${mnt}/data`]);
      await must('umount', [mnt]);
    }
    await must('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
    const mnt = await mounted(t, dev);
    await must('cmp', [data, `${mnt}/data`]);
    await must('umount', [mnt]);
    const destroyed = await bdus(['destroy', dev]);
    assert.equal(destroyed.code, 0, destroyed.stderr);
    assert.deepEqual(await leftovers(), []);
  });

  test('two queues, one event loop: XFS and fio verify from both CPUs; each queue takes requests and answers', async (t) => {
    const dev = await device(t, ['ram', '--size', '320M', '--queues', '2', ...UBLK]);
    assert.equal(await info(dev, 'queues'), '2');
    const name = await ublkName(dev);
    assert.deepEqual(readFileSync(`/sys/block/${name}/mq/1/cpu_list`, 'utf8').trim() !== '', true);
    await must('mkfs.xfs', ['-q', '-f', dev]);
    const mnt = await mounted(t, dev);
    const fio = await sh('fio', [
      '--name=queues', `--directory=${mnt}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio', '--iodepth=8',
      '--numjobs=2', '--cpus_allowed=0,1', '--cpus_allowed_policy=split', '--size=8M', '--verify=crc32c', '--verify_fatal=1',
      '--group_reporting', '--output-format=terse',
    ], { timeoutMs: 300_000 });
    assert.equal(fio.code, 0, fio.stderr);
    assert.equal(fio.stdout.split(';')[4], '0', 'fio saw no error');
    await must('umount', [mnt]);
    await must('xfs_repair', ['-n', dev]);

    // Each queue takes requests and sends answers: a read that hangs, issued from each CPU, is
    // in flight on that CPU's queue (blk-mq's debugfs lists it), and each is answered there
    // (ETIMEDOUT after the request timeout).
    const img = image(t);
    const hung = await device(t, [RECOVERABLE, img, `hang-read-at=${MiB}`, '--queues', '2', '--request-timeout', '4s', ...UBLK]);
    const hungName = await ublkName(hung);
    const reads = [0, 1].map((cpu) =>
      background('taskset', ['-c', String(cpu), 'dd', `if=${hung}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${MiB}`, 'bs=4096', 'count=1', 'status=none']),
    );
    await sleep(1500);
    await sh('mount', ['-t', 'debugfs', 'none', '/sys/kernel/debug']);
    for (const queue of [0, 1]) {
      const busy = readFileSync(`/sys/kernel/debug/block/${hungName}/hctx${queue}/busy`, 'utf8');
      assert.match(busy, /READ/, `queue ${queue} holds a read: ${busy}`);
    }
    for (const read of reads) assert.match((await read.done).stderr, /Connection timed out/);
  });

  test('lanes: two threads, each serving its own queue: fio verify from both CPUs, both serve; the ram example shares its memory', async (t) => {
    const img = image(t);
    const seen = laneMarks(t);
    const dev = await device(t, [LANES, 'serve', img, seen, '--lanes', '2', ...UBLK]);
    assert.equal(await info(dev, 'queues'), '2', 'the queues are raised to the lanes');
    assert.equal(await info(dev, 'lanes'), '2');
    const verifyFile = fioVerify(t, dev, { cpus: 2 });
    await sleep(3000);
    assert.equal(await verifyFile.errors(), '0');
    assert.deepEqual(lanesSeen(seen), ['0', '1'], 'each lane served requests from its own CPU');

    // A write answered by one lane and its read by the other: verify fails unless they share memory.
    const ram = await device(t, ['ram', '--size', '64M', '--lanes', '2', ...UBLK]);
    const verify = fioVerify(t, ram, { cpus: 2 });
    await sleep(3000);
    assert.equal(await verify.errors(), '0');
    await must('mkfs.ext4', ['-q', '-F', ram]);
    await must('e2fsck', ['-f', '-n', ram]);
    for (const d of [dev, ram]) assert.equal((await bdus(['destroy', d])).code, 0);
    assert.deepEqual(await leftovers(), []);
  });

  test('lanes: a lane that aborts ends the device (its ring closed with its thread): I/O fails, the driver ends, nothing is left', async (t) => {
    const img = image(t);
    const dev = await device(t, [LANES, 'abort', img, laneMarks(t), '--lanes', '2', ...UBLK]);
    const pid = Number(await info(dev, 'pid'));
    const id = BigInt(await info(dev, 'id'));
    // From CPU 1, whose queue lane 1 serves.
    const fio = background('fio', ['--name=r', `--filename=${dev}`, `--offset=${ABORT_AT}`, '--size=1M', '--rw=randread', '--bs=4k', '--iodepth=16', '--ioengine=libaio', '--direct=1', '--cpus_allowed=1', '--time_based', '--runtime=120']);
    t.after(() => fio.stop());
    const ended = await fio.done;
    assert.ok(ended.ms < 60_000, `fio ended ${ended.ms} ms in`);
    assert.match(ended.stderr, /Input\/output error/, 'I/O fails once the driver is gone');
    for (let i = 0; i < 200 && existsSync(`/proc/${pid}`); i++) await sleep(100);
    assert.ok(!existsSync(`/proc/${pid}`), 'the driver process ended (DEL_DEV did not wait on a lane\'s open ring)');
    await goneLeavingNothing(id);
  });

  test('lanes and recoverable: a two-lane driver SIGKILLed under fio verify from both CPUs, then drivers of 2, 1 and 2 lanes: 0 errors', async (t) => {
    const img = image(t);
    const dev = await device(t, [LANES, 'serve', img, laneMarks(t), '--lanes', '2', '--recoverable', ...UBLK]);
    const marker = `bdus ublk lanes test ${Date.now()}`;
    writeFileSync('/dev/kmsg', `${marker}\n`);
    const fio = fioVerify(t, dev, { cpus: 2 });
    await sleep(2000);
    await killDriver(dev);
    await rerunLanes(t, dev, LANES, img, [2, 1, 2], 2000);
    assert.equal(await fio.errors(), '0');
    const log = (await must('dmesg', [])).split(marker)[1] ?? '';
    assert.doesNotMatch(log, /WARNING|BUG|I\/O error/, log);
  });

  test('a driver without write callbacks: a read-only ublk device', async (t) => {
    const dev = await device(t, ['zero', '--size', '16M', ...UBLK]);
    assert.equal((await must('blockdev', ['--getro', dev])).trim(), '1');
    const write = await dd(dev, true, 0);
    assert.notEqual(write.code, 0);
    assert.match(write.stderr, /Read-only file system|Permission denied|Operation not permitted/);
    await must('cmp', ['-n', String(MiB), dev, '/dev/zero']);
  });

  test('block sizes and device hints reach the kernel', async (t) => {
    const dev = await device(t, ['ram', '--size', '16M', '--physical-block-size', '4096', '--optimal-io-size', '64K', '--rotational', ...UBLK]);
    assert.equal((await must('blockdev', ['--getss', '--getpbsz', dev])).trim(), '512\n4096');
    const name = await ublkName(dev);
    assert.equal(queueFile(name, 'optimal_io_size'), String(64 * 1024));
    assert.equal(queueFile(name, 'rotational'), '1');
    assert.equal(queueFile(name, 'max_sectors_kb'), '1024', 'maxReadWriteSize (1 MiB)');
    const big = await device(t, ['ram', '--size', '16M', '--logical-block-size', '4096', ...UBLK]);
    assert.equal((await must('blockdev', ['--getss', '--getpbsz', big])).trim(), '4096\n4096');
  });

  test('each request type reaches its callback: discard, write-zeroes (unmap or not), FUA write, flush', async (t) => {
    const log = scratch('requests');
    t.after(() => rmSync(log, { force: true }));
    const dev = await device(t, [RECORDER, log, 'fua', '--size', '16M', ...UBLK]);
    const name = await ublkName(dev);
    assert.equal(queueFile(name, 'write_cache'), 'write back', 'a volatile cache: the driver has flush');
    assert.equal(queueFile(name, 'fua'), '1', 'FUA: the driver has fuaWrite');
    const seen = async (op: string, check: (r: Record<string, unknown>) => boolean, what: string) => {
      const found = records(log).some((r) => r.op === op && check(r));
      assert.ok(found, `${what}: no matching ${op} in ${JSON.stringify(records(log).slice(-8))}`);
    };
    await must('blkdiscard', ['-o', '0', '-l', String(MiB), dev]);
    await seen('discard', (r) => r.offset === 0 && r.size === MiB, 'blkdiscard');
    await must('blkdiscard', ['-z', '-o', String(MiB), '-l', String(MiB), dev]);
    await seen('writeZeros', (r) => r.offset === MiB && r.mayUnmap === false, 'blkdiscard -z (BLKZEROOUT: no unmap)');
    await must('fallocate', ['-p', '-o', String(2 * MiB), '-l', String(MiB), dev]);
    await seen('writeZeros', (r) => r.offset === 2 * MiB && r.mayUnmap === true, 'fallocate --punch-hole (unmap allowed)');
    await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=4k', 'count=1', 'seek=1024', 'oflag=direct,dsync', 'status=none']);
    await seen('fuaWrite', (r) => r.offset === 4 * MiB, 'an O_DSYNC direct write');
    await must('sync', [dev]);
    await seen('flush', () => true, 'sync');

    // Without fuaWrite, the kernel follows the write with a flush.
    const plainLog = scratch('plain');
    t.after(() => rmSync(plainLog, { force: true }));
    const plain = await device(t, [RECORDER, plainLog, '--size', '16M', ...UBLK]);
    assert.equal(queueFile(await ublkName(plain), 'fua'), '0');
    await must('dd', ['if=/dev/urandom', `of=${plain}`, 'bs=4k', 'count=1', 'oflag=direct,dsync', 'status=none']);
    const ops = records(plainLog).map((r) => r.op);
    assert.ok(ops.includes('write') && ops.lastIndexOf('flush') > ops.lastIndexOf('write'), `write then flush: ${ops.slice(-6).join(', ')}`);
  });

  test("a driver's ENOSPC, ETIMEDOUT and ENOLINK reach the client as themselves; anything else is EIO", async (t) => {
    const dev = await device(t, [`${DRIVERS}/faulty.js`, '--request-timeout', '1s', ...UBLK]);
    const cases: Array<[boolean, number, RegExp, string]> = [
      [true, MiB, /No space left on device/, 'ENOSPC'],
      [false, 6 * MiB, /Link has been severed/, 'ENOLINK'],
      [false, 7 * MiB, /Connection timed out/, 'ETIMEDOUT'],
      [false, 2 * MiB, /Input\/output error/, 'a thrown Error (EIO)'],
    ];
    for (const [write, offset, message, what] of cases) {
      const r = await dd(dev, write, offset);
      assert.notEqual(r.code, 0, what);
      assert.match(r.stderr, message, what);
    }
    // A read that never ends: ETIMEDOUT after requestTimeout, and the device goes on.
    const started = Date.now();
    const stuck = await dd(dev, false, 3 * MiB);
    const seconds = (Date.now() - started) / 1000;
    assert.match(stuck.stderr, /Connection timed out/);
    assert.ok(seconds >= 1 && seconds < 4, `it failed after ${seconds} s (timeout 1 s)`);
    assert.equal((await readBlock(dev, 0)).code, 0, 'the next read is served');
  });

  test('a driver that is not recoverable, SIGKILLed: its pending and new I/O fail with EIO within a second, nothing is left', async (t) => {
    const img = image(t);
    const dev = await device(t, [RECOVERABLE, img, `hang-read-at=${MiB}`, ...UBLK]);
    const pid = Number(await info(dev, 'pid'));
    const id = BigInt(await info(dev, 'id'));
    const held = background('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${MiB}`, 'bs=4096', 'count=1', 'status=none']);
    await sleep(1000);
    const killed = Date.now();
    process.kill(pid, 'SIGKILL');
    const result = await held.done;
    const ms = Date.now() - killed;
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /Input\/output error/);
    assert.ok(ms < 1000, `the held read failed ${ms} ms after the kill`);
    await goneLeavingNothing(id);
  });

  test('recoveryMode reissue: a driver killed under fio verify, then replaced live three times: 0 errors', async (t) => {
    const img = image(t);
    const dev = await device(t, [RECOVERABLE, img, '--recoverable', ...UBLK]);
    const marker = `bdus ublk test ${Date.now()}`;
    writeFileSync('/dev/kmsg', `${marker}\n`);
    assert.equal(await killThenSwap(t, dev, [RECOVERABLE, img]), '0');
    // Each recovery started once the previous server was gone: the kernel warned of nothing.
    const log = (await must('dmesg', [])).split(marker)[1] ?? '';
    assert.doesNotMatch(log, /WARNING|BUG|I\/O error/, log);
  });

  test('user copy: a driver with writeTarget receives every write in its own memory (none copied); fio verify from 4 KiB to 1 MiB, mkfs, fsck', async (t) => {
    const counts = scratch('counts');
    t.after(() => rmSync(counts, { force: true }));
    const dev = await device(t, [TARGET, counts, '--size', '64M', ...UBLK]);
    assert.match((await bdus(['info', dev])).stdout, /^frontend:\s+ublk \(user copy\)$/m, 'bdus info says so');
    const fio = await sh('fio', [
      '--name=copy', `--filename=${dev}`, '--rw=randwrite', '--bsrange=4k-1M', '--direct=1', '--ioengine=libaio', '--iodepth=8',
      '--size=32M', '--verify=crc32c', '--verify_fatal=1', '--output-format=terse',
    ], { timeoutMs: 300_000 });
    assert.equal(fio.code, 0, fio.stderr);
    assert.equal(fio.stdout.split(';')[4], '0', 'fio saw no error');
    await must('mkfs.ext4', ['-q', '-F', dev]);
    await must('e2fsck', ['-f', '-n', dev]);
    assert.equal((await bdus(['destroy', dev])).code, 0);
    const [inPlace, copied] = readFileSync(counts, 'utf8').split(' ').map(Number);
    assert.ok(inPlace! > 0, `writes received in place: ${inPlace}`);
    assert.equal(copied, 0, 'no write was copied');
  });

  test('user copy and recovery: a driver with writeTarget killed under fio verify, then replaced live by drivers without it: 0 errors', async (t) => {
    const img = image(t);
    const dev = await device(t, [RECOVERABLE, img, 'write-target', '--recoverable', ...UBLK]);
    assert.equal(await killThenSwap(t, dev, [RECOVERABLE, img]), '0');
  });

  test('recoveryMode fail-received: what the dead driver had received fails; what came after waits for the next one', async (t) => {
    const img = image(t);
    const dev = await device(t, [RECOVERABLE, img, `hang-read-at=${MiB}`, '--recoverable', '--recovery-mode', 'fail-received', ...UBLK]);
    const received = background('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${MiB}`, 'bs=4096', 'count=1', 'status=none']);
    await sleep(1000);
    await killDriver(dev);
    const waiting = background('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${2 * MiB}`, 'bs=4096', 'count=1', 'status=none']);
    await sleep(500);
    await mustRerun(dev, [RECOVERABLE, img]);
    const [a, b] = await Promise.all([received.done, waiting.done]);
    assert.notEqual(a.code, 0, 'the received read fails');
    assert.match(a.stderr, /Input\/output error/);
    assert.equal(b.code, 0, `the read sent while no driver ran waits and succeeds: ${b.stderr}`);
  });

  for (const copy of ['', 'write-target']) test(`recoveryMode fail-all: requests fail at once until a driver attaches (the stand-in server)${copy && ', on a device with user copy'}`, async (t) => {
    const img = image(t);
    const dev = await device(t, [RECOVERABLE, img, ...(copy ? [copy] : []), '--recoverable', '--recovery-mode', 'fail-all', ...UBLK]);
    await killDriver(dev);
    let failed = false;
    for (let i = 0; i < 50 && !failed; i++) {
      const started = Date.now();
      const r = await readBlock(dev, 0);
      failed = r.code !== 0 && Date.now() - started < 5000;
      if (!failed) await sleep(200);
    }
    assert.ok(failed, 'a read failed at once while no driver ran');
    await mustRerun(dev, [RECOVERABLE, img]);
    assert.equal((await readBlock(dev, 0)).code, 0);
    assert.equal((await must('ps', ['-eo', 'args'])).includes('stand-in.js'), false, 'the stand-in is gone');
    // The next driver (no writeTarget) follows the device's flag; the daemon's record says which.
    assert.match((await bdus(['info', dev])).stdout, copy ? /^frontend:\s+ublk \(user copy\)$/m : /^frontend:\s+ublk$/m);
  });

  test('restartLimit: a request that kills every driver fails alone once it has been through the limit', async (t) => {
    const img = image(t);
    const deadly = [RECOVERABLE, img, `crash-read-at=${MiB}`];
    const dev = await device(t, [...deadly, '--recoverable', '--restart-limit', '2', ...UBLK]);
    const read = background('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${MiB}`, 'bs=4096', 'count=1', 'status=none']);
    let done: Awaited<typeof read.done> | undefined;
    void read.done.then((r) => (done = r));
    // Each driver takes the read again and dies of it, until the read has been through the limit.
    let reruns = 0;
    for (; reruns < 4 && !done; reruns++) {
      for (let i = 0; i < 200 && !done && (await info(dev, 'pid').catch(() => '0')) !== '0'; i++) await sleep(50);
      if (done) break;
      await bdus(['rerun', dev, ...deadly], { timeoutMs: 120_000 });
      for (let i = 0; i < 40 && !done; i++) await sleep(50);
    }
    const result = await read.done;
    assert.notEqual(result.code, 0, 'the deadly read fails');
    assert.match(result.stderr, /Input\/output error/);
    assert.equal(reruns, 2, 'it failed with the second replacement: two deaths, restartLimit 2');
    assert.equal((await readBlock(dev, 0)).code, 0, 'the device goes on');
    assert.notEqual(await info(dev, 'pid'), '0', 'its last driver lives');
  });

  test('torture: XFS + fio verify while the driver is replaced every few seconds, half the time after SIGKILL', { timeout: 600_000 }, async (t) => {
    // A replacement takes 10-15 s in the emulated VM, 30 on a loaded host: at least 3 (one after
    // SIGKILL), even if that takes longer than the 75 s.
    const report = await torture(75, (line) => t.diagnostic(line), { frontend: 'ublk', imageBytes: 320 * MiB, jobs: 2, replaceEveryMs: 1000, minReplacements: 3 });
    t.diagnostic(JSON.stringify(report));
    assert.ok(report.replacements >= 3, `only ${report.replacements} replacements`);
    assert.equal(report.fioErrors, '0', 'fio saw no error (I/O or verify)');
    assert.equal(report.kernelIoErrors, 0, 'the kernel logged no I/O error for the device');
  });

  test('bdus resize on a kernel without UPDATE_SIZE (before 6.16): a clear error, the device unchanged', async (t) => {
    const log = scratch('requests');
    t.after(() => rmSync(log, { force: true }));
    const dev = await device(t, [RECORDER, log, 'resizable', '--size', '16M', ...UBLK]);
    const r = await bdus(['resize', dev, '32M']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /UPDATE_SIZE needs Linux 6\.16/);
    assert.equal((await must('blockdev', ['--getsize64', dev])).trim(), String(16 * MiB));
    assert.equal(await info(dev, 'size'), String(16 * MiB));
    assert.deepEqual(records(log).filter((r) => r.op === 'resize'), [], 'the driver was not asked to resize');
  });

  test('destroy refuses a mounted device (EBUSY); unmounted, it goes', async (t) => {
    const dev = await device(t, ['ram', '--size', '64M', ...UBLK]);
    await must('mkfs.ext4', ['-q', dev]);
    const mnt = await mounted(t, dev);
    const refused = await bdus(['destroy', dev]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, new RegExp(`in use: mounted on ${mnt}`));
    await must('umount', [mnt]);
    const destroyed = await bdus(['destroy', dev]);
    assert.equal(destroyed.code, 0, destroyed.stderr);
    assert.deepEqual(await leftovers(), []);
  });

  test("someone else's STOP_DEV: the driver sees its device end, and the daemon removes the rest", async (t) => {
    const dev = await device(t, ['ram', '--size', '16M', ...UBLK]);
    const pid = Number(await info(dev, 'pid'));
    const id = BigInt(await info(dev, 'id'));
    const number = (await ublkName(dev)).replace('ublkb', '');
    const control = `${ROOT}dist/src/frontend/ublk/control.js`;
    await must(process.execPath, ['--input-type=module', '-e', `const c = await import(${JSON.stringify(control)}); await c.control(c.Command.STOP_DEV, ${number});`]);
    for (let i = 0; i < 600 && existsSync(`/proc/${pid}`); i++) await sleep(100);
    assert.equal(existsSync(`/proc/${pid}`), false, 'the driver ended');
    await goneLeavingNothing(id);
  });
}
