/**
 * A driver instance exported over NBD: no block device on this machine, just an NBD server that
 * any client can reach (qemu, libnbd's tools, fio's nbd engine, the kernel's nbd-client).
 * Requests go through the same request layer as on a local device.
 *
 * Life cycle: attributes checked, initialize, listen, onDeviceAvailable (default: print the
 * export's URI); close() stops accepting, answers the requests in progress, ends every
 * connection, then runs terminate. An abort (DriverAbort, an uncaught exception in runExport)
 * ends every connection at once, without terminate.
 */
import { adjustAttributes, type EffectiveAttributes } from '../driver/attributes.js';
import { isReadOnly, requestCallbacks } from '../driver/callbacks.js';
import type { Context, Driver } from '../driver/driver.js';
import { RequestLayer } from '../request/request-layer.js';
import { Outcome } from '../util/outcome.js';
import { untilClosed } from '../util/process.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import { DriverInstance, givenAttributes, type InstanceOptions } from '../instance/driver-instance.js';
import { BdusError } from '../driver/errors.js';
import { DEFAULT_LIMITS, exportLimits, type ExportLimits, type LimitSettings } from './limits.js';
import { NbdServer, type ListenAddress, type NbdTls } from './server.js';

export interface ExportOptions<State = unknown> extends InstanceOptions<State> {
  /** Where to listen: `{ unix: path }` or `{ host, port }` (port 0: any free one). */
  listen: ListenAddress;
  /** The export's name (default ""); clients asking for "" get it too. */
  name?: string;
  /** A description clients may ask for. */
  description?: string;
  /** TLS (STARTTLS); without it the export offers none. */
  tls?: TlsOptions;
  /** Who may connect and what a client may hold (default: DEFAULT_LIMITS, everyone who can reach it). */
  limits?: LimitSettings;
}

/** TLS for an export, with certificates or pre-shared keys as nbdkit and qemu-nbd take them. */
export interface TlsOptions {
  /**
   * A directory with server-cert.pem and server-key.pem (PEM), and ca-cert.pem to check client
   * certificates against (with verifyPeer). Either this or `psk`.
   */
  certificates?: string;
  /**
   * A file of pre-shared keys, one `identity:hexkey` per line (what GnuTLS's `psktool -u alice
   * -p FILE` writes, and nbdkit's --tls-psk and qemu's tls-creds-psk read). Either this or
   * `certificates`.
   */
  psk?: string;
  /** Refuse clients that do not start TLS (default false: TLS is offered, not required). */
  required?: boolean;
  /** Require a client certificate signed by ca-cert.pem (default false; certificates only). */
  verifyPeer?: boolean;
}

/**
 * Cipher suites for TLS-PSK up to TLS 1.2 (OpenSSL leaves PSK out by default); TLS 1.3 takes a
 * pre-shared key with its usual suites.
 */
const PSK_CIPHERS = 'ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256';

/** Shortest key accepted: psktool's default is 32 bytes; 16 is the least a key should have. */
const MIN_PSK_BYTES = 16;

/** Loads an export's TLS certificates or keys; a clear error naming the file that is missing or bad. */
export function loadTls(options: TlsOptions): NbdTls {
  if ((options.certificates === undefined) === (options.psk === undefined)) {
    throw new BdusError('EINVAL', 'TLS needs either certificates (a directory) or pre-shared keys (a file), not both and not neither');
  }
  const read = (path: string) => {
    try {
      return readFileSync(path);
    } catch (error) {
      throw new BdusError('EINVAL', `TLS: cannot read ${path}: ${(error as Error).message}`);
    }
  };
  const required = options.required ?? false;
  if (options.psk !== undefined) {
    if (options.verifyPeer) throw new BdusError('EINVAL', 'TLS: verifying a peer certificate needs certificates, not pre-shared keys');
    return { context: createSecureContext({ ciphers: PSK_CIPHERS }), keys: parsePskFile(options.psk, read(options.psk).toString('utf8')), required, verifyPeer: false };
  }
  const file = (name: string) => read(join(options.certificates!, name));
  let context;
  try {
    context = createSecureContext({
      cert: file('server-cert.pem'),
      key: file('server-key.pem'),
      ...(options.verifyPeer ? { ca: file('ca-cert.pem') } : {}),
    });
  } catch (error) {
    if (error instanceof BdusError) throw error;
    throw new BdusError('EINVAL', `TLS: the certificates in ${options.certificates} are unusable: ${(error as Error).message}`);
  }
  return { context, required, verifyPeer: options.verifyPeer ?? false };
}

