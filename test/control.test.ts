// This test ensures that the control plane keeps devices' lives straight: ids never reused and
// indexes reused, stale ids refused, destroy in every circumstance (concurrent, under I/O, while
// held open, racing with opens), the end of a driver by SIGKILL or before it became available,
// the daemon's restart under I/O, its socket's permissions, and its survival of bad messages.
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { test } from 'node:test';
import { daemonVersion, destroyDevice, deviceInfo, listDevices, stopDaemon, waitUntilDestroyed } from '../src/index.js';
import { SOCKET_PATH } from '../src/control/protocol.js';
import { background, bdus, BIN, device, DRIVERS, info, leftovers, mounted, must, records, scratch, sh, sleep } from './helpers.js';

const MiB = 1 << 20;

async function gone(dev: string, id: bigint): Promise<void> {
  await waitUntilDestroyed(id);
  assert.equal(existsSync(dev), false, `${dev} is gone`);
  assert.deepEqual(await leftovers(), []);
}

test('ids are never reused; indexes are; a stale id gets ENODEV and never reaches the newer device', async (t) => {
  const a = await device(t, ['ram', '--size', '16M']);
  const b = await device(t, ['ram', '--size', '16M']);
  const idA = BigInt(await info(a, 'id'));
  const idB = BigInt(await info(b, 'id'));
  assert.ok(idB > idA);
  assert.equal(a, '/dev/bdus-0');
  assert.equal(b, '/dev/bdus-1');
  await must(process.execPath, [BIN, 'destroy', a]);
  const c = await device(t, ['ram', '--size', '32M']);
  const idC = BigInt(await info(c, 'id'));
  assert.equal(c, '/dev/bdus-0', 'the lowest free index is reused');
  assert.ok(idC > idB, 'the id is new');

  const stale = await bdus(['destroy', String(idA)]);
  assert.equal(stale.code, 1);
  assert.match(stale.stderr, new RegExp(`device ${idA} no longer exists`));
  await assert.rejects(deviceInfo(idA), { code: 'ENODEV' });
  await assert.rejects(destroyDevice(idA), { code: 'ENODEV' });
  assert.equal((await deviceInfo(c)).state, 'available', 'the device at the reused index is untouched');
  assert.equal((await deviceInfo(idC)).attributes.size, 32 * MiB);
});

test('waitUntilDestroyed: waits for the end, returns at once for a gone id, refuses an id never given', async (t) => {
  const dev = await device(t, ['ram', '--size', '16M']);
  const id = (await deviceInfo(dev)).id;
  let done = false;
  const waiting = waitUntilDestroyed(id).then(() => (done = true));
  await sleep(200);
  assert.equal(done, false);
  await must(process.execPath, [BIN, 'destroy', dev]);
  await waiting;
  await waitUntilDestroyed(id);
  await assert.rejects(waitUntilDestroyed(id + 1_000_000n), { code: 'ENODEV' });
});

