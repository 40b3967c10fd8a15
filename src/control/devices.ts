/**
 * Where a device's life is decided, in the daemon: creation, availability, re-attachment after
 * a daemon restart, destruction, the end of a driver (normal, or a death that a recoverable
 * device survives), hand-over to a new driver (rerun), resizing, and the watch on drivers that
 * have not re-attached. Every registry change happens under one lock, as in BDUS.
 *
 * Who serves a device, as the daemon sees it (Holding.serving):
 * - attached: a driver's control connection runs it (`drivers` has it; after a daemon restart,
 *   until that driver re-attaches, its process is watched instead);
 * - handing over: a rerun waits for the current driver to stop (`replacing`, `handover`);
 * - driverless: a recoverable device whose driver died waits for a rerun, its kernel end kept
 *   by its frontend (FUSE+loop's keeper; nbd.ko itself);
 * - given up: drivers kept failing during recovery (`failures` reached recoveryLimit): still
 *   driverless, but every request fails with EIO until a driver attaches.
 * attached -> handing over -> attached (the new driver) | driverless (it died, recoverable) | gone;
 * attached -> driverless (death, recoverable) | gone; driverless -> attached (rerun) | gone.
 */
import { closeSync, lstatSync, rmSync, symlinkSync } from 'node:fs';
import type { Socket } from 'node:net';
import { checkReplacement } from '../driver/attributes.js';
import { BdusError } from '../driver/errors.js';
import type { Keeper, KeeperMode } from '../frontend/frontend.js';
import { frontendKind } from '../frontend/kinds.js';
import { native } from '../native.js';
import { appendDeviceLog, pruneDeviceLogs } from '../util/device-log.js';
import { Lock } from '../util/lock.js';
import { isAlive, processStart } from '../util/process.js';
import { deviceHolders } from './holders.js';
import { encode, type DaemonEvent, type DeviceRecord, type Requests } from './protocol.js';
import type { Registry } from './registry.js';
import { argsOf, type CheckedMessage } from './schema.js';

/** One client connection; `device` is set when a driver runs that device through it. */
export class Connection {
  device: string | undefined;
  constructor(readonly socket: Socket) {}

  send(message: object): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(encode(message));
  }
}

type Handover = Requests['handover']['args'] | undefined;

/**
 * Who serves a device (see the module comment): attached (a driver runs it), handing over (a
 * rerun waits for that driver to stop), driverless (its driver died; it waits for a rerun), given
 * up (driverless after recoveryLimit drivers failed in a row: its requests fail until one serves).
 */
export type Serving = 'attached' | 'handing-over' | 'driverless' | 'given-up';

/** What the daemon holds for a device besides its record, for as long as the daemon runs. */
export interface Holding {
  serving: Serving;
  /** The daemon's duplicate of the device's kernel end, or -1. */
  fd: number;
  /** Keeps the device while it has no driver, where its frontend needs one (FUSE+loop's keeper). */
  keeper: Keeper | undefined;
  /** The pid of a driver whose rerun is in progress, or 0. */
  replacing: number;
  /** While the current driver hands over: takes its answer (undefined if it died instead). */
  handover: ((result: Handover) => void) | undefined;
  /** A driver died and no driver has served the device since. */
  recovering: boolean;
  /** Drivers that failed during this recovery (seed 000's recovery limit). */
  failures: number;
}

function driverless(holding: Holding | undefined): boolean {
  return holding?.serving === 'driverless' || holding?.serving === 'given-up';
}

export class Devices {
  readonly lock = new Lock();
  /** The control connection that runs each device. */
  readonly drivers = new Map<string, Connection>();
  readonly holdings = new Map<string, Holding>();
  /** Devices being resized: takes their driver's answer. */
  readonly resizing = new Map<string, (answer: Omit<Requests['resized']['args'], 'id'>) => void>();

  constructor(
    readonly registry: Registry,
    private readonly log: (line: string) => void,
  ) {}

