// This test ensures that `bdus` refuses bad set-ups and bad input with one clear line and a
// non-zero exit, leaving nothing behind.
import assert from 'node:assert/strict';
import { writeFileSync, rmSync } from 'node:fs';
import { test } from 'node:test';
import { BIN, bdus, scratch, sh } from './helpers.js';

async function nothingLeft(): Promise<void> {
  const list = await bdus(['list', '--json']);
  assert.deepEqual(JSON.parse(list.stdout), []);
}

function oneErrorLine(stderr: string, pattern: RegExp): void {
  const lines = stderr.trim().split('\n').filter((l) => !l.startsWith('(see'));
  assert.equal(lines.length, 1, `expected one error line, got:\n${stderr}`);
  assert.match(lines[0]!, pattern);
}

test('not root: refused with a clear error', async () => {
  const r = await sh('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, BIN, 'run', 'ram', '--foreground']);
  assert.equal(r.code, 1);
  oneErrorLine(r.stderr, /^bdus: error: bdus must run as root/);
});

test('no /dev/fuse: refused with a clear error, for the automatic choice and for --frontend fuse', async () => {
  // A private mount namespace whose /dev is an empty tmpfs: the real kernel, without FUSE (and
  // this machine's kernel has no ublk and no nbd either).
  const run = (frontend: string) =>
    sh('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', `mount -t tmpfs none /dev && exec "${process.execPath}" "${BIN}" run ram --foreground --frontend ${frontend}`]);
  const auto = await run('auto');
  assert.equal(auto.code, 1);
  oneErrorLine(auto.stderr, /^bdus: error: no frontend can run here: the kernel has no ublk \(.*\); and no \/dev\/fuse: .*; and the kernel has no nbd module/);
  const fuse = await run('fuse');
  assert.equal(fuse.code, 1);
  oneErrorLine(fuse.stderr, /^bdus: error: no \/dev\/fuse/);
  const bogus = await bdus(['run', 'ram', '--frontend', 'ubd']);
  assert.equal(bogus.code, 1);
  oneErrorLine(bogus.stderr, /^bdus: error: invalid frontend 'ubd': expected auto, ublk, fuse, nbd/);
  const ublk = await bdus(['run', 'ram', '--frontend', 'ublk']);
  assert.equal(ublk.code, 1);
  oneErrorLine(ublk.stderr, /^bdus: error: the kernel has no ublk \(no \/dev\/ublk-control; modprobe ublk_drv failed/);
});

test('a module that exports no driver', async () => {
  const module = `${scratch('nodriver')}.mjs`;
  writeFileSync(module, 'export const answer = 42;\n');
  try {
    const r = await bdus(['run', module]);
    assert.equal(r.code, 1);
    oneErrorLine(r.stderr, /exports no driver/);
  } finally {
    rmSync(module, { force: true });
  }
  await nothingLeft();
});

test('a module path that does not exist', async () => {
  const r = await bdus(['run', '/nonexistent/driver.js']);
  assert.equal(r.code, 1);
  oneErrorLine(r.stderr, /no driver module at \/nonexistent\/driver.js/);
});

test('invalid attributes name the attribute, the value and the rule', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['--logical-block-size', '1000'], /invalid attribute logicalBlockSize=1000: must be a power of two from 512 to the page size/],
    [['--size', '1000'], /invalid attribute size=1000: must be a multiple of the physical block size \(512\)/],
    [['--size', 'lots'], /invalid --size 'lots'/],
    [['--max-read-write-size', '512'], /invalid attribute maxReadWriteSize=512: must be 0 or at least the page size/],
    [['--max-concurrent-callbacks', 'x'], /invalid --max-concurrent-callbacks 'x'/],
  ];
  for (const [flags, pattern] of cases) {
    const r = await bdus(['run', 'ram', ...flags]);
    assert.equal(r.code, 1, flags.join(' '));
    oneErrorLine(r.stderr, pattern);
  }
  await nothingLeft();
});

test('unknown flags and commands are usage errors', async () => {
  const flag = await bdus(['run', 'ram', '--sise', '1G']);
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /unknown option '--sise'/);
  const command = await bdus(['frobnicate']);
  assert.equal(command.code, 2);
  assert.match(command.stderr, /unknown command 'frobnicate'/);
});

test('destroy refuses what is not a bdus device', async () => {
  const notBlock = await bdus(['destroy', '/etc/passwd']);
  assert.equal(notBlock.code, 1);
  oneErrorLine(notBlock.stderr, /\/etc\/passwd is not a block device/);
  const noId = await bdus(['destroy', '987654321']);
  assert.equal(noId.code, 1);
  oneErrorLine(noId.stderr, /no device has id 987654321/);
});

test('help and version', async () => {
  const help = await bdus(['--help']);
  assert.equal(help.code, 0);
  for (const command of ['run', 'list', 'info', 'flush', 'destroy', 'daemon', 'version']) {
    assert.match(help.stdout, new RegExp(`^  ${command} `, 'm'));
    const own = await bdus([command, '--help']);
    assert.equal(own.code, 0, command);
    assert.match(own.stdout, new RegExp(`^usage: bdus ${command}`), command);
  }
  assert.match((await bdus(['run', '--help'])).stdout, /--max-concurrent-callbacks N/);
  assert.match((await bdus(['run', '--help'])).stdout, /--request-timeout TIME/);
  const version = await bdus(['version']);
  assert.match(version.stdout, /^bdus CLI \d+\.\d+\.\d+\nbdus library \d+\.\d+\.\d+\nbdus daemon /);
});

test('output that cannot be written: a reader gone early (bdus help | true) ends quietly; a full disk is one error line and status 1', async () => {
  const r = await sh('bash', ['-c', `node ${BIN} help | true; echo "status \${PIPESTATUS[0]}" >&2`]);
  assert.match(r.stderr, /^status 0\n$/, r.stderr);
  const full = await sh('bash', ['-c', `node ${BIN} list > /dev/full`]);
  assert.equal(full.code, 1);
  oneErrorLine(full.stderr, /^bdus: error: cannot write to stdout: ENOSPC/);
});
