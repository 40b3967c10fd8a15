// This test ensures that the nbd driver makes any NBD server a local device: in front of nbdkit
// (memory, file) it carries ext4 through a hot swap and a SIGKILL with recovery; a server that
// restarts is a pause, not an error; TLS-PSK works; block status reaches an export's client;
// and a URI that names no server is a clear error.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { bdus, device, image, killDriver, mounted, must, mustRerun, scratch, sh, sleep } from './helpers.js';
import { exportDriver } from './nbd-helpers.js';

const MiB = 1 << 20;

/** nbdkit on a fresh Unix socket until the test ends (or stop()); resolves once it listens. */
async function nbdkit(t: TestContext, args: readonly string[], socket = `${scratch('nbdkit')}.sock`): Promise<{ uri: string; socket: string; stop(): Promise<void> }> {
  const child: ChildProcess = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', socket, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  for (let i = 0; !existsSync(socket); i++) {
    if (i > 100 || child.exitCode !== null) throw new Error(`nbdkit ${args.join(' ')} did not start: ${stderr}`);
    await sleep(50);
  }
  // nbdkit waits for its clients to leave: the nbd driver does on ESHUTDOWN, a dead one cannot.
  const stop = async () => {
    child.kill('SIGTERM');
    const forced = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(forced);
  };
  t.after(async () => {
    await stop();
    rmSync(socket, { force: true });
  });
  return { uri: `nbd+unix:///?socket=${socket}`, socket, stop };
}

test('nbd in front of nbdkit memory: ext4 through a hot swap and a SIGKILL with recovery', async (t) => {
  const server = await nbdkit(t, ['memory', '512M']);
  const driver = ['nbd', server.uri, '--recoverable'];
  const dev = await device(t, driver);
  assert.equal((await must('blockdev', ['--getsize64', dev])).trim(), String(512 * MiB));
  await must('mkfs.ext4', ['-q', dev]);
  const mnt = await mounted(t, dev);
  const data = Buffer.alloc(16 * MiB);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2246822519) >>> 0, i);
  writeFileSync(`${mnt}/a`, data);
  const writer = sh('dd', ['if=/dev/urandom', `of=${mnt}/b`, 'bs=1M', 'count=64', 'conv=fsync', 'status=none'], { timeoutMs: 120_000 });
  await sleep(200);
  await mustRerun(dev, driver);
  await killDriver(dev);
  await mustRerun(dev, driver);
  assert.equal((await writer).code, 0, 'the writer saw no error');
  await must('sync', []);
  await must('umount', [mnt]);
  const fsck = await sh('e2fsck', ['-fn', dev], { timeoutMs: 120_000 });
  assert.equal(fsck.code, 0, `e2fsck: ${fsck.stdout}`);
  await must('mount', [dev, mnt]);
  assert.ok(readFileSync(`${mnt}/a`).equals(data), 'the file is intact');
});

test('nbd: a server that restarts is a pause, not an error', async (t) => {
  const img = image(t, 64 * MiB);
  const socket = `${scratch('nbdkit')}.sock`;
  let server = await nbdkit(t, ['file', img], socket);
  const dev = await device(t, ['nbd', server.uri]);
  const data = Buffer.alloc(32 * MiB);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 3266489917) >>> 0, i);
  const source = scratch('source');
  writeFileSync(source, data);
  t.after(() => rmSync(source, { force: true }));
  const writer = sh('dd', [`if=${source}`, `of=${dev}`, 'bs=64k', 'oflag=direct', 'status=none'], { timeoutMs: 120_000 });
  await sleep(100);
  await server.stop();
  rmSync(socket, { force: true });
  await sleep(1000);
  server = await nbdkit(t, ['file', img], socket);
  assert.equal((await writer).code, 0, 'dd saw no error');
  await must('cmp', ['-n', String(data.length), source, dev]);
  await must('cmp', ['-n', String(data.length), source, img]);
});

test('nbd: TLS-PSK, block status through an export, and a clear error for no server', async (t) => {
  const keys = `${scratch('keys')}.psk`;
  writeFileSync(keys, `alice:${'ab'.repeat(32)}\n`);
  t.after(() => rmSync(keys, { force: true }));
  const server = await nbdkit(t, ['--tls=require', `--tls-psk=${keys}`, 'memory', '64M']);
  const dev = await device(t, ['nbd', `nbds+unix://alice@/?socket=${server.socket}&tls-psk-file=${keys}`]);
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', 'count=1', 'seek=4', 'oflag=direct', 'status=none']);
  const plain = await bdus(['run', 'nbd', server.uri, '--foreground'], { timeoutMs: 30_000 });
  assert.notEqual(plain.code, 0);
  assert.match(plain.stderr, /refused export|TLS/);

  const memory = await nbdkit(t, ['memory', '64M']);
  // Debian's python3 has the nbd module; another python3 earlier on the PATH may not.
  await must('nbdsh', ['-u', memory.uri, '-c', 'h.pwrite(b"x" * 65536, 8 << 20)'], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` } });
  const exported = await exportDriver(t, ['nbd', memory.uri]);
  const map = JSON.parse(await must('nbdinfo', ['--map', '--json', exported.uri])) as Array<{ offset: number; length: number; type: number }>;
  assert.ok(map.some((e) => e.offset <= 8 * MiB && e.offset + e.length > 8 * MiB && (e.type & 1) === 0), `data at 8 MiB: ${JSON.stringify(map)}`);
  assert.ok(map.some((e) => (e.type & 1) === 1), 'holes elsewhere');

  const none = await bdus(['run', 'nbd', `nbd+unix:///?socket=${scratch('nowhere')}`, '--foreground'], { timeoutMs: 30_000 });
  assert.match(none.stderr, /cannot connect to the NBD server/);
  const bad = await bdus(['run', 'nbd', 'http://example/', '--foreground'], { timeoutMs: 30_000 });
  assert.match(bad.stderr, /is not an NBD URI/);
});
