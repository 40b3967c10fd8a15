/**
 * The control-plane daemon: one per machine, the role BDUS's kernel module plays for devices.
 * This file is its socket and dispatch: messages are checked against their schema (schema.ts)
 * and handed to where a device's life is decided (devices.ts).
 *
 * It owns the registry (ids, indexes, states), the /dev/bdus-N paths, the watch on every driver
 * process, and the clean-up of devices whose driver ended. It is never on a request's path: the
 * driver process talks to the kernel directly, so devices keep serving I/O while the daemon is
 * down, and a restarted daemon picks up its registry from RUN_DIR and carries on.
 *
 * How it learns that a driver ended: each driver holds one control connection per device. The
 * kernel closes it when the process dies, however it dies (return, abort, uncaught exception,
 * SIGKILL), so the end of the connection is the end of the driver. A driver that was running
 * before a daemon restart has no connection until it re-attaches; meanwhile the daemon checks
 * that its process still exists every WATCH_INTERVAL_MS.
 *
 * Recovery: the daemon keeps a duplicate of every device's kernel end (for FUSE+loop, the
 * /dev/fuse file; for kernel NBD, the driver's end of the socket), so the device outlives its
 * driver. When a recoverable device's driver dies, the device stays until a new driver attaches
 * with `rerun`: on FUSE+loop the keeper (frontend/fuse/keeper.ts) reads its requests meanwhile;
 * on kernel NBD the daemon closes the socket and the kernel holds them. A non-recoverable device
 * is removed, its duplicate closed first so that clients get EIO at once. A rerun of a live
 * driver has the old driver hand over first.
 *
 * Stuck drivers (an event loop that never returns): watchdog.ts, on the same interval.
 *
 * One lock orders device creation, destruction and every registry change, as in BDUS.
 */
import { chmodSync, closeSync, mkdirSync, openSync, rmSync } from 'node:fs';
import type { Server as HttpServer } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { BdusError } from '../driver/errors.js';
import { native } from '../native.js';
import { RUN_DIR } from '../util/paths.js';
import { packageVersion } from '../version.js';
import { Devices } from './devices.js';
import { Connection } from './holding.js';
import { DEFAULT_MAX_DEVICES, LineReader, LOCK_PATH, PROTOCOL_VERSION, SOCKET_PATH, type DeviceRecord, type DeviceStatsEntry, type Requests } from './protocol.js';
import { Registry } from './registry.js';
import { Watchdog } from './watchdog.js';
import { argsOf, checkMessage, type CheckedMessage } from './schema.js';
import type { MetricsAddress } from '../stats/metrics-address.js';
import { readStats } from '../stats/snapshot.js';

const WATCH_INTERVAL_MS = 500;

/** The statistics of these devices, as `stats` answers (read from their files, never from a driver). */
function deviceStats(records: readonly DeviceRecord[]): DeviceStatsEntry[] {
  return records.map((record) => ({ record, stats: readStats(record.id) ?? null, takenAt: Date.now() }));
}

export interface DaemonOptions {
  /** Most devices at once (default 256). */
  maxDevices?: number;
  /** Where the daemon's log lines go. */
  log?: (line: string) => void;
  /** Serve Prometheus metrics here (src/stats/metrics.ts). */
  metrics?: MetricsAddress;
}

export class Daemon {
  /** Resolves once the daemon has stopped. */
  readonly stopped: Promise<void>;
  private resolveStopped!: () => void;
  private readonly registry: Registry;
  private readonly devices: Devices;
  private readonly watchdog: Watchdog;
  private readonly connections = new Set<Connection>();
  private readonly log: (line: string) => void;
  private server: Server | undefined;
  private metricsServer: HttpServer | undefined;
  private readonly metrics: MetricsAddress | undefined;
  private watch: NodeJS.Timeout | undefined;
  private lockFd = -1;

  private constructor(options: DaemonOptions) {
    this.registry = new Registry(options.maxDevices ?? DEFAULT_MAX_DEVICES);
    this.log = options.log ?? ((line) => process.stderr.write(`${new Date().toISOString()} bdus-daemon: ${line}\n`));
    this.devices = new Devices(this.registry, this.log);
    this.watchdog = new Watchdog(this.log);
    this.metrics = options.metrics;
    this.stopped = new Promise((resolve) => (this.resolveStopped = resolve));
  }

  /** Starts the daemon; EALREADY if another one runs on this machine. */
  static async start(options: DaemonOptions = {}): Promise<Daemon> {
    const daemon = new Daemon(options);
    await daemon.listen();
    return daemon;
  }

  get maxDevices(): number {
    return this.registry.maxDevices;
  }

