// This test ensures that the s3 driver's HTTP client (src/drivers/s3/http.ts) keeps its promises
// against real servers on loopback (node:http, and raw sockets for answers node:http would not
// send): bodies land whole in the caller's buffer over kept connections, never more connections
// than allowed; chunked bodies, 1xx answers, `Connection: close` and a kept connection the
// server closed are handled; a body longer than its buffer, garbage, and a server that never
// answers fail the request with a clear code, and the client goes on working after each; TLS works.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { test } from 'node:test';
import { HttpClient } from '../src/drivers/s3/http.js';

const MiB = 1 << 20;
const pattern = (size: number) => Buffer.from(Array.from({ length: size }, (_, i) => (i * 7 + (i >> 12)) & 255));

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as net.AddressInfo).port;
}

function close(server: net.Server): Promise<void> {
  (server as http.Server).closeAllConnections?.();
  return new Promise((resolve) => server.close(() => resolve()));
}

const get = (client: HttpClient, path: string, into?: Buffer, ms = 5000) => client.send({ method: 'GET', path, headers: { host: 'x' }, into, signal: AbortSignal.timeout(ms) });

test('bodies land whole in the buffer given, over kept connections, never more than allowed', async () => {
  const body = pattern(MiB);
  const sockets = new Set<unknown>();
  let busy = 0;
  let most = 0;
  const server = http.createServer((req, res) => {
    sockets.add(req.socket);
    most = Math.max(most, ++busy);
    if (req.method === 'PUT') {
      const pieces: Buffer[] = [];
      req.on('data', (p: Buffer) => pieces.push(p));
      req.on('end', () => {
        busy--;
        res.writeHead(200, { etag: '"e"', 'content-length': 0 }).end();
        assert.deepEqual(Buffer.concat(pieces), body);
      });
      return;
    }
    // In pieces, with pauses: reads land part by part.
    res.writeHead(200, { 'content-length': body.length, etag: '"abc"' });
    let at = 0;
    const more = () => {
      if (at >= body.length) return void res.end();
      if (at + 100_000 >= body.length) busy--; // the client may send its next request once it has this piece
      res.write(body.subarray(at, (at += 100_000)));
      setTimeout(more, 1);
    };
    more();
  });
  const port = await listen(server);
  const client = new HttpClient({ tls: false, hostname: '127.0.0.1', port }, 2);
  try {
    const into = Array.from({ length: 6 }, () => Buffer.alloc(MiB));
    const answers = await Promise.all(into.map((buffer) => get(client, '/o', buffer)));
    for (const [i, answer] of answers.entries()) {
      assert.equal(answer.status, 200);
      assert.equal(answer.length, MiB);
      assert.equal(answer.headers.get('etag'), '"abc"');
      assert.ok(into[i]!.equals(body), `body ${i} whole`);
    }
    const put = await client.send({ method: 'PUT', path: '/o', headers: { host: 'x', 'content-length': String(body.length) }, body, signal: AbortSignal.timeout(5000) });
    assert.equal(put.status, 200);
    assert.ok(most <= 2, `at most 2 requests at once (saw ${most})`);
    assert.equal(sockets.size, 2, 'two connections, kept');
  } finally {
    client.destroy();
    await close(server);
  }
});

