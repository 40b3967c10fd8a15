/**
 * The NBD export (`bdus export`) against real clients nobody here wrote: nbdinfo, nbdcopy,
 * qemu-img, fio's nbd engine, nbdsh scripts (flags, block sizes, structured replies, FUA, trim,
 * zeroes, block status); several connections at once; a read-only export; TLS required and
 * offered; bad handshakes and requests sent by hand, after which the export still serves.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { bdus, BIN, DRIVERS, must, records, scratch, sh } from './helpers.js';
import { assertRoundTrip, certificates, exportDriver, option, raw, readRequest, transmitting } from './nbd-helpers.js';

const MiB = 1 << 20;

function scratchFile(t: TestContext, name: string): string {
  const path = scratch(name);
  t.after(() => rmSync(path, { force: true }));
  return path;
}

test('nbdinfo: size, flags, block sizes and the allocation map', async (t) => {
  const { uri } = await exportDriver(t, ['ram', '--size', '64M', '--logical-block-size', '4096']);
  const info = JSON.parse(await must('nbdinfo', ['--json', uri])) as { exports: Array<Record<string, unknown>>; protocol: string };
  assert.equal(info.protocol, 'newstyle-fixed');
  const e = info.exports[0]!;
  assert.equal(e['export-size'], 64 * MiB);
  assert.equal(e.is_read_only, false);
  assert.equal(e.can_flush, true);
  assert.equal(e.can_fua, true);
  assert.equal(e.can_trim, true);
  assert.equal(e.can_zero, true);
  assert.equal(e.can_fast_zero, true);
  assert.equal(e.can_multi_conn, true);
  assert.equal(e.block_size_minimum, 4096);
  assert.equal(e.block_size_maximum, 32 * MiB);
  assert.deepEqual(e.contexts, ['base:allocation']);
  assert.match(await must('nbdinfo', ['--map', uri]), /^\s+0\s+67108864\s+0\s+data\n$/);
});

test('nbdcopy round trip: what goes in comes back out, checksum equal', async (t) => {
  const { uri } = await exportDriver(t, ['ram', '--size', '64M']);
  await assertRoundTrip(t, uri, 64 * MiB);
});

test('qemu-img: info, and convert into and out of the export', async (t) => {
  const { uri } = await exportDriver(t, ['ram', '--size', '32M']);
  assert.match(await must('qemu-img', ['info', uri]), /virtual size: 32 MiB \(33554432 bytes\)/);
  const raw = scratchFile(t, 'raw');
  const qcow2 = scratchFile(t, 'qcow2');
  writeFileSync(raw, Buffer.concat([randomBytes(8 * MiB), Buffer.alloc(24 * MiB)]));
  await must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  await must('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', qcow2, uri]);
  const out = scratchFile(t, 'out');
  await must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', uri, out]);
  assert.match(await must('qemu-img', ['compare', raw, out]), /Images are identical/);
});

test('fio nbd engine with verify, four connections at once', async (t) => {
  const { uri } = await exportDriver(t, ['ram', '--size', '128M', '--max-concurrent-callbacks', '16']);
  const r = await sh('fio', [
    '--name=nbd', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--numjobs=4',
    '--size=32M', '--offset_increment=32M', '--verify=crc32c', '--verify_fatal=1', '--group_reporting', '--output-format=terse',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const fields = r.stdout.trim().split('\n').at(-1)!.split(';');
  assert.equal(fields[4], '0', 'no fio errors');
  assert.equal(Number(fields[5]), 128 * 1024, 'every block written was read back and verified');
});

test('a read-only driver gives a read-only export; writes fail with EPERM', async (t) => {
  const { uri } = await exportDriver(t, ['zero', '--size', '16M']);
  const info = JSON.parse(await must('nbdinfo', ['--json', uri])) as { exports: Array<Record<string, unknown>> };
  assert.equal(info.exports[0]!.is_read_only, true);
  const source = scratchFile(t, 'source');
  writeFileSync(source, Buffer.alloc(16 * MiB, 1));
  const r = await sh('nbdcopy', [source, uri]);
  assert.notEqual(r.code, 0);
  const back = scratchFile(t, 'back');
  await must('nbdcopy', [uri, back]);
  assert.ok(readFileSync(back).equals(Buffer.alloc(16 * MiB)), 'reads give zeros');
});

test('TCP on loopback, an asked-for export name, and a normal stop (SIGTERM: exit 0)', async (t) => {
  const child = spawn(process.execPath, [BIN, 'export', 'ram', '--size', '8M', '--listen', '127.0.0.1:0', '--name', 'disk0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  const uri = await new Promise<string>((resolve) => child.stdout.once('data', (d: Buffer) => resolve(d.toString().trim())));
  assert.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/disk0$/);
  assert.match(await must('nbdinfo', [uri]), /export="disk0"/);
  const wrong = await sh('nbdinfo', [uri.replace('/disk0', '/other')]);
  assert.notEqual(wrong.code, 0);
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
});

// ---- Bad input, by hand ---------------------------------------------------------------------------

test('bad handshakes and requests get the protocol error or a clean disconnect; the export serves on', async (t) => {
  const { uri, socket } = await exportDriver(t, ['ram', '--size', '16M']);

  // Unknown client flags: disconnect.
  const a = await raw(socket);
  await a.next(18);
  a.socket.write(Buffer.from([0, 0, 0, 0x80]));
  await a.closed;

  // Bad option magic: disconnect.
  const b = await raw(socket);
  await b.next(18);
  b.socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.alloc(16, 0xff)]));
  await b.closed;

  // Unknown option: ERR_UNSUP, and the handshake goes on; malformed GO: ERR_INVALID; ABORT: ACK.
  const c = await raw(socket);
  await c.next(18);
  c.socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), option(0x7777)]));
  const unsup = await c.next(20);
  assert.equal(unsup.readUInt32BE(12), 0x80000001, 'NBD_REP_ERR_UNSUP');
  await c.next(unsup.readUInt32BE(16));
  c.socket.write(option(7, Buffer.from([0, 0, 0, 9, 1])));
  const invalid = await c.next(20);
  assert.equal(invalid.readUInt32BE(12), 0x80000003, 'NBD_REP_ERR_INVALID');
  await c.next(invalid.readUInt32BE(16));
  c.socket.write(option(2));
  const ack = await c.next(20);
  assert.equal(ack.readUInt32BE(12), 1, 'NBD_REP_ACK');
  await c.closed;

  // An oversized option: disconnect without reading it.
  const d = await raw(socket);
  await d.next(18);
  const huge = option(7);
  huge.writeUInt32BE(0x7fffffff, 12);
  d.socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), huge]));
  await d.closed;

  // In transmission: an out-of-range read gets EINVAL, a bad magic a disconnect.
  const e = await transmitting(socket);
  e.socket.write(readRequest(0xabcdefn, 16 * MiB, 4096));
  const reply = await e.next(16);
  assert.equal(reply.readUInt32BE(0), 0x67446698);
  assert.equal(reply.readUInt32BE(4), 22, 'EINVAL');
  assert.equal(reply.readBigUInt64BE(8), 0xabcdefn, 'the cookie comes back');
  // A flag the command cannot carry (REQ_ONE on a read; an unknown bit): EINVAL, as nbdkit does.
  for (const flags of [1 << 3, 1 << 9]) {
    const flagged = readRequest(0x1234n, 0, 4096);
    flagged.writeUInt16BE(flags, 4);
    e.socket.write(flagged);
    const refused = await e.next(16);
    assert.equal(refused.readUInt32BE(4), 22, `flags 0x${flags.toString(16)}: EINVAL`);
  }
  e.socket.write(Buffer.alloc(28, 0x11));
  await e.closed;

  // The export is unharmed.
  await assertRoundTrip(t, uri, 16 * MiB);
});

test('a burst of 2000 requests in one go: each answered once, with its own cookie; a CACHE just before DISC is answered before the close', async (t) => {
  const { socket } = await exportDriver(t, ['ram', '--size', '16M']);
  // Every fourth a write of 512 bytes, the rest CACHE (answered at once): far more simple
  // replies in one turn than one buffer of them holds (transmission.ts gathers 256).
  const count = 2000;
  const messages: Buffer[] = [];
  for (let i = 1; i <= count + 1; i++) {
    const write = i % 4 === 0 && i <= count;
    const request = readRequest(BigInt(i), (i % 64) * 4096, write ? 512 : 4096);
    request.writeUInt16BE(write ? 1 : 5, 6);
    messages.push(request);
    if (write) messages.push(Buffer.alloc(512, i & 0xff));
  }
  const disc = readRequest(0n, 0, 0);
  disc.writeUInt16BE(2, 6);
  const c = await transmitting(socket);
  c.socket.write(Buffer.concat([...messages, disc]));
  const cookies = new Set<bigint>();
  for (let i = 0; i <= count; i++) {
    const reply = await c.next(16);
    assert.equal(reply.readUInt32BE(0), 0x67446698, 'a simple reply');
    assert.equal(reply.readUInt32BE(4), 0, 'no error');
    cookies.add(reply.readBigUInt64BE(8));
  }
  assert.equal(cookies.size, count + 1, 'every cookie once');
  assert.ok([...cookies].every((cookie) => cookie >= 1n && cookie <= BigInt(count + 1)));
  await c.closed;
  assert.equal(c.received().length, 10 + 18 + 16 * (count + 1), 'nothing after the replies');

  // The writes landed: the last one to each block wins.
  const d = await transmitting(socket);
  for (let block = 0; block < 64; block += 4) {
    d.socket.write(readRequest(BigInt(block), block * 4096, 512));
    const reply = await d.next(16 + 512);
    assert.equal(reply.readUInt32BE(4), 0);
    let last = 0;
    for (let i = 4; i <= count; i += 4) if (i % 64 === block) last = i;
    assert.deepEqual(reply.subarray(16), Buffer.alloc(512, last & 0xff), `block ${block}`);
  }
  d.socket.destroy();
});

/** Runs a Python script in nbdsh against `uri` (Debian's python3 has the nbd module). */
function nbdsh(uri: string, script: string) {
  return new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    const child = spawn('nbdsh', ['--base-allocation', '-u', uri, '-c', '-'], {
      env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code: code ?? 128, stdout, stderr }));
    child.stdin.end(script);
  });
}

