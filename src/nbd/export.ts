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
import { DriverInstance, givenAttributes, type InstanceOptions } from '../instance/driver-instance.js';
import { checkRecipe, Lanes, type DriverRecipe } from '../lane/lanes.js';
import { EXPORT_LANES, type ExportLaneShare } from './lane.js';
import { DEFAULT_LIMITS, exportLimits, type ExportLimits, type LimitSettings } from './limits.js';
import { NbdServer, type ConnectionSpread, type ListenAddress, type NbdTls } from './server.js';
import { loadTls, type TlsOptions } from './tls.js';

export { loadTls, parsePskFile, type TlsOptions } from './tls.js';

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
  /**
   * How another thread makes the same driver, for the `lanes` attribute (src/nbd/lane.ts: each
   * connection is served by one lane); the CLI fills it in.
   */
  recipe?: DriverRecipe;
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
    private readonly lanes: Lanes | undefined,
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
        // Each lane answers what its connections sent, ends them and terminates its instance.
        const failures = (await this.lanes?.stop(this.ctx.attributes.requestTimeout, this.requests.counters.slots)) ?? [];
        await this.requests.drain();
        await this.instance.terminate();
        if (failures.length > 0) throw new Error(`a lane's terminate failed: ${failures[0]}`);
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
      // Accepting stops first: no connection is handed to a lane that is being ended.
      await this.server.close({ now: true });
      await this.lanes?.kill();
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
  options: { name?: string; description?: string; tls?: NbdTls | undefined; limits?: ExportLimits | undefined; spread?: ConnectionSpread | undefined },
): NbdServer {
  return new NbdServer(
    {
      name: options.name ?? '',
      description: options.description ?? '',
      attributes: ctx.attributes,
      readOnly: ctx.readOnly,
      callbacks: requestCallbacks(driver),
      requests,
      log,
      tls: options.tls,
      limits: options.limits ?? DEFAULT_LIMITS,
    },
    options.spread,
  );
}

/**
 * Accepted connections to the lanes in turn, this thread (lane 0) first: a client with one
 * connection is served as without lanes, with no thread between (it was lane 1's once, and its
 * QD1 latency was 58 against 50 us). `open` counts the lanes' connections (ExportLaneShare).
 */
function lanesSpread(count: number, lanes: Lanes, open: Int32Array): ConnectionSpread {
  let turn = 0;
  return {
    next: () => {
      const lane = turn;
      turn = (turn + 1) % count;
      return lane;
    },
    deliver: (lane, fd) => {
      Atomics.add(open, 0, 1);
      lanes.deliver(lane, { fd });
    },
    elsewhere: () => Atomics.load(open, 0),
  };
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
    ...(attributes.lanes > 1 ? { lane: 0 } : {}),
  };
  checkRecipe(attributes.lanes, options.recipe, '`bdus export`');
  let exported: Export<State> | undefined;
  /** A lane's or the driver's abort before the export exists. */
  let early: Error | undefined;
  const abort = (error: Error) => void (exported ? exported.abort(error) : (early ??= error));
  const instance = new DriverInstance(driver, ctx, log, abort, given);
  await instance.validate();
  await instance.initialize();
  let lanes: Lanes | undefined;
  let address: ListenAddress;
  let server: NbdServer;
  try {
    let spread: ConnectionSpread | undefined;
    if (attributes.lanes > 1) {
      const open = new Int32Array(new SharedArrayBuffer(4));
      const share: ExportLaneShare = {
        name,
        description: options.description ?? '',
        attributes,
        readOnly: ctx.readOnly,
        callbacks: requestCallbacks(driver),
        limits: { handshakeTimeoutMs: limits.handshakeTimeoutMs, maxConnections: limits.maxConnections, connectionMemory: limits.connectionMemory },
        ...(options.tls ? { tls: options.tls } : {}),
        open,
      };
      const started = await Lanes.start(attributes.lanes, options.recipe!, EXPORT_LANES, share, driver.laneShare?.(ctx), ctx, log, abort);
      lanes = started;
      spread = lanesSpread(attributes.lanes, started, open);
    }
    server = exportServer(driver, ctx, instance.requests, log, { ...options, tls, limits, spread });
    address = await server.listen(options.listen);
    if (early) throw early;
  } catch (error) {
    await lanes?.kill();
    await instance.unwind();
    throw error;
  }
  Object.assign(ctx, { path: exportUri(address, name, tls?.required) });
  exported = new Export(instance, ctx.path, address, server, lanes);
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
