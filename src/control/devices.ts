/**
 * Where a device's life is decided, in the daemon: creation, availability, re-attachment after
 * a daemon restart, destruction, the end of a driver (normal, or a death that a recoverable
 * device survives: recovery.ts), hand-over to a new driver (rerun: recovery.ts), resizing, and
 * the watch on drivers that have not re-attached. Every registry change happens under one lock,
 * as in BDUS.
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
import { BdusError } from '../driver/errors.js';
import { removeFilterSettings } from '../filter/settings.js';
import { frontendKind } from '../frontend/kinds.js';
import { native } from '../native.js';
import { countDriverChange, removeStats } from '../stats/life.js';
import { appendDeviceLog, pruneDeviceLogs } from '../util/device-log.js';
import { Lock } from '../util/lock.js';
import { isAlive, processStart } from '../util/process.js';
import { deviceRunDir } from '../util/paths.js';
import { deviceHolders } from './holders.js';
import { driverless, type Connection, type Holding } from './holding.js';
import type { DaemonEvent, DeviceRecord, Requests } from './protocol.js';
import { orphan, rerun, type RecoveryHost } from './recovery.js';
import type { Registry } from './registry.js';
import { argsOf, type CheckedMessage } from './schema.js';

export class Devices implements RecoveryHost {
  readonly lock = new Lock();
  /** The control connection that runs each device. */
  readonly drivers = new Map<string, Connection>();
  readonly holdings = new Map<string, Holding>();
  /** Devices being resized: takes their driver's answer. */
  readonly resizing = new Map<string, (answer: Omit<Requests['resized']['args'], 'id'>) => void>();

  constructor(
    readonly registry: Registry,
    readonly log: (line: string) => void,
  ) {}

  /** A new driver takes the device over (recovery.ts). */
  rerun(connection: Connection, m: CheckedMessage): Promise<Requests['rerun']['result']> {
    return rerun(this, connection, m);
  }

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
    const { kernelPath, major, minor, kernelFd, modes } = argsOf(m, 'available');
    if (!kernelPath.startsWith('/dev/')) throw new BdusError('EINVAL', `kernelPath must be a node under /dev, not ${kernelPath}`);
    return this.lock.run(() => {
      const holding = this.holding(record.id);
      if (record.state === 'available' && holding.replacing === 0) {
        // A replacement driver serves the device now: a recovery, if one was going on, is over.
        holding.recovering = false;
        holding.failures = 0;
        if (holding.change) countDriverChange(record.id, holding.change.kind, performance.now() - holding.change.since);
        holding.change = undefined;
        this.keepKernelEnd(record, kernelFd ?? -1); // a new socket, if the last driver died (kernel NBD)
        this.log(`device ${record.id} is served by driver pid ${record.pid}`);
        return record;
      }
      if (record.state !== 'initialized') throw new BdusError('EINVAL', `device ${record.id} is ${record.state}, not initialized`);
      this.keepKernelEnd(record, kernelFd ?? -1);
      // Modes are the device's for its life: a ring is not handed over, user copy is a ublk device's flag.
      Object.assign(record, { kernelPath, major, minor, state: 'available' }, modes && { modes });
      rmSync(record.path, { force: true });
      symlinkSync(kernelPath, record.path);
      this.registry.update(record);
      this.log(`device ${record.id} is available at ${record.path} -> ${kernelPath}`);
      return record;
    });
  }

  /**
   * Holds a duplicate of each of the driver's lanes' own kernel ends (FUSE's clones), so that
   * what its lanes hold stays in the kernel if it dies, and lets go of the previous driver's: the
   * driver says this only after its resend, which has queued their requests again.
   */
  laneEnds(record: DeviceRecord, m: CheckedMessage): Promise<null> {
    const { fds } = argsOf(m, 'laneEnds');
    return this.lock.run(() => {
      const holding = this.holding(record.id);
      const fresh: number[] = [];
      try {
        for (const fd of fds) fresh.push(native.getFd(record.pid, fd));
      } catch (error) {
        for (const fd of fresh) closeSync(fd);
        throw new BdusError('EBADF', `cannot hold a lane's end of device ${record.id}: ${(error as Error).message}`);
      }
      for (const fd of holding.laneFds) closeSync(fd);
      holding.laneFds = fresh;
      return null;
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
        await orphan(this, record, holding);
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
    for (const fd of holding?.laneFds ?? []) closeSync(fd);
    if (holding && holding.fd >= 0) closeSync(holding.fd);
    await frontendKind(record.frontend).keeping.reclaim(record, (line) => this.log(`device ${record.id}: ${line}`));
    removeLink(record);
    removeStats(record.id);
    removeFilterSettings(record.id);
    rmSync(deviceRunDir(record.id), { recursive: true, force: true });
    this.registry.remove(record);
    this.log(`device ${record.id} (${record.path}) is gone`);
    return null;
  }

  holding(id: string): Holding {
    let holding = this.holdings.get(id);
    if (!holding) {
      holding = { serving: 'attached', fd: -1, laneFds: [], keeper: undefined, replacing: 0, handover: undefined, recovering: false, failures: 0, change: undefined };
      this.holdings.set(id, holding);
    }
    return holding;
  }

  /** Takes a duplicate of the driver's kernel end, so that the device can outlive the driver. */
  private keepKernelEnd(record: DeviceRecord, fd: number): void {
    const holding = this.holding(record.id);
    if (holding.fd >= 0 || fd < 0) return;
    try {
      holding.fd = native.getFd(record.pid, fd);
    } catch (error) {
      this.log(`device ${record.id}: cannot hold its kernel end (${(error as Error).message}); it will not outlive its driver`);
    }
  }

  /** Whether the device's driver serves it with no change of driver under way (the watchdog's "stopped serving" applies). */
  serving(id: string): boolean {
    const holding = this.holdings.get(id);
    return holding?.serving === 'attached' && holding.replacing === 0;
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