test('concurrent destroys of one device both succeed; terminate runs once', async (t) => {
  const log = scratch('record.jsonl');
  // Terminate takes a second, so that both destroys are in flight at once. They go by id: a
  // destroy by path that starts after the other took the path away gets ENOENT (md's rule).
  const dev = await device(t, [`${DRIVERS}/recorder.js`, log, 'slow-terminate']);
  const id = BigInt(await info(dev, 'id'));
  const [first, second] = await Promise.all([bdus(['destroy', String(id)]), bdus(['destroy', String(id)])]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(second.code, 0, second.stderr);
  assert.equal(records(log).filter((r) => r.op === 'terminate').length, 1);
  await gone(dev, id);
});

test('destroy says when the flush is slow and points at --no-flush; --quiet keeps quiet', async (t) => {
  for (const quiet of [false, true]) {
    const dev = await device(t, [`${DRIVERS}/slow-flush.js`, '4000']);
    const r = await bdus(['destroy', ...(quiet ? ['--quiet'] : []), dev]);
    assert.equal(r.code, 0, r.stderr);
    if (quiet) assert.equal(r.stderr, '');
    else assert.match(r.stderr, new RegExp(`^bdus: still flushing ${dev}; the driver may be stuck \\(use --no-flush to skip the flush\\)$`, 'm'));
    assert.equal(existsSync(dev), false);
  }
});

test('destroy during heavy I/O: completes, the I/O ends, nothing is left', async (t) => {
  const dev = await device(t, ['ram', '--size', '256M']);
  const id = BigInt(await info(dev, 'id'));
  const fio = background('fio', [
    '--name=load', `--filename=${dev}`, '--direct=1', '--ioengine=libaio', '--iodepth=32', '--numjobs=4', '--rw=randrw',
    '--bs=4k', '--size=256M', '--time_based', '--runtime=30', '--group_reporting', '--output-format=terse',
  ]);
  await sleep(1000);
  const refused = await bdus(['destroy', dev]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /is in use: open by pid \d+ \(fio\).*--force/);
  const started = Date.now();
  const destroyed = await bdus(['destroy', '--force', dev]);
  assert.equal(destroyed.code, 0, destroyed.stderr);
  const result = await fio.done;
  assert.ok(Date.now() - started < 10_000, 'fio ended soon after the destroy');
  assert.notEqual(result.code, 0, 'fio saw its device go');
  await gone(dev, id);
});

test('destroy while a client holds the device open: the device goes, the kernel node when the client lets go', async (t) => {
  const dev = await device(t, ['ram', '--size', '16M']);
  const id = BigInt(await info(dev, 'id'));
  const loop = (await must('readlink', ['-f', dev])).trim();
  // The holder keeps the node open on fd 3, then tries I/O through it after the destroy.
  const holder = background('sh', ['-c', `exec 3<${loop}; sleep 2; dd if=/dev/fd/3 of=/dev/null bs=4k count=1 iflag=direct status=none`]);
  await sleep(300);
  const refused = await bdus(['destroy', dev]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /is in use: open by pid \d+ \(sh\)/);
  const destroyed = await bdus(['destroy', '-f', dev]);
  assert.equal(destroyed.code, 0, destroyed.stderr);
  await waitUntilDestroyed(id);
  assert.equal(existsSync(dev), false);
  assert.deepEqual(await listDevices(), []);
  const held = await holder.done;
  assert.notEqual(held.code, 0, 'I/O on the held node fails');
  for (let i = 0; i < 100 && existsSync(`/sys/block/${loop.slice(5)}/loop`); i++) await sleep(20);
  assert.deepEqual(await leftovers(), [], 'the loop device went with its last holder');
});

test('destroy refuses a mounted device, naming the mount point; the API has the same choice', async (t) => {
  const dev = await device(t, ['ram', '--size', '64M']);
  await must('mkfs.ext4', ['-q', dev]);
  const mnt = await mounted(t, dev);
  const refused = await bdus(['destroy', dev]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, new RegExp(`^bdus: error: ${dev} is in use: mounted on ${mnt}\\. .*--force`));
  await assert.rejects(destroyDevice(dev), (error: Error & { code?: string }) => error.code === 'EBUSY');
  assert.equal(await info(dev, 'state'), 'available', 'the refused device serves on');
  await must('sh', ['-c', `echo data > ${mnt}/file && sync`]);
  await must('umount', [mnt]);
  await destroyDevice(dev);
  assert.equal(existsSync(dev), false);
});

test('an open racing with destruction fails cleanly and never revives the device', async (t) => {
  for (let round = 0; round < 3; round++) {
    const dev = await device(t, ['ram', '--size', '16M']);
    const id = BigInt(await info(dev, 'id'));
    const destroy = bdus(['destroy', '--no-flush', dev]);
    const opens = Array.from({ length: 8 }, (_, i) =>
      i % 2 === 0
        ? sh('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=16', 'iflag=direct', 'status=none'], { timeoutMs: 10_000 })
        : bdus(['flush', String(id)], { timeoutMs: 10_000 }),
    );
    const results = await Promise.all(opens);
    assert.equal((await destroy).code, 0);
    for (const r of results) {
      if (r.code === 0) continue;
      assert.match(r.stderr, /No such file or directory|no such file or device|no longer exists|is terminated|destroyed while opening|destroyed while flushing|Input\/output error|No such device/, r.stderr);
    }
    await gone(dev, id);
  }
});

