/**
 * The control-plane daemon: one per machine, the role BDUS's kernel module plays for devices.
 * Where a device's life is decided.
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
 * One lock orders device creation, destruction and every registry change, as in BDUS.
 */
import { chmodSync, closeSync, lstatSync, mkdirSync, openSync, rmSync, symlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { checkReplacement } from '../driver/attributes.js';
import { BdusError } from '../driver/errors.js';
import type { Keeper, KeeperMode } from '../frontend/frontend.js';
import { frontendKind } from '../frontend/kinds.js';
import { native } from '../native.js';
import { Lock } from '../util/lock.js';
import { deviceHolders } from './holders.js';
import { appendDeviceLog, pruneDeviceLogs } from '../util/device-log.js';
import { RUN_DIR } from '../util/paths.js';
import { isAlive, processStart } from '../util/process.js';
import { packageVersion } from '../version.js';
import {
  DEFAULT_MAX_DEVICES,
  encode,
  LineReader,
  LOCK_PATH,
  PROTOCOL_VERSION,
  SOCKET_PATH,
  type DaemonEvent,
  type DeviceRecord,
  type Requests,
} from './protocol.js';
import { Registry } from './registry.js';
import { argsOf, checkMessage, type CheckedMessage } from './schema.js';

const WATCH_INTERVAL_MS = 500;

export interface DaemonOptions {
  /** Most devices at once (default 256). */
  maxDevices?: number;
  /** Where the daemon's log lines go. */
  log?: (line: string) => void;
}

/** One client connection; `device` is set when a driver runs that device through it. */
class Connection {
  device: string | undefined;
  constructor(readonly socket: Socket) {}

  send(message: object): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(encode(message));
  }
}

type Handover = Requests['handover']['args'] | undefined;

/** What the daemon holds for a device besides its record, for as long as the daemon runs. */
interface Holding {
  /** The daemon's duplicate of the device's kernel end, or -1. */
  fd: number;
  /** Keeps the device while it has no driver, where its frontend needs one (FUSE+loop's keeper). */
  keeper: Keeper | undefined;
  /** The device has no driver and waits for a rerun. */
  orphaned: boolean;
  /** The pid of a driver whose rerun is in progress, or 0. */
  replacing: number;
  /** While the current driver hands over: takes its answer (undefined if it died instead). */
  handover: ((result: Handover) => void) | undefined;
  /** A driver died and no driver has served the device since. */
  recovering: boolean;
  /** Drivers that failed during this recovery (seed 000's recovery limit). */
  failures: number;
}


export class Daemon {
  /** Resolves once the daemon has stopped. */
  readonly stopped: Promise<void>;
  private resolveStopped!: () => void;
  private readonly registry: Registry;
  private readonly lock = new Lock();
  private readonly drivers = new Map<string, Connection>();
  private readonly holdings = new Map<string, Holding>();
  /** Devices being resized: takes their driver's answer. */
  private readonly resizing = new Map<string, (answer: Omit<Requests['resized']['args'], 'id'>) => void>();
  private readonly connections = new Set<Connection>();
  private readonly log: (line: string) => void;
  private server: Server | undefined;
  private watch: NodeJS.Timeout | undefined;
  private lockFd = -1;

  private constructor(options: DaemonOptions) {
    this.registry = new Registry(options.maxDevices ?? DEFAULT_MAX_DEVICES);
    this.log = options.log ?? ((line) => process.stderr.write(`${new Date().toISOString()} bdus-daemon: ${line}\n`));
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
    this.watch = setInterval(() => this.watchDetached(), WATCH_INTERVAL_MS);
    this.log(`listening on ${SOCKET_PATH} (pid ${process.pid}, at most ${this.maxDevices} devices)`);
  }

