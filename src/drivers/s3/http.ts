/**
 * A small HTTP/1.1 client for the object store's GETs and PUTs, made for one thing node:http
 * cannot do: put a response's body where the caller wants it. The socket reads (net's `onread`,
 * TLS too) land straight in the caller's buffer, a chunk's slot in the cache: the kernel's copy
 * (or OpenSSL's decryption) is the only one. Through node:http a 1 MiB body was copied three
 * times (the socket's read buffer, a fresh Buffer per piece from the parser, then ours), and the
 * fresh Buffers cost page faults and major collections: more CPU per byte than the gateway's.
 *
 * Scope, on purpose: one request at a time per connection (no pipelining), keep-alive, bodies
 * sized by Content-Length or chunked, 1xx answers skipped, `Connection: close` honoured, a
 * connection the server closed while idle replaced once without the caller seeing it. No
 * redirects, no proxies, no compression: an S3 endpoint needs none of them.
 */
import net from 'node:net';
import tls from 'node:tls';

/** Room for a response's status line and headers, and the first bytes after them. */
const HEAD_MAX = 16 << 10;
/** What is kept of a body that has nowhere to go (an error's XML). */
const TEXT_MAX = 64 << 10;

export interface HttpTarget {
  readonly tls: boolean;
  readonly hostname: string;
  readonly port: number;
}

export interface HttpRequest {
  readonly method: string;
  readonly path: string;
  /** Sent as given (signed): `host` among them. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body?: Buffer;
  /** Where a 2xx answer's body goes, from its start. A longer body fails the request. */
  readonly into?: Buffer;
  readonly signal: AbortSignal;
}

export interface HttpAnswer {
  readonly status: number;
  /** Lower-case names. */
  readonly headers: ReadonlyMap<string, string>;
  /** Bytes of the body put in `into`. */
  readonly length: number;
  /** The body, when it had nowhere else to go (a non-2xx answer; the first 64 KiB). */
  readonly text: string;
}