test('nbdsh: flags, block sizes, structured replies, FUA, trim, zeroes and block status, as the driver has them', async (t) => {
  const log = scratchFile(t, 'requests');
  const { uri } = await exportDriver(t, [`${DRIVERS}/recorder.js`, log, 'fua', 'extents', '--size', '16M', '--physical-block-size', '4096']);
  const r = await nbdsh(uri, `
import errno
assert h.get_structured_replies_negotiated()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert (h.can_flush(), h.can_fua(), h.can_trim(), h.can_zero(), h.can_fast_zero(), h.can_multi_conn(), h.can_df()) == (True,) * 7
assert not h.is_read_only()
assert (h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM)) == (512, 4096, 32 << 20)
h.pwrite(b"\\x01" * 8192, 1 << 20, nbd.CMD_FLAG_FUA)
chunks = []
def chunk(subbuf, offset, status, error):
    chunks.append((offset, status, len(subbuf)))
    return 0
assert h.pread_structured(8192, 1 << 20, chunk) == b"\\x01" * 8192
assert chunks == [(1 << 20, nbd.READ_DATA, 8192)], chunks
h.trim(65536, 2 << 20)
h.zero(65536, 3 << 20, nbd.CMD_FLAG_NO_HOLE)
h.zero(65536, 4 << 20, nbd.CMD_FLAG_FAST_ZERO)
h.flush()
seen = []
h.block_status(2 << 20, 0, lambda meta, offset, entries, error: seen.extend(entries))
assert seen == [1 << 20, 3, 8192, 0, (1 << 20) - 8192, 3], seen
one = []
h.block_status(2 << 20, 0, lambda meta, offset, entries, error: one.extend(entries), nbd.CMD_FLAG_REQ_ONE)
assert one == [1 << 20, 3], one
try:
    h.pread(4096, 16 << 20)
    raise AssertionError("a read past the end succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
print("ok")
`);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'ok');
  const calls = records(log);
  const find = (op: string) => calls.filter((c) => c.op === op);
  assert.deepEqual(find('fuaWrite').map((c) => [c.offset, c.size]), [[MiB, 8192]]);
  assert.deepEqual(find('discard').map((c) => [c.offset, c.size]), [[2 * MiB, 65536]]);
  assert.deepEqual(
    find('writeZeros').map((c) => [c.offset, c.mayUnmap]),
    [[3 * MiB, false], [4 * MiB, true]],
  );
  assert.ok(find('flush').length >= 1);
});

