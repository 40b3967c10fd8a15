// This test ensures that the http driver serves a disk image from a real HTTP server (Node's
// http module here, answering range requests as any web server does): ext4 mounts read-only from
// it and its files read back whole; its cache answers a block read twice without a second
// request; and a server that cannot serve ranges, or none at all, is a clear error.
import assert from 'node:assert/strict';
import { createReadStream, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test, type TestContext } from 'node:test';
import { bdus, device, must, scratch } from './helpers.js';

const MiB = 1 << 20;

/** Serves `file` on 127.0.0.1 with byte ranges (or without, if `ranges` is false); counts the range requests. */
async function serveFile(t: TestContext, file: string, ranges = true): Promise<{ url: string; requests(): number }> {
  let requests = 0;
  const size = statSync(file).size;
  const server: Server = createServer((req, res) => {
    const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (!ranges || !range) {
      res.writeHead(200, { 'Content-Length': size });
      return createReadStream(file).pipe(res);
    }
    requests++;
    const start = Number(range[1]);
    const end = Math.min(Number(range[2]), size - 1);
    res.writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${size}`, 'Content-Length': end - start + 1, 'Accept-Ranges': 'bytes' });
    createReadStream(file, { start, end }).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  server.unref();
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/disk.img`, requests: () => requests };
}

test('http: ext4 from an HTTP server, mounted read-only, its files intact; the cache saves requests', async (t) => {
  const content = scratch('content');
  mkdirSync(content);
  const files: Record<string, Buffer> = {};
  for (const name of ['a', 'b', 'c']) {
    files[name] = Buffer.alloc(3 * MiB + 1234);
    for (let i = 0; i + 4 <= files[name]!.length; i += 4) files[name]!.writeUInt32LE((i * 2654435761 + name.charCodeAt(0)) >>> 0, i);
    writeFileSync(`${content}/${name}`, files[name]!);
  }
  const img = scratch('http.img');
  t.after(() => rmSync(content, { recursive: true, force: true }));
  t.after(() => rmSync(img, { force: true }));
  await must('mkfs.ext4', ['-q', '-d', content, img, '64M']);

  const server = await serveFile(t, img);
  // The driver runs in another process (its fetch is not this test's): it may reach our server.
  const dev = await device(t, ['http', server.url, '--cache', '8M']);
  assert.equal((await must('blockdev', ['--getro', dev])).trim(), '1', 'read-only');
  const mnt = scratch('mnt');
  mkdirSync(mnt);
  t.after(async () => {
    await must('umount', [mnt]).catch(() => undefined);
    rmSync(mnt, { recursive: true, force: true });
  });
  await must('mount', ['-o', 'ro,noload', dev, mnt]);
  // In another process: this one's event loop serves the driver's requests (a sync read here would wait for itself).
  for (const name of Object.keys(files)) await must('cmp', [`${content}/${name}`, `${mnt}/${name}`]);
  await must('umount', [mnt]);

  const before = server.requests();
  await must('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=1', 'skip=5000', 'iflag=direct', 'status=none']);
  const once = server.requests();
  await must('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=1', 'skip=5000', 'iflag=direct', 'status=none']);
  assert.equal(once - before, 1, 'one request for a block not cached');
  assert.equal(server.requests(), once, 'none for a block cached');
});

test('http: a server without ranges, or no server, is a clear error', async (t) => {
  const img = scratch('plain.img');
  writeFileSync(img, Buffer.alloc(MiB));
  t.after(() => rmSync(img, { force: true }));
  const plain = await serveFile(t, img, false);
  const r = await bdus(['run', 'http', plain.url, '--foreground'], { timeoutMs: 30_000 });
  assert.match(r.stderr, /answered 200 OK to a range request \(the server must serve byte ranges\)/);
  const none = await bdus(['run', 'http', 'http://127.0.0.1:9/disk.img', '--foreground'], { timeoutMs: 30_000 });
  assert.match(none.stderr, /cannot reach http:\/\/127\.0\.0\.1:9\/disk\.img/);
});