test('list and info, in both forms', async (t) => {
  const a = await device(t, ['ram', '--size', '64M', '--logical-block-size', '4096']);
  const b = await device(t, ['zero', '--size', '1G']);
  const list = await must(process.execPath, [BIN, 'list']);
  const lines = list.trim().split('\n');
  assert.match(lines[0]!, /^ID\s+INDEX\s+PATH\s+KERNEL\s+FRONTEND\s+STATE\s+PID\s+SIZE\s+ATTRIBUTES\s+DRIVER$/);
  assert.match(lines[1]!, /^\d+\s+0\s+\/dev\/bdus-0\s+\/dev\/loop\d+\s+fuse\s+available\s+\d+\s+64 MiB\s+lbs 4096, pbs 4096, concurrency 64\s+\S+\/examples\/ram\.js --size 64M --logical-block-size 4096$/);
  assert.match(lines[2]!, /^\d+\s+1\s+\/dev\/bdus-1\s+\/dev\/loop\d+\s+fuse\s+available\s+\d+\s+1 GiB\s+.*read-only\s+\S+\/examples\/zero\.js --size 1G$/);
  const json = JSON.parse(await must(process.execPath, [BIN, 'list', '--json'])) as Array<Record<string, any>>;
  assert.deepEqual(json.map((d) => [d.path, d.state, d.readOnly, d.attributes.size]), [
    [a, 'available', false, 64 * MiB],
    [b, 'available', true, 1 << 30],
  ]);
  assert.deepEqual(json[0]!.modes, [], 'FUSE over /dev/fuse: the plain path');

  const human = await must(process.execPath, [BIN, 'info', a]);
  assert.match(human, /^id:\s+\d+$/m);
  assert.match(human, /^frontend:\s+fuse$/m);
  assert.match(human, /^size:\s+67108864 \(64 MiB\)$/m);
  assert.match(human, /^logical block size:\s+4096$/m);
  assert.match(human, /^request timeout:\s+30000$/m);
  const fields = await must(process.execPath, [BIN, 'info', a, '--size', '--index', '--logical-block-size', '--read-only', '--path']);
  assert.equal(fields, `${64 * MiB}\n0\n4096\nfalse\n${a}\n`);
  assert.equal(await info(String(json[1]!.id), 'path'), b, 'info by id');

  const notBlock = await bdus(['info', '/etc/passwd']);
  assert.equal(notBlock.code, 1);
  assert.match(notBlock.stderr, /^bdus: error: \/etc\/passwd is not a block device$/m);
  const image = scratch('img');
  await must('truncate', ['-s', '1M', image]);
  const loop = (await must('losetup', ['--find', '--show', image])).trim();
  try {
    const other = await bdus(['info', loop]);
    assert.equal(other.code, 1);
    assert.match(other.stderr, new RegExp(`^bdus: error: ${loop} is not a bdus device$`, 'm'));
  } finally {
    await sh('losetup', ['-d', loop]);
    await sh('rm', ['-f', image]);
  }
});

test('request timeout: the client sees ETIMEDOUT, and the next request succeeds', async (t) => {
  const dev = await device(t, [`${DRIVERS}/faulty.js`, '--request-timeout', '1s']);
  const started = Date.now();
  const slow = await sh('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=4k', 'count=1', `seek=${(5 * MiB) / 4096}`, 'oflag=direct', 'status=none']);
  const took = Date.now() - started;
  assert.notEqual(slow.code, 0);
  assert.match(slow.stderr, /Connection timed out/);
  assert.ok(took >= 1000 && took < 2500, `timed out after ${took} ms`);
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=4k', 'count=4', 'seek=8', 'oflag=direct', 'status=none']);
  await must('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=4', 'skip=8', 'iflag=direct', 'status=none']);
  assert.equal(await info(dev, 'state'), 'available');
});