  /** A driver's control connection closed: the driver has ended, however it ended. */
  connectionClosed(connection: Connection): void {
    const id = connection.device;
    if (id === undefined || this.drivers.get(id) !== connection) return;
    this.drivers.delete(id);
    const record = this.registry.find(id);
    if (!record) return;
    const holding = this.holdings.get(id);
    if (holding?.handover) return holding.handover(undefined); // the rerun decides
    this.log(`the driver of device ${id} (${record.path}, pid ${record.pid}) ended`);
    void this.driverDied(record);
  }

  /** The driver removed its kernel device and leaves (`gone`). */
  gone(connection: Connection, m: CheckedMessage): Promise<null> {
    const record = this.owned(connection, m);
    connection.device = undefined;
    this.drivers.delete(record.id);
    return this.driverGone(record);
  }

  /** The current driver stopped for a rerun (`handover`). */
  handover(connection: Connection, m: CheckedMessage): null {
    const record = this.owned(connection, m);
    const holding = this.holdings.get(record.id);
    if (!holding?.handover) throw new BdusError('EINVAL', `device ${record.id} is not being replaced`);
    connection.device = undefined;
    this.drivers.delete(record.id);
    holding.handover(argsOf(m, 'handover'));
    return null;
  }

  /** The driver's answer to a resize (`resized`). */
  resized(connection: Connection, m: CheckedMessage): null {
    const record = this.owned(connection, m);
    const answer = this.resizing.get(record.id);
    if (!answer) throw new BdusError('EINVAL', `device ${record.id} is not being resized`);
    answer(argsOf(m, 'resized'));
    return null;
  }

  /**
   * Has the device's driver resize it (its callback, then the kernel), and keeps the new size in
   * the record: what a later driver must fit, and what the keeper shows while none runs.
   */
  async resize(record: DeviceRecord, size: number): Promise<DeviceRecord> {
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

  create(connection: Connection, m: CheckedMessage): Promise<DeviceRecord> {
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

  available(record: DeviceRecord, m: CheckedMessage): Promise<DeviceRecord> {
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

  attach(connection: Connection, m: CheckedMessage): DeviceRecord {
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
  async destroy(record: DeviceRecord, force: boolean): Promise<null> {
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

  beginTermination(record: DeviceRecord): null {
    if (record.state === 'terminated' || !this.registry.has(record)) return null;
    record.state = 'terminated';
    removeLink(record);
    this.registry.update(record);
    return null;
  }

  /** The driver has ended (or said it has): remove whatever is left of the device, then its record. */
  driverGone(record: DeviceRecord): Promise<null> {
    return this.lock.run(() => this.removeDevice(record));
  }

  /** The driver ended without removing its device: a recoverable, available device stays. */
  driverDied(record: DeviceRecord): Promise<null> {
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
    Object.assign(record, { pid: 0, pidStart: '' });
    this.registry.update(record);
    const { attributes } = record;
    const givingUp = holding.failures >= attributes.recoveryLimit;
    holding.serving = givingUp ? 'given-up' : 'driverless';
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
  async rerun(connection: Connection, m: CheckedMessage): Promise<Requests['rerun']['result']> {
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
    if (holding.fd < 0 && !driverless(holding)) throw new BdusError('EAGAIN', `the daemon does not hold device ${id} yet (its driver has not re-attached since the daemon restarted); try again`);
    checkReplacement(record.attributes, record.callbacks, attributes, callbacks);
    holding.replacing = pid;
    try {
      const current = this.drivers.get(id);
      if (current) {
        this.log(`device ${id}: the driver in pid ${pid} replaces the one in pid ${record.pid}`);
        holding.serving = 'handing-over';
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
      holding.serving = 'attached';
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
      holding = { serving: 'attached', fd: -1, keeper: undefined, replacing: 0, handover: undefined, recovering: false, failures: 0 };
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

  watchDetached(): void {
    for (const record of this.registry.list()) {
      const waiting = record.pid === 0 && driverless(this.holdings.get(record.id)); // for a rerun
      if (!waiting && !this.drivers.has(record.id) && !isAlive(record.pid, record.pidStart)) {
        this.log(`the driver of device ${record.id} (pid ${record.pid}) is gone`);
        void this.driverGone(record);
      }
    }
  }

  owned(connection: Connection, m: CheckedMessage): DeviceRecord {
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
