// This test ensures that what a client's system call sees for each kind of driver failure is
// what docs/frontends.md says, on FUSE+loop and on an NBD export (kernel NBD: in the VM, in
// kernel-nbd.test.ts): ENOSPC, ENOLINK and ETIMEDOUT pass through FUSE+loop as themselves; NBD
// has ENOSPC but no ENOLINK or ETIMEDOUT (they become EIO); a stuck callback is a timeout.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { device, DRIVERS, sh } from './helpers.js';
import { exportDriver } from './nbd-helpers.js';

const MiB = 1 << 20;

/** dd's complaint for one 4 KiB direct read or write at `offset`. */
async function failure(dev: string, op: 'read' | 'write', offset: number): Promise<string> {
  const args =
    op === 'read'
      ? [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${offset}`]
      : ['if=/dev/zero', `of=${dev}`, 'oflag=direct,seek_bytes', `seek=${offset}`, 'conv=notrunc'];
  const r = await sh('dd', [...args, 'bs=4096', 'count=1', 'status=none'], { timeoutMs: 30_000 });
  assert.notEqual(r.code, 0, `${op} at ${offset} fails`);
  return r.stderr.trim().split(': ').pop()!;
}

test('FUSE+loop: ENOSPC, ENOLINK and ETIMEDOUT reach the client as themselves; anything else is EIO; a stuck callback times out', async (t) => {
  const dev = await device(t, [`${DRIVERS}/faulty.js`, '--request-timeout', '1s']);
  assert.equal(await failure(dev, 'write', 1 * MiB), 'No space left on device');
  assert.equal(await failure(dev, 'read', 2 * MiB), 'Input/output error');
  assert.equal(await failure(dev, 'read', 6 * MiB), 'Link has been severed');
  assert.equal(await failure(dev, 'read', 7 * MiB), 'Connection timed out');
  assert.equal(await failure(dev, 'read', 3 * MiB), 'Connection timed out');
});

/** Runs nbdsh's Python against `uri`; each line of `script` prints one result. */
function nbdsh(uri: string, script: string): Promise<string> {
  return new Promise((resolve) => {
    // Debian's python3 has the nbd module; another python3 earlier on the PATH may not.
    const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };
    const child = spawn('nbdsh', ['-u', uri, '-c', '-'], { env, stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('exit', () => resolve(out));
    child.stdin.end(script);
  });
}

test('NBD export: ENOSPC reaches the client; EIO, ENOLINK, ETIMEDOUT and a timeout are EIO (NBD has no others)', async (t) => {
  const { uri } = await exportDriver(t, [`${DRIVERS}/faulty.js`, '--request-timeout', '1s']);
  const attempt = (call: string) => ['try:', `    ${call}`, '    print("ok")', 'except nbd.Error as e:', '    print(e.errno)'].join('\n');
  const script = [
    attempt(`h.pwrite(bytearray(4096), ${1 * MiB})`),
    attempt(`h.pread(4096, ${2 * MiB})`),
    attempt(`h.pread(4096, ${6 * MiB})`),
    attempt(`h.pread(4096, ${7 * MiB})`),
    attempt(`h.pread(4096, ${3 * MiB})`),
  ].join('\n');
  assert.deepEqual((await nbdsh(uri, script)).trim().split('\n'), ['ENOSPC', 'EIO', 'EIO', 'EIO', 'EIO']);
});