/** Failures of the exchange itself carry a socket-like code (ECONNRESET, EPROTO, ...), which the store's retry rule reads. */
function failure(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

class Exchange {
  status = 0;
  headers = new Map<string, string>();
  /** Bytes of the body still to come (Content-Length), or -1: chunked, or -2: until the connection ends. */
  remaining = 0;
  inHead = true;
  length = 0;
  text = '';
  /** Bytes of the answer seen: a connection that fails before any was stale, not the request. */
  seen = 0;
  chunked: ChunkedDecoder | null = null;

  constructor(
    readonly request: HttpRequest,
    readonly resolve: (answer: HttpAnswer) => void,
    readonly reject: (error: unknown) => void,
  ) {}

  /** Where this many bytes of body go. */
  take(bytes: Buffer): void {
    if (bytes.length === 0) return;
    const into = this.status < 300 ? this.request.into : undefined;
    if (into) {
      if (this.length + bytes.length > into.length) throw failure('EMSGSIZE', `the answer is longer than ${into.length} bytes`);
      bytes.copy(into, this.length);
    } else if (this.text.length < TEXT_MAX) this.text += bytes.toString('latin1');
    this.length += bytes.length;
  }
}

/** Chunked transfer coding, fed bytes as they come. */
class ChunkedDecoder {
  private line = '';
  /** Bytes of chunk data left; -1 while reading a size line; -2 after the last chunk (trailers). */
  private left = -1;
  private crlf = 0;
  done = false;

  /** Feeds `bytes`; hands the data in them to `take`. */
  feed(bytes: Buffer, take: (data: Buffer) => void): void {
    let at = 0;
    while (at < bytes.length && !this.done) {
      if (this.crlf > 0) { // the CRLF after a chunk's data
        at++;
        this.crlf--;
      } else if (this.left > 0) {
        const n = Math.min(this.left, bytes.length - at);
        take(bytes.subarray(at, at + n));
        at += n;
        this.left -= n;
        if (this.left === 0) {
          this.crlf = 2;
          this.left = -1;
        }
      } else {
        const end = bytes.indexOf(10, at);
        this.line += bytes.toString('latin1', at, end < 0 ? bytes.length : end);
        if (end < 0) return;
        at = end + 1;
        const line = this.line.trim();
        this.line = '';
        if (this.left === -2) { // trailers end with an empty line
          if (line === '') this.done = true;
        } else {
          const size = parseInt(line, 16);
          if (!Number.isInteger(size) || size < 0) throw failure('EPROTO', `a bad chunk size '${line.slice(0, 20)}'`);
          this.left = size === 0 ? -2 : size;
        }
      }
    }
  }
}

class Connection {
  readonly socket: net.Socket;
  private readonly head = Buffer.allocUnsafe(HEAD_MAX);
  private headLength = 0;
  exchange: Exchange | null = null;
  /** Exchanges done on it: a reused connection may have been closed by the server meanwhile. */
  used = 0;
  closed = false;

  constructor(
    target: HttpTarget,
    private readonly done: (connection: Connection, keep: boolean) => void,
  ) {
    const onread = { buffer: () => this.buffer(), callback: (n: number) => this.received(n) };
    this.socket = target.tls
      ? tls.connect({ host: target.hostname, port: target.port, servername: net.isIP(target.hostname) ? undefined : target.hostname, ALPNProtocols: ['http/1.1'], onread } as tls.ConnectionOptions)
      : net.connect({ host: target.hostname, port: target.port, noDelay: true, onread });
    this.socket.on('error', (error) => this.fail(error));
    this.socket.on('end', () => this.fail(failure('ECONNRESET', 'the store closed the connection')));
    this.socket.on('close', () => this.fail(failure('ECONNRESET', 'the store closed the connection')));
  }

  /** Connected (and for TLS, the handshake done), or failed after `ms`. */
  ready(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const event = this.socket instanceof tls.TLSSocket ? 'secureConnect' : 'connect';
      const timer = setTimeout(() => {
        this.socket.destroy();
        reject(failure('ETIMEDOUT', `no connection to the store within ${ms} ms`));
      }, ms);
      const stop = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', abort);
        this.socket.off(event, connected).off('error', failed);
      };
      const connected = () => (stop(), resolve());
      const failed = (error: Error) => (stop(), reject(error));
      const abort = () => {
        stop();
        this.socket.destroy();
        reject(signal.reason);
      };
      signal.addEventListener('abort', abort, { once: true });
      this.socket.once(event, connected).once('error', failed);
    });
  }

  start(exchange: Exchange): void {
    this.exchange = exchange;
    this.used++;
    this.headLength = 0;
    const r = exchange.request;
    let text = `${r.method} ${r.path} HTTP/1.1\r\n`;
    for (const name in r.headers) text += `${name}: ${r.headers[name]}\r\n`;
    this.socket.ref();
    this.socket.cork();
    this.socket.write(`${text}\r\n`, 'latin1');
    if (r.body && r.body.length > 0) this.socket.write(r.body);
    this.socket.uncork();
  }

  /** Ends the exchange under way with `error` (an abort). */
  destroy(error: Error): void {
    this.socket.destroy(error);
  }

  /** Closes a connection the client lets go of. */
  close(): void {
    this.closed = true;
    this.socket.destroy();
  }

  /** Where the next read lands: the rest of the head buffer, or a 2xx body's destination itself. */
  private buffer(): Buffer {
    const x = this.exchange;
    // parseHead checked that the body fits: x.length + x.remaining is its Content-Length.
    if (x && !x.inHead && x.remaining > 0 && x.status < 300 && x.request.into) return x.request.into.subarray(x.length, x.length + x.remaining);
    if (x?.inHead) return this.head.subarray(this.headLength);
    return this.head; // bodies with nowhere to go, chunked bodies, and bytes no one asked for
  }

  /** Always true: reading goes on (false would pause the socket). */
  private received(n: number): boolean {
    const x = this.exchange;
    if (!x) { // bytes while idle: the connection is not in step
      this.socket.destroy();
      return true;
    }
    x.seen += n;
    try {
      if (x.inHead) {
        this.headLength += n;
        this.parseHead(x);
      } else if (x.remaining > 0 && x.status < 300 && x.request.into) { // buffer() gave it `into` itself
        x.length += n;
        x.remaining -= n;
      } else this.body(x, this.head.subarray(0, n));
      if (!x.inHead && (x.remaining === 0 || x.chunked?.done)) this.finish(x);
    } catch (error) {
      this.exchange = null;
      this.socket.destroy();
      x.reject(error);
    }
    return true;
  }

  private parseHead(x: Exchange): void {
    for (;;) {
      const end = this.head.subarray(0, this.headLength).indexOf('\r\n\r\n', 0, 'latin1');
      if (end < 0) {
        if (this.headLength >= HEAD_MAX) throw failure('EPROTO', `the store's answer has more than ${HEAD_MAX} bytes of headers`);
        return;
      }
      const lines = this.head.toString('latin1', 0, end).split('\r\n');
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!);
      if (!status) throw failure('EPROTO', `not an HTTP answer: '${lines[0]!.slice(0, 40)}'`);
      const rest = this.head.subarray(end + 4, this.headLength); // taken (copied out) before the next read
      x.status = Number(status[1]);
      x.headers.clear();
      for (const line of lines.slice(1)) {
        const colon = line.indexOf(':');
        if (colon > 0) x.headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
      }
      if (x.status < 200) { // 100 Continue and its kind: the answer follows
        this.headLength = rest.copy(this.head);
        continue;
      }
      x.inHead = false;
      const length = x.headers.get('content-length');
      if (/chunked/i.test(x.headers.get('transfer-encoding') ?? '')) {
        x.chunked = new ChunkedDecoder();
        x.remaining = -1;
      } else if (x.request.method === 'HEAD' || x.status === 204 || x.status === 304) x.remaining = 0;
      else if (length !== undefined) {
        x.remaining = Number(length);
        if (!Number.isSafeInteger(x.remaining) || x.remaining < 0) throw failure('EPROTO', `a bad Content-Length '${length}'`);
        const into = x.request.into;
        if (x.status < 300 && into && x.remaining > into.length) throw failure('EMSGSIZE', `the answer is ${x.remaining} bytes, longer than ${into.length}`);
      } else x.remaining = -2;
      this.body(x, rest);
      return;
    }
  }

  /** Body bytes that landed in the head buffer (or were left over after the head). */
  private body(x: Exchange, bytes: Buffer): void {
    if (x.chunked) return x.chunked.feed(bytes, (data) => x.take(data));
    const n = x.remaining >= 0 ? Math.min(bytes.length, x.remaining) : bytes.length;
    if (n < bytes.length) throw failure('EPROTO', 'the store sent more than the answer holds');
    x.take(bytes.subarray(0, n));
    if (x.remaining >= 0) x.remaining -= n;
  }

  private finish(x: Exchange): void {
    this.exchange = null;
    // A refusal may come before the whole body was sent: that connection is not in step any more.
    const keep = !/close/i.test(x.headers.get('connection') ?? '') && x.remaining !== -2 && !(x.status >= 300 && x.request.body);
    if (!keep) this.closed = true;
    this.done(this, keep);
    x.resolve({ status: x.status, headers: x.headers, length: x.status < 300 && x.request.into ? x.length : 0, text: x.text });
  }

  /** The socket failed or closed (each of its 'error', 'end' and 'close' comes here; the first counts). */
  private fail(error: unknown): void {
    if (this.closed) return;
    const x = this.exchange;
    if (x && x.remaining === -2 && !x.inHead) return this.finish(x); // a body that ends with the connection
    this.closed = true;
    this.exchange = null;
    this.done(this, false);
    if (x) x.reject(x.seen === 0 && this.used > 1 ? new StaleConnection(error) : error);
  }
}