  /** Stops serving the control socket. Devices keep running; their drivers re-attach to the next daemon. */
  async stop(): Promise<void> {
    if (!this.server) return this.stopped;
    const server = this.server;
    this.server = undefined;
    clearInterval(this.watch);
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
      const id = connection.device;
      if (id === undefined || this.drivers.get(id) !== connection) return;
      this.drivers.delete(id);
      const record = this.registry.find(id);
      if (!record) return;
      const holding = this.holdings.get(id);
      if (holding?.handover) return holding.handover(undefined); // the rerun decides
      this.log(`the driver of device ${id} (${record.path}, pid ${record.pid}) ended`);
      void this.driverDied(record);
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
        return { version: packageVersion(), protocol: PROTOCOL_VERSION, pid: process.pid, maxDevices: this.maxDevices } satisfies Requests['version']['result'];
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
        return this.destroy(this.registry.get(id), force ?? false);
      }
      case 'wait':
        return this.registry.untilGone(argsOf(m, 'wait').id);
      case 'shutdown':
        setImmediate(() => void this.stop());
        return null;
      case 'create':
        return this.create(connection, m);
      case 'available':
        return this.available(this.owned(connection, m), m);
      case 'terminating':
        return this.lock.run(() => this.beginTermination(this.owned(connection, m)));
      case 'gone': {
        const record = this.owned(connection, m);
        connection.device = undefined;
        this.drivers.delete(record.id);
        return this.driverGone(record);
      }
      case 'attach':
        return this.attach(connection, m);
      case 'rerun':
        return this.rerun(connection, m);
      case 'handover': {
        const record = this.owned(connection, m);
        const holding = this.holdings.get(record.id);
        if (!holding?.handover) throw new BdusError('EINVAL', `device ${record.id} is not being replaced`);
        connection.device = undefined;
        this.drivers.delete(record.id);
        holding.handover(argsOf(m, 'handover'));
        return null;
      }
      case 'resize': {
        const { id, size } = argsOf(m, 'resize');
        return this.resize(this.registry.get(id), size);
      }
      case 'resized': {
        const record = this.owned(connection, m);
        const answer = this.resizing.get(record.id);
        if (!answer) throw new BdusError('EINVAL', `device ${record.id} is not being resized`);
        answer(argsOf(m, 'resized'));
        return null;
      }
      default:
        throw new BdusError('EINVAL', `unknown operation ${JSON.stringify(m.op)}`);
    }
  }

  /**
   * Has the device's driver resize it (its callback, then the kernel), and keeps the new size in
   * the record: what a later driver must fit, and what the keeper shows while none runs.
   */
  private async resize(record: DeviceRecord, size: number): Promise<DeviceRecord> {
    const driver = this.drivers.get(record.id);
    if (record.state !== 'available' || !driver) {
      throw new BdusError('EAGAIN', `${record.path} has no driver serving it right now (${record.state === 'available' ? 'waiting for bdus rerun' : record.state}): resize it once one does`);
    }
    if (this.resizing.has(record.id)) throw new BdusError('EBUSY', `${record.path} is already being resized`);
    type Answer = Requests['resized']['args'] | undefined;
    const answer = await new Promise<Omit<NonNullable<Answer>, 'id'> | undefined>((resolve) => {
      const died = () => resolve(undefined);
      driver.socket.once('close', died);
      this.resizing.set(record.id, (result) => {
        driver.socket.off('close', died);
        resolve(result);
      });
      driver.send({ event: 'resize', size } satisfies DaemonEvent);
    }).finally(() => this.resizing.delete(record.id));
    if (!answer) throw new BdusError('ESRCH', `the driver of ${record.path} ended while resizing it`);
    if (!answer.ok) throw new BdusError('EINVAL', `${record.path} keeps its size (${record.attributes.size} bytes): ${answer.message}`);
    if (this.registry.has(record)) {
      record.attributes = { ...record.attributes, size: answer.size };
      this.registry.update(record);
      this.log(`device ${record.id} resized to ${answer.size} bytes`);
    }
    return record;
  }

  // ---- Life cycle -----------------------------------------------------------------------------

  private create(connection: Connection, m: CheckedMessage): Promise<DeviceRecord> {
    if (connection.device !== undefined) throw new BdusError('EBUSY', 'this connection already runs a device');
    const { pid, frontend, readOnly, attributes, callbacks, command = [] } = argsOf(m, 'create');
    const pidStart = processStart(pid);
    if (pidStart === undefined) throw new BdusError('ESRCH', `no process ${pid}`);
    const fields = { pid, pidStart, frontend: frontendKind(frontend).name, readOnly, attributes, callbacks, command };
    return this.lock.run(() => {
      const record = this.registry.create(fields);
      pruneDeviceLogs(new Set(this.registry.list().map((r) => r.id)));
      connection.device = record.id;
      this.drivers.set(record.id, connection);
      this.log(`created device ${record.id} at ${record.path} for driver pid ${pid}`);
      return record;
    });
  }

  private available(record: DeviceRecord, m: CheckedMessage): Promise<DeviceRecord> {
    const { kernelPath, major, minor, kernelFd } = argsOf(m, 'available');
    if (!kernelPath.startsWith('/dev/')) throw new BdusError('EINVAL', `kernelPath must be a node under /dev, not ${kernelPath}`);
    return this.lock.run(() => {
      const holding = this.holding(record.id);
      if (record.state === 'available' && holding.replacing === 0) {
        // A replacement driver serves the device now: a recovery, if one was going on, is over.
        holding.recovering = false;
        holding.failures = 0;
        this.keepKernelEnd(record, kernelFd); // a new socket, if the last driver died (kernel NBD)
        this.log(`device ${record.id} is served by driver pid ${record.pid}`);
        return record;
      }
      if (record.state !== 'initialized') throw new BdusError('EINVAL', `device ${record.id} is ${record.state}, not initialized`);
      this.keepKernelEnd(record, kernelFd);
      Object.assign(record, { kernelPath, major, minor, state: 'available' });
      rmSync(record.path, { force: true });
      symlinkSync(kernelPath, record.path);
      this.registry.update(record);
      this.log(`device ${record.id} is available at ${record.path} -> ${kernelPath}`);
      return record;
    });
  }

  private attach(connection: Connection, m: CheckedMessage): DeviceRecord {
    const { id, pid, kernelFd } = argsOf(m, 'attach');
    const record = this.registry.get(id);
    if (pid !== record.pid) throw new BdusError('EPERM', `device ${record.id} is run by pid ${record.pid}`);
    if (this.drivers.has(record.id)) throw new BdusError('EBUSY', `device ${record.id} already has a driver connection`);
    if (connection.device !== undefined) throw new BdusError('EBUSY', 'this connection already runs a device');
    connection.device = record.id;
    this.drivers.set(record.id, connection);
    if (record.state === 'available' && kernelFd !== undefined) this.keepKernelEnd(record, kernelFd);
    this.log(`the driver of device ${record.id} (pid ${record.pid}) re-attached`);
    // A destroy asked for while the driver was detached is delivered now.
    if (record.state === 'terminated') setImmediate(() => connection.send({ event: 'destroy' } satisfies DaemonEvent));
    return record;
  }

  /**
   * Destroys a device: its path goes at once (md's rule: an open racing with destruction fails
   * cleanly instead of reaching a half-destroyed device), its driver is asked to end, and this
   * resolves once the device is gone. Concurrent destroys of one device all wait for the one end.
   */
  private async destroy(record: DeviceRecord, force: boolean): Promise<null> {
    if (!force && record.state === 'available') {
      const holders = await deviceHolders(record.major, record.minor, new Set([record.pid]));
      if (holders.length > 0) {
        throw new BdusError('EBUSY', `${record.path} is in use: ${holders.join('; ')}. Unmount or close it first, or destroy it anyway with --force (its users then get I/O errors)`);
      }
    }
    const gone = this.registry.untilGone(record.id);
    await this.lock.run(() => this.beginTermination(record));
    const driver = this.drivers.get(record.id);
    if (driver) driver.send({ event: 'destroy' } satisfies DaemonEvent);
    else if (!isAlive(record.pid, record.pidStart)) await this.driverGone(record);
    // Otherwise the driver runs but has not re-attached since a daemon restart: it gets the
    // destroy event when it does.
    await gone;
    return null;
  }

  private beginTermination(record: DeviceRecord): null {
    if (record.state === 'terminated' || !this.registry.has(record)) return null;
    record.state = 'terminated';
    removeLink(record);
    this.registry.update(record);
    return null;
  }

  /** The driver has ended (or said it has): remove whatever is left of the device, then its record. */
  private driverGone(record: DeviceRecord): Promise<null> {
    return this.lock.run(() => this.removeDevice(record));
  }

  /** The driver ended without removing its device: a recoverable, available device stays. */
  private driverDied(record: DeviceRecord): Promise<null> {
    return this.lock.run(async () => {
      if (!this.registry.has(record)) return null;
      appendDeviceLog(record.id, `the driver in pid ${record.pid} ended without removing the device`);
      const holding = this.holdings.get(record.id);
      // Without our duplicate of its kernel end, only a kernel that keeps the device itself can.
      const kept = holding && (holding.fd >= 0 || frontendKind(record.frontend).keeping.kernelKeepsDevice);
      if (record.attributes.recoverable && record.state === 'available' && holding && kept) {
        await this.orphan(record, holding);
        return null;
      }
      return this.removeDevice(record);
    });
  }

  /** Called under the lock, with the record still registered. */
  private async removeDevice(record: DeviceRecord): Promise<null> {
    // Checked under the lock: after a first clean-up the index may already belong to a newer
    // device, whose mount and loop device must not be touched.
    if (!this.registry.has(record)) return null;
    const holding = this.holdings.get(record.id);
    this.holdings.delete(record.id);
    holding?.handover?.(undefined); // a rerun waiting for this device's driver learns it is gone
    holding?.keeper?.close();
    // Closing the last duplicate aborts the connection: clients get EIO at once.
    if (holding && holding.fd >= 0) closeSync(holding.fd);
    await frontendKind(record.frontend).keeping.reclaim(record, (line) => this.log(`device ${record.id}: ${line}`));
    removeLink(record);
    this.registry.remove(record);
    this.log(`device ${record.id} (${record.path}) is gone`);
    return null;
  }

  /**
   * A recoverable device lost its driver: it stays, its requests wait for a new driver (or fail,
   * as its recoveryMode says), and the keeper reads them meanwhile. Drivers that keep failing
   * before they serve exhaust the recovery limit: then every request fails with EIO until a
   * driver attaches and serves.
   */
  private async orphan(record: DeviceRecord, holding: Holding): Promise<void> {
    if (holding.recovering) holding.failures++;
    holding.recovering = true;
    holding.orphaned = true;
    Object.assign(record, { pid: 0, pidStart: '' });
    this.registry.update(record);
    const { attributes } = record;
    const givingUp = holding.failures >= attributes.recoveryLimit;
    const mode: KeeperMode = givingUp || attributes.recoveryMode === 'fail-all' ? 'fail-all' : 'hold';
    this.log(
      givingUp
        ? `device ${record.id}: ${holding.failures} drivers in a row failed to recover it (recoveryLimit ${attributes.recoveryLimit}); its requests fail with EIO until a driver attaches`
        : `device ${record.id} is recoverable: it waits for a new driver (bdus rerun); recoveryMode ${attributes.recoveryMode}`,
    );
    const kept = await frontendKind(record.frontend).keeping.orphan(record, holding.fd, mode, (line) => this.log(`device ${record.id}: ${line}`));
    holding.keeper = kept.keeper;
    holding.fd = kept.fd;
  }

  /**
   * Lets a new driver take over a device: checks it can, has the current driver hand over (or
   * stops the keeper), and answers with the kernel end to duplicate. If the current driver's
   * flush or terminate fails, or it dies while handing over, a non-recoverable device is
   * destroyed and the new driver refused (ENODEV); a recoverable one takes the new driver.
   */
  private async rerun(connection: Connection, m: CheckedMessage): Promise<Requests['rerun']['result']> {
    const { pid, attributes, callbacks, command = [] } = argsOf(m, 'rerun');
    const record = this.registry.get(argsOf(m, 'rerun').id);
    const { id } = record;
    const pidStart = processStart(pid);
    if (pidStart === undefined) throw new BdusError('ESRCH', `no process ${pid}`);
    if (connection.device !== undefined) throw new BdusError('EBUSY', 'this connection already runs a device');
    if (record.state === 'terminated') throw new BdusError('ENODEV', `device ${id} is being destroyed`);
    if (record.state !== 'available') throw new BdusError('EBUSY', `device ${id} is not available yet`);
    const holding = this.holding(id);
    if (holding.replacing !== 0) throw new BdusError('EBUSY', `device ${id} is already being replaced by the driver in pid ${holding.replacing}`);
    if (holding.fd < 0 && !holding.orphaned) throw new BdusError('EAGAIN', `the daemon does not hold device ${id} yet (its driver has not re-attached since the daemon restarted); try again`);
    checkReplacement(record.attributes, record.callbacks, attributes, callbacks);
    holding.replacing = pid;
    try {
      const current = this.drivers.get(id);
      if (current) {
        this.log(`device ${id}: the driver in pid ${pid} replaces the one in pid ${record.pid}`);
        const result = await new Promise<Handover>((resolve) => {
          holding.handover = resolve;
          current.send({ event: 'replace' } satisfies DaemonEvent);
        });
        holding.handover = undefined;
        if (!this.registry.has(record)) throw new BdusError('ENODEV', `device ${id} was destroyed while its driver was being replaced`);
        if (!result?.ok) {
          const why = result ? `its driver failed to hand over (${result.message})` : 'its driver died while handing over';
          if (!record.attributes.recoverable) {
            this.log(`device ${id}: ${why}; it is not recoverable: destroying it`);
            await this.lock.run(() => this.beginTermination(record));
            await this.driverGone(record);
            throw new BdusError('ENODEV', `device ${id} was destroyed: ${why}, and it is not recoverable`);
          }
          this.log(`device ${id}: ${why}; it is recoverable: the new driver takes over`);
          holding.recovering = true;
          if (!result) holding.fd = frontendKind(record.frontend).keeping.lostInHandover(record, holding.fd);
        }
      } else {
        await holding.keeper?.stop();
        holding.keeper = undefined;
      }
      holding.orphaned = false;
      if (!this.registry.has(record) || record.state !== 'available') {
        throw new BdusError('ENODEV', `device ${id} was destroyed while its driver was being replaced`);
      }
      Object.assign(record, { pid, pidStart, attributes, callbacks, command });
      this.registry.update(record);
      if (connection.socket.destroyed) {
        // The new driver is gone already; its connection's end was seen while it ran nothing.
        void this.driverDied(record);
        throw new BdusError('ESRCH', `the driver in pid ${pid} ended while waiting for device ${id}`);
      }
      connection.device = id;
      this.drivers.set(id, connection);
      return { record, kernelFd: holding.fd, daemonPid: process.pid };
    } finally {
      holding.replacing = 0;
      holding.handover = undefined;
    }
  }

  private holding(id: string): Holding {
    let holding = this.holdings.get(id);
    if (!holding) {
      holding = { fd: -1, keeper: undefined, orphaned: false, replacing: 0, handover: undefined, recovering: false, failures: 0 };
      this.holdings.set(id, holding);
    }
    return holding;
  }

  /** Takes a duplicate of the driver's kernel end, so that the device can outlive the driver. */
  private keepKernelEnd(record: DeviceRecord, fd: number): void {
    const holding = this.holding(record.id);
    if (holding.fd >= 0) return;
    try {
      holding.fd = native.getFd(record.pid, fd);
    } catch (error) {
      this.log(`device ${record.id}: cannot hold its kernel end (${(error as Error).message}); it will not outlive its driver`);
    }
  }

  private watchDetached(): void {
    for (const record of this.registry.list()) {
      const waiting = record.pid === 0 && this.holdings.get(record.id)?.orphaned === true; // for a rerun
      if (!waiting && !this.drivers.has(record.id) && !isAlive(record.pid, record.pidStart)) {
        this.log(`the driver of device ${record.id} (pid ${record.pid}) is gone`);
        void this.driverGone(record);
      }
    }
  }

  private owned(connection: Connection, m: CheckedMessage): DeviceRecord {
    const record = this.registry.get((m.args as { id: string }).id);
    if (connection.device !== record.id) throw new BdusError('EPERM', `this connection does not run device ${record.id}`);
    return record;
  }
}

function removeLink(record: DeviceRecord): void {
  try {
    if (lstatSync(record.path).isSymbolicLink()) rmSync(record.path, { force: true });
  } catch {
    // already gone
  }
}