test('kill -9 of the driver: pending and new I/O fail with EIO within a second, the device goes, nothing is left', async (t) => {
  const dev = await device(t, [`${DRIVERS}/faulty.js`]);
  const id = BigInt(await info(dev, 'id'));
  const pid = Number(await info(dev, 'pid'));
  const loop = (await must('readlink', ['-f', dev])).trim();
  const pending = background('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=1', `skip=${(3 * MiB) / 4096}`, 'iflag=direct', 'status=none']);
  await sleep(300);
  const killedAt = Date.now();
  process.kill(pid, 'SIGKILL');
  const later = await sh('dd', [`if=${loop}`, 'of=/dev/null', 'bs=4k', 'count=1', 'iflag=direct', 'status=none']);
  const result = await pending.done;
  assert.notEqual(result.code, 0);
  assert.match(result.stderr, /Input\/output error/);
  assert.notEqual(later.code, 0);
  assert.ok(Date.now() - killedAt < 1000, `I/O failed after ${Date.now() - killedAt} ms`);
  await gone(dev, id);
});

test('a driver that dies before its device is available leaves nothing', async () => {
  const run = background(process.execPath, [BIN, 'run', `${DRIVERS}/slow-init.js`, '5000', '--foreground']);
  let record;
  for (let i = 0; i < 100 && !record; i++) {
    await sleep(50);
    record = (await listDevices())[0];
  }
  assert.ok(record, 'the device was created');
  assert.equal(record.state, 'initialized');
  process.kill(record.pid, 'SIGKILL');
  await run.done;
  await waitUntilDestroyed(record.id);
  assert.deepEqual(await leftovers(), []);
});

test('the daemon killed and restarted under I/O: no I/O error, the registry comes back, drivers are watched again', async (t) => {
  const dev = await device(t, ['ram', '--size', '256M']);
  const id = BigInt(await info(dev, 'id'));
  const fio = background('fio', [
    '--name=verify', `--filename=${dev}`, '--direct=1', '--ioengine=libaio', '--iodepth=16', '--rw=randwrite', '--bs=4k',
    '--size=128M', '--verify=crc32c', '--do_verify=1', '--verify_state_save=0', '--output-format=terse',
  ]);
  await sleep(500);
  const daemon = await daemonVersion();
  process.kill(daemon!.pid, 'SIGKILL');
  await sleep(500);
  const result = await fio.done;
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.split(';')[4], '0', 'no fio errors');

  const listed = await listDevices(); // starts a new daemon, which reloads the registry
  assert.notEqual((await daemonVersion())!.pid, daemon!.pid);
  assert.deepEqual(listed.map((d) => [d.id, d.path, d.state]), [[id, dev, 'available']]);
  // Whether or not the driver has re-attached yet, its death is noticed.
  process.kill(listed[0]!.pid, 'SIGKILL');
  await gone(dev, id);
});

test('a device destroyed while its driver has not re-attached to a new daemon goes once it has; the destroy waits for it', async (t) => {
  const dev = await device(t, ['ram', '--size', '16M']);
  await must(process.execPath, [BIN, 'daemon', 'stop']); // the driver serves on and will re-attach
  const r = await bdus(['destroy', dev], { timeoutMs: 30_000 }); // starts a daemon; the destroy event waits for the driver
  assert.equal(r.code, 0, r.stderr);
  assert.equal(existsSync(dev), false);
  assert.deepEqual(await listDevices(), []);
  assert.deepEqual(await leftovers(), []);
});

