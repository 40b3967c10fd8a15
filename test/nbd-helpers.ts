/**
 * NBD test helpers: an export run for the length of a test, and a raw connection for sending
 * the server whatever bytes a test wants (bad input included).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import type { TestContext } from 'node:test';
import { BIN, must, scratch } from './helpers.js';

export interface Exported {
  uri: string;
  socket: string;
  /** The export's stderr so far. */
  log(): string;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number>;
  /** The exit code (128 for a signal), once the export ends by itself. */
  exited: Promise<number>;
  /** The export's process. */
  pid: number;
}

/**
 * Runs `bdus export ARGS --listen unix:...` until the test ends; with `listen` ("127.0.0.1:0"),
 * on TCP instead (`socket` is then "HOST:PORT" as the URI says).
 */
export async function exportDriver(t: TestContext, args: readonly string[], listen?: string): Promise<Exported> {
  let socket = `${scratch('nbd')}.sock`;
  const child = spawn(process.execPath, [BIN, 'export', ...args, '--listen', listen ?? `unix:${socket}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 128)));
  const uri = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d) => {
      stdout += d;
      if (stdout.includes('\n')) resolve(stdout.split('\n')[0]!);
    });
    void exited.then((code) => reject(new Error(`bdus export exited ${code}: ${stderr}`)));
  });
  if (listen) socket = /^nbds?:\/\/([^/]+)\//.exec(uri)![1]!;
  const stop = async () => {
    child.kill('SIGTERM');
    return exited;
  };
  t.after(async () => {
    await stop();
    rmSync(socket, { force: true });
  });
  return { uri, socket, log: () => stderr, stop, exited, pid: child.pid! };
}

/** A raw connection that collects what the server sends; to a Unix socket's path, or to "HOST:PORT". */
export async function raw(socketPath: string): Promise<{ socket: Socket; received: () => Buffer; closed: Promise<void>; next: (n: number) => Promise<Buffer> }> {
  const tcp = /^([\d.]+):(\d+)$/.exec(socketPath);
  const socket = tcp ? connect(Number(tcp[2]), tcp[1]) : connect(socketPath);
  let data = Buffer.alloc(0);
  let waiter: (() => void) | undefined;
  socket.on('data', (d: Buffer) => {
    data = Buffer.concat([data, d]);
    waiter?.();
  });
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.on('error', () => undefined);
  let read = 0;
  const next = async (n: number) => {
    while (data.length - read < n) {
      await Promise.race([new Promise<void>((resolve) => (waiter = resolve)), closed]);
      if (socket.destroyed && data.length - read < n) throw new Error(`connection closed after ${data.length} bytes`);
    }
    read += n;
    return data.subarray(read - n, read);
  };
  await new Promise((resolve) => socket.once('connect', resolve));
  return { socket, received: () => data, closed, next };
}

export function option(code: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(0x49484156454f5054n, 0);
  header.writeUInt32BE(code, 8);
  header.writeUInt32BE(payload.length, 12);
  return Buffer.concat([header, payload]);
}


/** A READ request (simple header): magic, no flags, `cookie`, `offset`, `length`. */
export function readRequest(cookie: bigint, offset: number, length: number): Buffer {
  const request = Buffer.alloc(28);
  request.writeUInt32BE(0x25609513, 0);
  request.writeBigUInt64BE(cookie, 8);
  request.writeBigUInt64BE(BigInt(offset), 16);
  request.writeUInt32BE(length, 24);
  return request;
}

/** Starts a connection in transmission: client flags, EXPORT_NAME "" and its 10-byte answer. */
export async function transmitting(socketPath: string): Promise<Awaited<ReturnType<typeof raw>>> {
  const c = await raw(socketPath);
  await c.next(18);
  c.socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), option(1)]));
  await c.next(10);
  return c;
}

/** Waits until the server hangs up, or sends nothing for `quietMs`. */
export async function untilQuiet(c: Awaited<ReturnType<typeof raw>>, quietMs: number): Promise<void> {
  for (let seen = -1; seen !== c.received().length; ) {
    seen = c.received().length;
    await Promise.race([new Promise((resolve) => setTimeout(resolve, quietMs)), c.closed]);
  }
}

/** nbdcopy `size` random bytes into the export and back out; what comes back must be the same. */
export async function assertRoundTrip(t: TestContext, uri: string, size: number): Promise<void> {
  const source = scratch('source');
  const back = scratch('back');
  t.after(() => {
    rmSync(source, { force: true });
    rmSync(back, { force: true });
  });
  writeFileSync(source, randomBytes(size));
  await must('nbdcopy', [source, uri]);
  await must('nbdcopy', [uri, back]);
  assert.ok(readFileSync(source).equals(readFileSync(back)), 'the data comes back unchanged');
}

/** A CA, a server certificate signed by it (server-cert.pem, server-key.pem, ca-cert.pem) and the client's CA copy, removed after the test. */
export async function certificates(t: TestContext): Promise<{ server: string; client: string }> {
  const dir = scratch('tls');
  const server = `${dir}/server`;
  const client = `${dir}/client`;
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await must('mkdir', ['-p', server, client]);
  const openssl = (args: string[]) => must('openssl', args);
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${dir}/ca-key.pem`, '-out', `${server}/ca-cert.pem`, '-days', '2', '-subj', '/CN=bdus test CA']);
  await openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${server}/server-key.pem`, '-out', `${dir}/server.csr`, '-subj', '/CN=localhost']);
  writeFileSync(`${dir}/ext.cnf`, 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  await openssl(['x509', '-req', '-in', `${dir}/server.csr`, '-CA', `${server}/ca-cert.pem`, '-CAkey', `${dir}/ca-key.pem`, '-CAcreateserial',
    '-out', `${server}/server-cert.pem`, '-days', '2', '-extfile', `${dir}/ext.cnf`]);
  await must('cp', [`${server}/ca-cert.pem`, `${client}/ca-cert.pem`]);
  return { server, client };
}

/**
 * With `--max-connections 2` on `exported`: two connections get their greeting, a third is
 * closed at once (and logged), and once the first has gone a new one is served.
 */
export async function assertConnectionLimit(exported: Exported): Promise<void> {
  const first = await raw(exported.socket);
  const second = await raw(exported.socket);
  await first.next(18);
  await second.next(18);
  const third = await raw(exported.socket);
  await third.closed;
  assert.equal(third.received().length, 0, 'the third connection gets no greeting');
  assert.match(exported.log(), /refused a connection from a Unix socket: 2 connections are open, the limit/);
  // The second one's end makes room: with lanes it is lane 1's, which the main thread learns of
  // asynchronously, through a shared counter.
  second.socket.destroy();
  for (let i = 0; i < 50; i++) {
    const again = await raw(exported.socket);
    const greeted = await Promise.race([again.next(18).then(() => true), again.closed.then(() => false)]).catch(() => false);
    again.socket.destroy();
    if (greeted) break;
    assert.ok(i < 49, 'a closed connection makes room');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  first.socket.destroy();
}
