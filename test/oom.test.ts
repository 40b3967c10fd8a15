/**
 * A driver that allocates without bound, killed by the kernel's real OOM killer: its process is
 * put in a memory cgroup of its own with a limit (cgroup v1 or v2, whichever this machine's
 * memory controller is), and a read at a chosen offset makes it allocate until the kernel kills
 * it. The daemon and another device must not notice; the device itself goes as its rules say
 * (recoverable: the read waits for the next driver, which answers it; otherwise the client gets
 * EIO and the device is removed).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { daemonVersion } from '../src/index.js';
import { background, device, DRIVERS, image, info, must, mustRerun, readBlock, sleep } from './helpers.js';

const DRIVER = `${DRIVERS}/recoverable.js`;
const MiB = 1 << 20;
const LIMIT = 256 * MiB;

/** A memory cgroup with a limit, removed after the test; `add` moves a process into it. */
function memoryCage(t: TestContext, limit: number): { add(pid: number): void; oomKills(): number } {
  const own = readFileSync('/proc/self/cgroup', 'utf8').split('\n');
  const v1 = own.find((line) => /^\d+:memory:/.test(line));
  const name = `bdus-oom-test-${process.pid}-${Date.now()}`;
  let dir: string;
  let oomKills: () => number;
  if (v1 && existsSync('/sys/fs/cgroup/memory')) {
    dir = `/sys/fs/cgroup/memory${v1.split(':')[2]}/${name}`.replace('//', '/');
    mkdirSync(dir);
    writeFileSync(`${dir}/memory.limit_in_bytes`, String(limit));
    oomKills = () => Number(/oom_kill (\d+)/.exec(readFileSync(`${dir}/memory.oom_control`, 'utf8'))?.[1] ?? 0);
  } else {
    const unified = existsSync('/sys/fs/cgroup/cgroup.controllers') ? '/sys/fs/cgroup' : '/sys/fs/cgroup/unified';
    const path = own.find((line) => line.startsWith('0::'))!.slice(3);
    dir = `${unified}${path === '/' ? '' : path}/${name}`;
    mkdirSync(dir);
    writeFileSync(`${dir}/memory.max`, String(limit));
    oomKills = () => Number(/oom_kill (\d+)/.exec(readFileSync(`${dir}/memory.events`, 'utf8'))?.[1] ?? 0);
  }
  t.after(async () => {
    // Empty once its process is gone (the kernel may take a moment to release it).
    for (let i = 0; i < 50; i++) {
      try {
        rmdirSync(dir);
        return;
      } catch {
        await sleep(100);
      }
    }
  });
  return { add: (pid) => writeFileSync(`${dir}/cgroup.procs`, String(pid)), oomKills };
}

/** Another device with known data: it must not notice. */
async function witness(t: TestContext): Promise<{ check(): Promise<void> }> {
  const dev = await device(t, ['ram', '--size', '16M']);
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', 'count=16', 'oflag=direct', 'status=none']);
  const sum = await must('sha256sum', ['-b', dev]);
  return {
    async check() {
      assert.equal(await must('sha256sum', ['-b', dev]), sum, "the other device's data is intact");
      await must('dd', ['if=/dev/zero', `of=${dev}`, 'bs=4k', 'count=1', 'oflag=direct', 'status=none']);
    },
  };
}

test('a driver killed by the OOM killer: the recoverable device keeps the read for the next driver; the daemon and another device never notice', async (t) => {
  const other = await witness(t);
  const daemon = (await daemonVersion())!.pid;
  const img = image(t);
  writeFileSync(img, Buffer.alloc(4096, 0x5a), { flag: 'r+' });
  const dev = await device(t, [DRIVER, img, `grow-read-at=${MiB}`, '--recoverable']);
  const cage = memoryCage(t, LIMIT);
  cage.add(Number(await info(dev, 'pid')));

  const reader = background('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${MiB}`, 'bs=4096', 'count=1', 'status=none']);
  for (let i = 0; i < 200 && (await info(dev, 'pid')) !== '0'; i++) await sleep(100);
  assert.equal(await info(dev, 'pid'), '0', 'the driver died; the device waits for another');
  assert.ok(cage.oomKills() >= 1, 'the OOM killer killed it');
  await mustRerun(dev, [DRIVER, img]);
  const r = await reader.done;
  assert.equal(r.code, 0, `the read completes through the next driver: ${r.stderr}`);
  assert.equal((await readBlock(dev, 0)).code, 0);
  assert.equal((await daemonVersion())?.pid, daemon, 'the same daemon');
  await other.check();
});

test('a driver killed by the OOM killer: a device that is not recoverable fails the read with EIO and goes; nothing else notices', async (t) => {
  const other = await witness(t);
  const daemon = (await daemonVersion())!.pid;
  const dev = await device(t, [DRIVER, image(t), `grow-read-at=${MiB}`]);
  const cage = memoryCage(t, LIMIT);
  cage.add(Number(await info(dev, 'pid')));
  const read = await readBlock(dev, MiB);
  assert.notEqual(read.code, 0);
  assert.match(read.stderr, /Input\/output error/);
  assert.ok(cage.oomKills() >= 1, 'the OOM killer killed it');
  for (let i = 0; i < 50 && existsSync(dev); i++) await sleep(100);
  assert.equal(existsSync(dev), false, 'the device is gone');
  assert.equal((await daemonVersion())?.pid, daemon, 'the same daemon');
  await other.check();
});