/** `identity:hexkey` lines (blank lines and # comments skipped) -> keys by identity. */
export function parsePskFile(path: string, text: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.lastIndexOf(':');
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^([0-9a-fA-F]{2})+$/.test(hex) || hex.length / 2 < MIN_PSK_BYTES) {
      throw new BdusError('EINVAL', `TLS: ${path} line ${i + 1}: expected identity:hexkey with a key of at least ${MIN_PSK_BYTES} bytes (psktool -u NAME -p ${path})`);
    }
    keys.set(identity, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new BdusError('EINVAL', `TLS: ${path} has no keys (psktool -u NAME -p ${path} makes one)`);
  return keys;
}

/** The URI clients use: nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME (nbds when TLS is required). */
export function exportUri(address: ListenAddress, name: string, tlsRequired = false): string {
  const path = encodeURIComponent(name);
  const scheme = tlsRequired ? 'nbds' : 'nbd';
  if ('unix' in address) return `${scheme}+unix:///${path}?socket=${address.unix}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `${scheme}://${host}:${address.port}/${path}`;
}

export class Export<State = unknown> {
  /** Settles when the export has ended: resolves after close(), rejects with an abort's reason. */
  readonly closed: Promise<void>;
  private readonly outcome = new Outcome();
  private ending: Promise<void> | undefined;

  readonly ctx: Context<State>;
  private readonly requests: RequestLayer;

  /** @internal use startExport() */
  constructor(
    private readonly instance: DriverInstance<State>,
    readonly uri: string,
    readonly address: ListenAddress,
    private readonly server: NbdServer,
  ) {
    this.ctx = instance.ctx;
    this.requests = instance.requests;
    this.closed = this.outcome.promise;
  }

  get attributes(): EffectiveAttributes {
    return this.ctx.attributes;
  }

  /** Stops the export normally: requests in progress are answered, then terminate runs. */
  close(): Promise<void> {
    this.ending ??= (async () => {
      try {
        await this.server.close();
        await this.requests.drain();
        await this.instance.terminate();
        this.outcome.resolve();
      } catch (error) {
        this.outcome.reject(error as Error);
      }
    })();
    return this.closed;
  }

  /** Ends the driver abnormally: waiting requests fail, every connection ends, no terminate. */
  abort(reason: Error): Promise<void> {
    this.ending ??= (async () => {
      this.requests.abortAll();
      await this.server.close({ now: true });
      this.outcome.reject(reason);
    })();
    return this.closed;
  }
}

/** An NBD server for one driver instance, through its request layer (not listening yet). */
export function exportServer(
  driver: Driver<any>,
  ctx: Pick<Context, 'attributes' | 'readOnly'>,
  requests: RequestLayer,
  log: (line: string) => void,
  options: { name?: string; description?: string; tls?: NbdTls | undefined; limits?: ExportLimits | undefined },
): NbdServer {
  return new NbdServer({
    name: options.name ?? '',
    description: options.description ?? '',
    attributes: ctx.attributes,
    readOnly: ctx.readOnly,
    callbacks: requestCallbacks(driver),
    requests,
    log,
    tls: options.tls,
    limits: options.limits ?? DEFAULT_LIMITS,
  });
}

/** Starts exporting `driver` and resolves once it listens (after onDeviceAvailable). */
export async function startExport<State>(driver: Driver<State>, options: ExportOptions<State>): Promise<Export<State>> {
  const given = givenAttributes(driver, options);
  const attributes = adjustAttributes(given, driver);
  const tls = options.tls ? loadTls(options.tls) : undefined;
  const limits = exportLimits(options.limits);
  const name = options.name ?? '';
  const log = options.log ?? ((line: string) => process.stderr.write(`bdus export: ${line}\n`));
  const ctx: Context<State> = {
    id: 0n,
    index: -1,
    path: exportUri(options.listen, name, tls?.required),
    kernelPath: '',
    major: 0,
    minor: 0,
    attributes,
    isRerun: false,
    readOnly: isReadOnly(driver),
    state: options.state as State,
  };
  let exported: Export<State> | undefined;
  const instance = new DriverInstance(driver, ctx, log, (error) => void exported?.abort(error), given);
  await instance.validate();
  await instance.initialize();
  const server = exportServer(driver, ctx, instance.requests, log, { ...options, tls, limits });
  let address: ListenAddress;
  try {
    address = await server.listen(options.listen);
  } catch (error) {
    await instance.unwind();
    throw error;
  }
  Object.assign(ctx, { path: exportUri(address, name, tls?.required) });
  exported = new Export(instance, ctx.path, address, server);
  try {
    await instance.announce();
  } catch (error) {
    await exported.close().catch(() => undefined);
    throw error;
  }
  return exported;
}

/**
 * Exports `driver` until SIGTERM or SIGINT (a normal close) or an abort (an uncaught exception
 * aborts too). Resolves after a normal close; rejects with the reason otherwise.
 */
export async function runExport<State>(driver: Driver<State>, options: ExportOptions<State>): Promise<void> {
  const exported = await startExport(driver, options);
  await untilClosed(
    exported.closed,
    () => void exported.close(),
    (error) => void exported.abort(error),
  );
}