test('chunked bodies, 1xx answers, Connection: close, and a kept connection the server closed', async () => {
  const body = pattern(70_000);
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    let text = '';
    socket.on('data', (piece) => {
      text += piece.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      const path = /^GET (\S+)/.exec(text)![1];
      text = text.slice(end + 4);
      if (path === '/chunked') {
        socket.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n');
        for (let at = 0; at < body.length; at += 30_000) {
          const part = body.subarray(at, at + 30_000);
          socket.write(`${part.length.toString(16)}\r\n`);
          socket.write(part);
          socket.write('\r\n');
        }
        socket.write('0\r\nx-trailer: 1\r\n\r\n');
      } else if (path === '/error') {
        socket.write('HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n');
        const xml = '<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>';
        socket.write(`${xml.length.toString(16)}\r\n${xml}\r\n0\r\n\r\n`);
      } else if (path === '/close') {
        socket.end('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok');
      } else if (path === '/then-idle-close') {
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        setTimeout(() => socket.end(), 20); // the kept connection dies while idle
      }
    });
  });
  const port = await listen(server);
  const client = new HttpClient({ tls: false, hostname: '127.0.0.1', port }, 1);
  try {
    const into = Buffer.alloc(100_000);
    const chunked = await get(client, '/chunked', into);
    assert.equal(chunked.status, 200);
    assert.equal(chunked.length, body.length);
    assert.ok(into.subarray(0, body.length).equals(body));

    const error = await get(client, '/error', into);
    assert.equal(error.status, 404);
    assert.equal(error.length, 0);
    assert.match(error.text, /<Code>NoSuchKey<\/Code>/);
    assert.equal(connections, 1, 'one kept connection so far');

    assert.equal((await get(client, '/close')).status, 200);
    assert.equal((await get(client, '/then-idle-close')).status, 200);
    assert.equal(connections, 2, 'a new connection after Connection: close');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal((await get(client, '/then-idle-close')).status, 200, 'a closed kept connection is replaced unseen');
    assert.equal(connections, 3);
  } finally {
    client.destroy();
    await close(server);
  }
});

test('too long a body, garbage, and no answer fail the request, and the client goes on', async () => {
  const server = net.createServer((socket) => {
    socket.on('data', (piece) => {
      const path = /^GET (\S+)/.exec(piece.toString('latin1'))?.[1];
      if (path === '/long') socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 8192\r\n\r\n${'x'.repeat(8192)}`);
      else if (path === '/long-chunked') socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n' + 'x'.repeat(8192) + '\r\n0\r\n\r\n');
      else if (path === '/garbage') socket.write('SSH-2.0-OpenSSH\r\n\r\n');
      else if (path === '/ok') socket.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine');
      // '/silent': nothing, ever
    });
  });
  const port = await listen(server);
  const client = new HttpClient({ tls: false, hostname: '127.0.0.1', port }, 1);
  try {
    const small = Buffer.alloc(4096);
    await assert.rejects(get(client, '/long', small), { code: 'EMSGSIZE' });
    await assert.rejects(get(client, '/long-chunked', small), { code: 'EMSGSIZE' });
    await assert.rejects(get(client, '/garbage', small), { code: 'EPROTO' });
    await assert.rejects(get(client, '/silent', small, 200), { name: 'TimeoutError' });
    const ok = await get(client, '/ok', small);
    assert.equal(ok.length, 4);
    assert.equal(small.toString('latin1', 0, 4), 'fine');
    await assert.rejects(new HttpClient({ tls: false, hostname: '127.0.0.1', port: 1 }, 1).send({ method: 'GET', path: '/', headers: {}, signal: AbortSignal.timeout(2000) }), { code: 'ECONNREFUSED' });
  } finally {
    client.destroy();
    await close(server);
  }
});

test('TLS: the body lands in the buffer given', async () => {
  const dir = mkdtempSync(`${tmpdir()}/bdus-tls-`);
  const before = process.env.NODE_TLS_REJECT_UNAUTHORIZED;
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${dir}/key.pem`, '-out', `${dir}/cert.pem`, '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' });
    const body = pattern(300_000);
    const server = https.createServer({ key: readFileSync(`${dir}/key.pem`), cert: readFileSync(`${dir}/cert.pem`) }, (_req, res) => res.writeHead(200, { 'content-length': body.length }).end(body));
    const port = await listen(server);
    process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'; // the certificate is this test's own
    const client = new HttpClient({ tls: true, hostname: '127.0.0.1', port }, 1);
    try {
      const into = Buffer.alloc(body.length);
      for (let i = 0; i < 2; i++) {
        into.fill(0);
        assert.equal((await get(client, '/', into)).length, body.length);
        assert.ok(into.equals(body));
      }
    } finally {
      client.destroy();
      await close(server);
    }
  } finally {
    if (before === undefined) delete process.env.NODE_TLS_REJECT_UNAUTHORIZED;
    else process.env.NODE_TLS_REJECT_UNAUTHORIZED = before;
    rmSync(dir, { recursive: true, force: true });
  }
});