  private async listen(): Promise<void> {
    mkdirSync(RUN_DIR, { recursive: true, mode: 0o700 });
    chmodSync(RUN_DIR, 0o700);
    this.lockFd = openSync(LOCK_PATH, 'a', 0o600);
    if (!native.tryLock(this.lockFd)) {
      closeSync(this.lockFd);
      throw new BdusError('EALREADY', 'a bdus daemon is already running on this machine');
    }
    if (this.metrics) {
      const { host, port } = this.metrics;
      try {
        // Loaded only here: every other bdus command starts without prom-client.
        const { deviceMetrics, serveMetrics } = await import('../stats/metrics.js');
        this.metricsServer = await serveMetrics(this.metrics, deviceMetrics(() => deviceStats(this.registry.list())));
      } catch (error) {
        closeSync(this.lockFd);
        throw new BdusError((error as NodeJS.ErrnoException).code ?? 'EIO', `cannot serve metrics at ${host}:${port}: ${(error as Error).message}`);
      }
      this.log(`metrics at http://${host.includes(':') ? `[${host}]` : host}:${port}/metrics`);
    }
    const known = this.registry.load();
    for (const record of known) this.log(`recovered device ${record.id} (${record.path}, ${record.state}, driver pid ${record.pid})`);

    // Only the lock holder gets here, so a socket file left by a dead daemon is safe to replace.
    rmSync(SOCKET_PATH, { force: true });
    const server = createServer((socket) => this.accept(socket));
    this.server = server;
    const umask = process.umask(0o077); // the socket is born root-only: no window before chmod
    try {
      await new Promise<void>((resolve, reject) => server.once('error', reject).listen(SOCKET_PATH, resolve));
    } finally {
      process.umask(umask);
    }
    chmodSync(SOCKET_PATH, 0o600);
    server.on('error', (error) => this.log(`control socket: ${error.message}`));
    this.watch = setInterval(() => {
      this.devices.watchDetached();
      this.watchdog.check(this.registry.list(), (id) => this.devices.serving(id));
    }, WATCH_INTERVAL_MS);
    this.log(`listening on ${SOCKET_PATH} (pid ${process.pid}, at most ${this.maxDevices} devices)`);
  }

  /** Stops serving the control socket. Devices keep running; their drivers re-attach to the next daemon. */
  async stop(): Promise<void> {
    if (!this.server) return this.stopped;
    const server = this.server;
    this.server = undefined;
    clearInterval(this.watch);
    this.metricsServer?.close();
    this.metricsServer?.closeAllConnections();
    for (const connection of this.connections) connection.socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    rmSync(SOCKET_PATH, { force: true });
    closeSync(this.lockFd);
    this.log('stopped');
    this.resolveStopped();
  }

  // ---- Connections and messages ---------------------------------------------------------------

  private accept(socket: Socket): void {
    const connection = new Connection(socket);
    this.connections.add(connection);
    const reader = new LineReader(
      (line) => void this.handle(connection, line),
      () => {
        connection.send({ seq: -1, ok: false, code: 'EMSGSIZE', message: 'message too long; closing the connection' });
        socket.end();
      },
    );
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => reader.push(chunk));
    socket.on('error', () => undefined); // a client that vanished; 'close' follows
    socket.on('close', () => {
      this.connections.delete(connection);
      // A daemon that stops closes every connection itself: that is not the end of the drivers,
      // which keep serving and re-attach to the next daemon.
      if (this.server) this.devices.connectionClosed(connection);
    });
  }

  private async handle(connection: Connection, line: string): Promise<void> {
    let message: CheckedMessage;
    try {
      message = checkMessage(line);
    } catch (error) {
      const { seq = -1, code } = error as BdusError & { seq?: number };
      connection.send({ seq, ok: false, code, message: (error as Error).message });
      return;
    }
    try {
      const result = await this.dispatch(connection, message);
      connection.send({ seq: message.seq, ok: true, result: result ?? null });
    } catch (error) {
      const known = error instanceof BdusError;
      if (!known) this.log(`${message.op} failed: ${(error as Error).stack ?? String(error)}`);
      connection.send({ seq: message.seq, ok: false, code: known ? error.code : 'EIO', message: (error as Error).message });
    }
  }

  private async dispatch(connection: Connection, m: CheckedMessage): Promise<unknown> {
    switch (m.op) {
      case 'version':
        return {
          version: packageVersion(),
          protocol: PROTOCOL_VERSION,
          pid: process.pid,
          maxDevices: this.maxDevices,
          ...(this.metrics ? { metrics: `${this.metrics.host}:${this.metrics.port}` } : {}),
        } satisfies Requests['version']['result'];
      case 'list':
        return this.registry.list();
      case 'info': {
        const { id, major, minor } = m.args as { id?: string; major?: number; minor?: number };
        if (id !== undefined) return this.registry.get(id);
        if (major === undefined || minor === undefined) throw new BdusError('EINVAL', 'info: give "id", or "major" and "minor"');
        const record = this.registry.byDeviceNumber(major, minor);
        if (!record) throw new BdusError('ENODEV', `block device ${major}:${minor} is not a bdus device`);
        return record;
      }
      case 'destroy': {
        const { id, force } = argsOf(m, 'destroy');
        return this.devices.destroy(this.registry.get(id), force ?? false);
      }
      case 'wait':
        return this.registry.untilGone(argsOf(m, 'wait').id);
      case 'shutdown':
        setImmediate(() => void this.stop());
        return null;
      case 'create':
        return this.devices.create(connection, m);
      case 'available':
        return this.devices.available(this.devices.owned(connection, m), m);
      case 'laneEnds':
        return this.devices.laneEnds(this.devices.owned(connection, m), m);
      case 'terminating': {
        const record = this.devices.owned(connection, m);
        return this.devices.lock.run(() => this.devices.beginTermination(record));
      }
      case 'gone':
        return this.devices.gone(connection, m);
      case 'attach':
        return this.devices.attach(connection, m);
      case 'rerun':
        return this.devices.rerun(connection, m);
      case 'handover':
        return this.devices.handover(connection, m);
      case 'resize': {
        const { id, size } = argsOf(m, 'resize');
        return this.devices.resize(this.registry.get(id), size);
      }
      case 'resized':
        return this.devices.resized(connection, m);
      case 'stats': {
        const { id } = argsOf(m, 'stats');
        return deviceStats(id === undefined ? this.registry.list() : [this.registry.get(id)]);
      }
      default:
        throw new BdusError('EINVAL', `unknown operation ${JSON.stringify(m.op)}`);
    }
  }
}
