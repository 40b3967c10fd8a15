/**
 * The export's guards (src/nbd/limits.ts, docs/nbd.md's security section), each with a real
 * client or a raw socket: TLS with pre-shared keys (libnbd's nbdinfo and nbdcopy), the
 * allow-list, the connection limit, the handshake deadline, and the memory one connection may
 * hold while its client pipelines reads and never reads the replies.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { bdus, must, scratch, sh, sleep } from './helpers.js';
import { assertConnectionLimit, assertRoundTrip, exportDriver, option, raw, readRequest, transmitting } from './nbd-helpers.js';

const MiB = 1 << 20;

function pskFile(t: TestContext, identity: string): string {
  const path = scratch(`${identity}.psk`);
  writeFileSync(path, `# made by the test\n${identity}:${randomBytes(32).toString('hex')}\n`);
  t.after(() => rmSync(path, { force: true }));
  return path;
}

/** libnbd's URI for a PSK client: the identity as the user, the key file as a query parameter. */
const pskUri = (uri: string, identity: string, file: string) => `${uri.replace(/^nbds?\+unix:\/\//, `nbds+unix://${identity}@`)}&tls-psk-file=${file}`;

test('TLS with pre-shared keys: the right key works, a wrong key or no TLS is refused, a bad key file is a clear error', async (t) => {
  const keys = pskFile(t, 'alice');
  const exported = await exportDriver(t, ['ram', '--size', '16M', '--tls', 'require', '--tls-psk', keys]);
  assert.match(exported.uri, /^nbds\+unix:/, 'the printed URI says TLS is required');
  assert.match(await must('nbdinfo', [pskUri(exported.uri, 'alice', keys)]), /with TLS/);
  await assertRoundTrip(t, pskUri(exported.uri, 'alice', keys), 16 * MiB);

  const mallory = pskFile(t, 'alice'); // the right identity, another key
  assert.notEqual((await sh('nbdinfo', [pskUri(exported.uri, 'alice', mallory)])).code, 0, 'a wrong key is refused');
  const unknown = pskFile(t, 'bob');
  assert.notEqual((await sh('nbdinfo', [pskUri(exported.uri, 'bob', unknown)])).code, 0, 'an unknown identity is refused');
  assert.notEqual((await sh('nbdinfo', [exported.uri.replace(/^nbds/, 'nbd')])).code, 0, 'a client without TLS is refused');

  const bad = scratch('bad.psk');
  t.after(() => rmSync(bad, { force: true }));
  for (const [content, message] of [
    ['alice:abcd\n', /line 1: expected identity:hexkey with a key of at least 16 bytes/],
    ['\n# nothing\n', /has no keys/],
  ] as const) {
    writeFileSync(bad, content);
    const r = await bdus(['export', 'ram', '--tls', 'require', '--tls-psk', bad, '--listen', `unix:${scratch('x')}.sock`]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, message);
  }
  const both = await bdus(['export', 'ram', '--tls', 'on', '--tls-psk', keys, '--tls-certificates', '/tmp', '--listen', '1']);
  assert.match(both.stderr, /either --tls-certificates DIR or --tls-psk FILE/);
});

test('the allow-list: a TCP client outside it is refused and logged, one inside it is served; bad entries are clear errors', async (t) => {
  const outside = await exportDriver(t, ['ram', '--size', '16M', '--allow', '10.0.0.0/8,fd00::/8'], '127.0.0.1:0');
  assert.notEqual((await sh('nbdinfo', [outside.uri])).code, 0, 'a client outside the list is refused');
  assert.match(outside.log(), /refused a connection from 127\.0\.0\.1: not in the allowed clients \(10\.0\.0\.0\/8,fd00::\/8\)/);

  const inside = await exportDriver(t, ['ram', '--size', '16M', '--allow', '10.0.0.0/8, 127.0.0.1'], '127.0.0.1:0');
  await assertRoundTrip(t, inside.uri, 16 * MiB);

  for (const [args, message] of [
    [['--allow', '300.1.1.1', '--listen', '0'], /invalid allowed client '300\.1\.1\.1'/],
    [['--allow', '10.0.0.0/33', '--listen', '0'], /invalid allowed client '10\.0\.0\.0\/33'/],
    [['--allow', '', '--listen', '0'], /invalid allowed client ''/],
    [['--allow', '127.0.0.1', '--listen', `unix:${scratch('x')}.sock`], /--allow is for TCP clients/],
    [['--max-connections', '0', '--listen', '0'], /invalid connection limit 0/],
    [['--max-connections', 'many', '--listen', '0'], /invalid --max-connections 'many'/],
    [['--handshake-timeout', 'soon', '--listen', '0'], /invalid --handshake-timeout 'soon'/],
    [['--connection-memory', '0', '--listen', '0'], /invalid connection memory 0/],
  ] as const) {
    const r = await bdus(['export', 'ram', ...args]);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
  }
  const run = await bdus(['run', 'ram', '--allow', '127.0.0.1']);
  assert.equal(run.code, 2, run.stderr);
  assert.match(run.stderr, /need --export/);
});