/** A CA and a server certificate for localhost, made with openssl for this test. */
test('TLS: required, a client without TLS is refused and a TLS client works; offered, both work', async (t) => {
  const { server, client } = await certificates(t);
  const required = await exportDriver(t, ['ram', '--size', '16M', '--tls', 'require', '--tls-certificates', server]);
  assert.match(required.uri, /^nbds\+unix:/, 'the printed URI says TLS is required');
  const plain = await sh('nbdinfo', [required.uri.replace(/^nbds/, 'nbd')]);
  assert.notEqual(plain.code, 0, 'a client without TLS is refused');
  const tlsUri = (uri: string) => `${uri.replace(/^nbd\+unix:/, 'nbds+unix:')}&tls-certificates=${client}`;
  const secure = await must('nbdinfo', [tlsUri(required.uri)]);
  assert.match(secure, /with TLS/);
  await assertRoundTrip(t, tlsUri(required.uri), 16 * MiB);

  const offered = await exportDriver(t, ['ram', '--size', '16M', '--tls', 'on', '--tls-certificates', server]);
  assert.match(await must('nbdinfo', [offered.uri]), /without TLS/);
  assert.match(await must('nbdinfo', [tlsUri(offered.uri)]), /with TLS/);

  const missing = await bdus(['export', 'ram', '--tls', 'require', '--tls-certificates', client, '--listen', `unix:${scratch('x')}.sock`]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /TLS: cannot read .*server-cert\.pem/);
});