test('the daemon refuses more devices than --max-devices, with a clear error', async (t) => {
  await stopDaemon();
  await must(process.execPath, [BIN, 'daemon', 'start', '--max-devices', '1']);
  t.after(() => stopDaemon());
  await device(t, ['ram', '--size', '16M']);
  const second = await bdus(['run', 'ram', '--size', '16M']);
  assert.equal(second.code, 1);
  assert.match(second.stderr, /^bdus: error: too many devices: this daemon allows 1/m);
  assert.equal((await listDevices()).length, 1);
});

test('the control socket is for root only', async () => {
  await listDevices(); // the daemon runs
  const stat = statSync(SOCKET_PATH);
  assert.equal(stat.mode & 0o777, 0o600);
  assert.equal(stat.uid, 0);
  const r = await sh('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, BIN, 'list']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^bdus: error: permission denied: the bdus control socket \(.*\) is for root only/m);
});

/** Sends raw lines on a fresh control connection and collects the replies until it closes or goes quiet. */
function raw(lines: string[]): Promise<Array<Record<string, unknown>>> {
  return new Promise((resolve) => {
    const socket = connect(SOCKET_PATH);
    let text = '';
    let timer: NodeJS.Timeout;
    const finish = () => {
      socket.destroy();
      resolve(text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>));
    };
    socket.on('data', (d) => {
      text += d;
      clearTimeout(timer);
      timer = setTimeout(finish, 300);
    });
    socket.on('close', finish);
    socket.on('connect', () => {
      for (const line of lines) socket.write(line);
      timer = setTimeout(finish, 1000);
    });
  });
}

test('malformed and unknown control messages get clear errors; the daemon survives them', async (t) => {
  const dev = await device(t, ['ram', '--size', '16M']);
  const id = await info(dev, 'id');
  const replies = await raw([
    'not json\n',
    '[1,2]\n',
    '{"seq": 1}\n',
    '{"seq": 2, "op": "frobnicate"}\n',
    '{"seq": 3, "op": "destroy", "id": "abc"}\n',
    `{"seq": 4, "op": "available", "id": "${id}", "kernelPath": "/dev/loop0", "major": 7, "minor": 0, "kernelFd": 3}\n`,
    `{"seq": 5, "op": "gone", "id": "${id}"}\n`,
    '{"seq": 6, "op": "create", "pid": -1, "frontend": "fuse", "readOnly": false, "attributes": {}}\n',
    '{"seq": 7, "op": "info", "major": "x"}\n',
    '{"seq": 8, "op": "version"}\n',
  ]);
  // Replies come in any order (protocol.ts): compare them by seq.
  const byCode = replies.map((r) => [r.seq, r.ok === true ? 'ok' : r.code]).sort((a, b) => (a[0] as number) - (b[0] as number));
  assert.deepEqual(byCode, [
    [-1, 'EPROTO'],
    [-1, 'EPROTO'],
    [-1, 'EPROTO'],
    [2, 'EINVAL'],
    [3, 'EINVAL'],
    [4, 'EPERM'],
    [5, 'EPERM'],
    [6, 'EINVAL'],
    [7, 'EINVAL'],
    [8, 'ok'],
  ]);
  const huge = await raw([`{"seq": 1, "op": "${'x'.repeat(2 * MiB)}`]);
  assert.deepEqual(huge.map((r) => r.code), ['EMSGSIZE']);
  assert.equal(await info(dev, 'state'), 'available', 'the device is untouched');
  await must('dd', ['if=/dev/zero', `of=${dev}`, 'bs=4k', 'count=4', 'oflag=direct', 'status=none']);
});

test('an absent daemon is started on demand; version reports all three', async () => {
  await stopDaemon();
  assert.equal(await daemonVersion(), undefined);
  const stopped = await must(process.execPath, [BIN, 'version']);
  assert.match(stopped, /^bdus daemon not running$/m);
  assert.deepEqual(await listDevices(), []);
  const version = await must(process.execPath, [BIN, 'version']);
  assert.match(version, /^bdus daemon \d+\.\d+\.\d+ \(pid \d+, control protocol \d+\)$/m);
});