test('the connection limit: connections past it are closed at once; a closed one makes room', async (t) => {
  const exported = await exportDriver(t, ['ram', '--size', '16M', '--max-connections', '2']);
  await assertConnectionLimit(exported);
});

test('the handshake deadline: a silent client and a trickling one are dropped in time; a transmitting one may idle', async (t) => {
  const exported = await exportDriver(t, ['ram', '--size', '16M', '--handshake-timeout', '1s']);
  const started = Date.now();
  const silent = await raw(exported.socket);
  const trickling = await raw(exported.socket);
  await trickling.next(18);
  // One byte of the client flags every 300 ms: an idle timeout would never fire; a deadline does.
  const bytes = Buffer.concat([Buffer.from([0, 0, 0, 3]), option(7, Buffer.alloc(6))]);
  let sent = 0;
  const drip = setInterval(() => !trickling.socket.destroyed && sent < bytes.length && trickling.socket.write(bytes.subarray(sent, ++sent)), 300);
  t.after(() => clearInterval(drip));
  const idle = await transmitting(exported.socket);
  await Promise.all([silent.closed, trickling.closed]);
  const took = Date.now() - started;
  assert.ok(took >= 900 && took < 5000, `dropped after ${took} ms`);
  assert.match(exported.log(), /did not finish its handshake within 1 s/);

  await sleep(1500); // past the deadline, in transmission: no limit on idling
  idle.socket.write(readRequest(1n, 0, 4096));
  const reply = await idle.next(16 + 4096);
  assert.equal(reply.readUInt32BE(4), 0);
  idle.socket.destroy();
});

/** The export process's resident memory, in bytes. */
function rss(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match![1]) * 1024;
}

/**
 * Pipelines `count` reads of 1 MiB without reading a reply for a while; returns how much the
 * export's memory grew meanwhile, after checking that every reply then arrives intact.
 */
async function pipelineWithoutReading(socketPath: string, pid: number, count: number): Promise<number> {
  const before = rss(pid);
  const c = await transmitting(socketPath);
  c.socket.pause(); // stop reading replies: they pile up in the server unless it stops reading requests
  const requests = Buffer.concat(Array.from({ length: count }, (_, i) => readRequest(BigInt(i), (i % 16) * MiB, MiB)));
  c.socket.write(requests);
  let peak = before;
  for (let i = 0; i < 20; i++) {
    await sleep(100);
    peak = Math.max(peak, rss(pid));
  }
  // Replies are parsed as they stream in (raw()'s collecting reader is quadratic at this size).
  c.socket.removeAllListeners('data');
  const replies = await new Promise<number>((resolve, reject) => {
    let pending = Buffer.alloc(0);
    let skip = 0;
    let seen = 0;
    const cookies = new Set<bigint>();
    c.socket.on('data', (chunk: Buffer) => {
      const used = Math.min(skip, chunk.length);
      skip -= used;
      pending = Buffer.concat([pending, chunk.subarray(used)]);
      while (skip === 0 && pending.length >= 16) {
        if (pending.readUInt32BE(4) !== 0) return reject(new Error(`reply ${seen} is an error`));
        cookies.add(pending.readBigUInt64BE(8));
        seen++;
        const rest = pending.subarray(16);
        const dropped = Math.min(MiB, rest.length);
        skip = MiB - dropped;
        pending = rest.subarray(dropped);
        if (seen === count) return resolve(cookies.size);
      }
    });
    c.socket.on('close', () => reject(new Error(`closed after ${seen} replies`)));
    c.socket.resume();
  });
  assert.equal(replies, count, 'every request is answered once, successfully');
  c.socket.destroy();
  return peak - before;
}

test('memory per connection: a client that pipelines reads and never reads its replies holds the limit, not all of them', async (t) => {
  // memory, not ram: its 1 MiB reads span pages and fill the reply buffer, so every reply held
  // is memory of its own (ram answers with views of its store, which replies only share).
  const bounded = await exportDriver(t, ['memory', '--size', '16M', '--connection-memory', '8M']);
  const growth = await pipelineWithoutReading(bounded.socket, bounded.pid, 256);
  t.diagnostic(`256 reads of 1 MiB, limit 8 MiB: the export grew by ${(growth / MiB).toFixed(0)} MiB`);
  assert.ok(growth < 64 * MiB, `the export grew by ${growth / MiB} MiB`);

  // The same client without the limit (1 GiB): the export holds every reply, so the bound above means something.
  const unbounded = await exportDriver(t, ['memory', '--size', '16M', '--connection-memory', '1G']);
  const grown = await pipelineWithoutReading(unbounded.socket, unbounded.pid, 256);
  t.diagnostic(`the same with a 1 GiB limit: the export grew by ${(grown / MiB).toFixed(0)} MiB`);
  assert.ok(grown > 128 * MiB, `the export grew by ${grown / MiB} MiB`);
});