test('bdus run --export: one driver instance serves the device and NBD clients; the export ends with it', async (t) => {
  const socket = `${scratch('run-export')}.sock`;
  const data = scratchFile(t, 'data');
  const back = scratchFile(t, 'back');
  const r = await bdus(['run', 'ram', '--size', '16M', '--export', `unix:${socket}`]);
  assert.equal(r.code, 0, r.stderr);
  const dev = r.stdout.trim();
  t.after(() => bdus(['destroy', '--force', '--no-flush', dev]));
  const uri = `nbd+unix:///?socket=${socket}`;
  assert.match(r.stderr, new RegExp(`exported over NBD at ${uri.replace(/[?+]/g, '\\$&')}`));
  writeFileSync(data, randomBytes(16 * MiB));
  await must('dd', [`if=${data}`, `of=${dev}`, 'bs=1M', 'oflag=direct', 'status=none']);
  await must('nbdcopy', [uri, back]);
  assert.ok(readFileSync(data).equals(readFileSync(back)), 'NBD clients read what the device wrote');
  assert.equal((await bdus(['destroy', dev])).code, 0);
  assert.notEqual((await sh('nbdinfo', [uri])).code, 0, 'the export ended with the device');
});

test('a driver that never answers: the NBD client gets an error within the request timeout, and the next request is served', async (t) => {
  const img = scratchFile(t, 'image');
  writeFileSync(img, Buffer.alloc(MiB));
  const { uri } = await exportDriver(t, [`${DRIVERS}/recoverable.js`, img, 'hang-read-at=0', '--request-timeout', '2s']);
  const script = [
    'import time',
    'started = time.time()',
    'try:',
    '    h.pread(4096, 0)',
    '    print("answered")',
    'except nbd.Error as e:',
    '    print("error", e.errno, round(time.time() - started, 1))',
    'print("next", len(h.pread(4096, 4096)))',
  ].join('\n');
  const r = await nbdsh(uri, script);
  assert.equal(r.code, 0, r.stderr);
  const [first, next] = r.stdout.trim().split('\n');
  const [, errno, seconds] = first!.split(' ');
  assert.equal(errno, 'EIO', `NBD has no ETIMEDOUT: EIO (${first})`);
  assert.ok(Number(seconds) >= 2 && Number(seconds) <= 4, `failed after ${seconds} s (timeout 2 s)`);
  assert.equal(next, 'next 4096');
});

test('a structured read at the very end of the 64-bit range gets EINVAL, and the export serves on', async (t) => {
  const { uri } = await exportDriver(t, ['ram', '--size', '16M']);
  const script = [
    'h.set_strict_mode(0)',
    'for offset in (2**64 - 4096, 2**63, 16 * 2**20):',
    '    try:',
    '        h.pread(4096, offset)',
    '        print("answered")',
    '    except nbd.Error as e:',
    '        print(e.errno)',
    'print(len(h.pread(4096, 0)))',
  ].join('\n');
  const r = await nbdsh(uri, script);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), ['EINVAL', 'EINVAL', 'EINVAL', '4096']);
});