/** A kept connection the server had closed: the request never reached it, and goes again on a new one. */
class StaleConnection extends Error {
  constructor(override readonly cause: unknown) {
    super('stale connection');
  }
}

export class HttpClient {
  private readonly idle: Connection[] = [];
  private open = 0;
  private readonly waiting: Array<() => void> = [];
  private destroyed = false;

  constructor(
    private readonly target: HttpTarget,
    private readonly sockets: number,
    private readonly connectMs = 5000,
  ) {}

  async send(request: HttpRequest): Promise<HttpAnswer> {
    for (let attempt = 0; ; attempt++) {
      const connection = await this.connection(request.signal, attempt > 0);
      try {
        return await this.exchange(connection, request);
      } catch (error) {
        if (!(error instanceof StaleConnection)) throw error;
        if (attempt > 0) throw error.cause;
      }
    }
  }

  destroy(): void {
    this.destroyed = true;
    for (const c of this.idle.splice(0)) c.close();
  }

  private exchange(connection: Connection, request: HttpRequest): Promise<HttpAnswer> {
    return new Promise<HttpAnswer>((resolve, reject) => {
      const abort = () => connection.destroy(request.signal.reason as Error);
      request.signal.addEventListener('abort', abort, { once: true });
      const settle = () => request.signal.removeEventListener('abort', abort);
      const answered = (answer: HttpAnswer) => (settle(), resolve(answer));
      const failed = (error: unknown) => (settle(), reject(request.signal.aborted ? request.signal.reason : error));
      connection.start(new Exchange(request, answered, failed));
    });
  }

  /** An idle connection, a new one if fewer than `sockets` are open, else the next one freed. */
  private async connection(signal: AbortSignal, fresh: boolean): Promise<Connection> {
    for (;;) {
      signal.throwIfAborted();
      if (this.destroyed) throw failure('ECONNABORTED', 'the store client was closed');
      // After a stale one, a new connection if there may be one: the other idle ones are as old.
      const kept = fresh && this.open < this.sockets ? undefined : this.idle.pop();
      if (kept) return kept;
      if (this.open < this.sockets) {
        this.open++;
        const connection = new Connection(this.target, (c, keep) => this.release(c, keep));
        await connection.ready(this.connectMs, signal); // a failure closes it, and release() counts it out
        return connection;
      }
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          signal.removeEventListener('abort', abort);
          resolve();
        };
        const abort = () => {
          this.waiting.splice(this.waiting.indexOf(wake) >>> 0, 1);
          reject(signal.reason);
        };
        signal.addEventListener('abort', abort, { once: true });
        this.waiting.push(wake);
      });
    }
  }

  /** A connection's exchange ended (keep: it may serve the next), or it closed (idle or not). */
  private release(connection: Connection, keep: boolean): void {
    const at = this.idle.indexOf(connection);
    if (at >= 0) this.idle.splice(at, 1);
    if (keep && !this.destroyed) {
      connection.socket.unref(); // an idle connection keeps no process alive
      this.idle.push(connection);
    } else {
      this.open--;
      connection.close();
    }
    this.waiting.shift()?.();
  }
}
