/**
 * Reaching an NBD server for the client (client.ts): where it is, from an NBD URI, the socket,
 * and TLS (certificates or a pre-shared key) after STARTTLS.
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions as TlsConnectionOptions } from 'node:tls';
import { DriverError } from '../driver/errors.js';
import type { SocketReads } from './input.js';

/** Where an NBD server is, as an NBD URI says (nbd://, nbds://, nbd+unix://, nbds+unix://). */
export interface NbdTarget {
  readonly address: { unix: string } | { host: string; port: number };
  readonly name: string;
  readonly tls: boolean;
}

export interface NbdClientOptions {
  /** A directory with ca-cert.pem (and client-cert.pem, client-key.pem), as nbdkit's --tls-certificates. */
  readonly tlsCertificates?: string;
  /** A psktool file (identity:hexkey lines): TLS-PSK instead of certificates. */
  readonly tlsPsk?: string;
  /** The PSK identity to use from that file (the URI's user name); default its first. */
  readonly tlsUsername?: string;
  /** Give up connecting after this long (default 10 s). */
  readonly connectTimeoutMs?: number;
}

/**
 * nbd://host:port/name and friends (the NBD URI specification) -> a target, with the URI's user
 * name and query (tls-certificates=, tls-psk-file=, socket=). Parsed by hand: a URL parser
 * refuses `nbds+unix://alice@/`, a user name without a host.
 */
export function parseNbdUri(text: string): NbdTarget & { readonly user: string; readonly query: URLSearchParams } {
  const match = /^(nbds?(?:\+unix)?):\/\/(?:([^@/?]*)@)?(\[[^\]]*\]|[^/?:]*)(?::(\d+))?(\/[^?]*)?(?:\?(.*))?$/.exec(text);
  if (!match) {
    throw new DriverError('EINVAL', `'${text}' is not an NBD URI (nbd://HOST[:PORT]/[NAME], nbd+unix:///[NAME]?socket=PATH, nbds:// for TLS)`);
  }
  const [, scheme, user = '', host = '', port, path = '', search = ''] = match;
  const query = new URLSearchParams(search);
  const tls = scheme!.startsWith('nbds');
  const name = decodeURIComponent(path.replace(/^\//, ''));
  const common = { name, tls, user: decodeURIComponent(user), query };
  if (scheme!.endsWith('+unix')) {
    const socket = query.get('socket');
    if (!socket) throw new DriverError('EINVAL', `${text}: a Unix socket URI needs ?socket=PATH`);
    return { ...common, address: { unix: socket } };
  }
  if (host === '') throw new DriverError('EINVAL', `${text}: no host`);
  return { ...common, address: { host: host.replace(/^\[|\]$/g, ''), port: Number(port ?? 10809) } };
}

/** A connected socket to `target`; with `onread` (input.ts's readsInto), it reads into those buffers and emits no 'data'. */
export function openSocket(target: NbdTarget, timeoutMs: number, onread?: SocketReads): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const reads = onread ? { onread } : {};
    const socket = 'unix' in target.address
      ? netConnect({ path: target.address.unix, ...reads })
      : netConnect({ port: target.address.port, host: target.address.host, ...reads });
    const where = 'unix' in target.address ? target.address.unix : `${target.address.host}:${target.address.port}`;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new DriverError('ETIMEDOUT', `no NBD server answered at ${where} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new DriverError('ENOLINK', `cannot connect to the NBD server at ${where}: ${error.message}`));
    });
  });
}

export async function startTls(socket: Socket, target: NbdTarget, options: NbdClientOptions): Promise<Socket> {
  const settings: TlsConnectionOptions = { socket, servername: 'host' in target.address ? target.address.host : undefined };
  if (options.tlsPsk) {
    const lines = readFileSync(options.tlsPsk, 'utf8').trim().split('\n');
    const line = options.tlsUsername ? lines.find((l) => l.startsWith(`${options.tlsUsername}:`)) : lines[0];
    if (!line) throw new DriverError('EINVAL', `${options.tlsPsk} has no key for '${options.tlsUsername}'`);
    const [identity, key] = line.split(':');
    Object.assign(settings, {
      pskCallback: () => ({ identity: identity!, psk: Buffer.from(key!, 'hex') }),
      ciphers: 'PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256',
      maxVersion: 'TLSv1.2',
      checkServerIdentity: () => undefined,
    });
  } else if (options.tlsCertificates) {
    const dir = options.tlsCertificates;
    settings.ca = readFileSync(`${dir}/ca-cert.pem`);
    try {
      settings.cert = readFileSync(`${dir}/client-cert.pem`);
      settings.key = readFileSync(`${dir}/client-key.pem`);
    } catch {
      // no client certificate: the server may not ask for one
    }
  }
  return new Promise((resolve, reject) => {
    const secure = tlsConnect(settings, () => resolve(secure));
    secure.once('error', (error) => reject(new DriverError('ENOLINK', `TLS with the NBD server failed: ${error.message}`)));
  });
}
