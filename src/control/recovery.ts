/**
 * Recovery, in the daemon: a recoverable device that lost its driver waits for the next one
 * (orphan), and a new driver takes a device over from a live driver or from none (rerun). The
 * states they move a device through are Holding.serving's (holding.ts).
 */
import { checkReplacement } from '../driver/attributes.js';
import { BdusError } from '../driver/errors.js';
import type { KeeperMode } from '../frontend/frontend.js';
import { frontendKind } from '../frontend/kinds.js';
import type { Lock } from '../util/lock.js';
import { processStart } from '../util/process.js';
import { driverless, type Connection, type Handover, type Holding } from './holding.js';
import type { DaemonEvent, DeviceRecord, Requests } from './protocol.js';
import type { Registry } from './registry.js';
import { argsOf, type CheckedMessage } from './schema.js';

/** What recovery needs of the daemon's device life (devices.ts). */
export interface RecoveryHost {
  readonly registry: Registry;
  readonly lock: Lock;
  readonly drivers: Map<string, Connection>;
  holding(id: string): Holding;
  log(line: string): void;
  beginTermination(record: DeviceRecord): null;
  driverGone(record: DeviceRecord): Promise<null>;
  driverDied(record: DeviceRecord): Promise<null>;
}

/**
 * A recoverable device lost its driver: it stays, its requests wait for a new driver (or fail,
 * as its recoveryMode says), and the keeper reads them meanwhile. Drivers that keep failing
 * before they serve exhaust the recovery limit: then every request fails with EIO until a
 * driver attaches and serves.
 */
export async function orphan(host: RecoveryHost, record: DeviceRecord, holding: Holding): Promise<void> {
  if (holding.recovering) holding.failures++;
  else holding.change = { kind: 'recovery', since: performance.now() };
  holding.recovering = true;
  Object.assign(record, { pid: 0, pidStart: '' });
  host.registry.update(record);
  const { attributes } = record;
  const givingUp = holding.failures >= attributes.recoveryLimit;
  holding.serving = givingUp ? 'given-up' : 'driverless';
  const mode: KeeperMode = givingUp || attributes.recoveryMode === 'fail-all' ? 'fail-all' : 'hold';
  host.log(
    givingUp
      ? `device ${record.id}: ${holding.failures} drivers in a row failed to recover it (recoveryLimit ${attributes.recoveryLimit}); its requests fail with EIO until a driver attaches`
      : `device ${record.id} is recoverable: it waits for a new driver (bdus rerun); recoveryMode ${attributes.recoveryMode}`,
  );
  const kept = await frontendKind(record.frontend).keeping.orphan(record, holding.fd, mode, (line) => host.log(`device ${record.id}: ${line}`));
  holding.keeper = kept.keeper;
  holding.fd = kept.fd;
}

/**
 * Lets a new driver take over a device: checks it can, has the current driver hand over (or
 * stops the keeper), and answers with the kernel end to duplicate. If the current driver's
 * flush or terminate fails, or it dies while handing over, a non-recoverable device is
 * destroyed and the new driver refused (ENODEV); a recoverable one takes the new driver.
 */
export async function rerun(host: RecoveryHost, connection: Connection, m: CheckedMessage): Promise<Requests['rerun']['result']> {
  const { pid, attributes, callbacks, command = [] } = argsOf(m, 'rerun');
  const record = host.registry.get(argsOf(m, 'rerun').id);
  const { id } = record;
  const pidStart = processStart(pid);
  if (pidStart === undefined) throw new BdusError('ESRCH', `no process ${pid}`);
  if (connection.device !== undefined) throw new BdusError('EBUSY', 'this connection already runs a device');
  if (record.state === 'terminated') throw new BdusError('ENODEV', `device ${id} is being destroyed`);
  if (record.state !== 'available') throw new BdusError('EBUSY', `device ${id} is not available yet`);
  const holding = host.holding(id);
  if (holding.replacing !== 0) throw new BdusError('EBUSY', `device ${id} is already being replaced by the driver in pid ${holding.replacing}`);
  if (holding.fd < 0 && !driverless(holding) && frontendKind(record.frontend).keeping.kernelEnd) throw new BdusError('EAGAIN', `the daemon does not hold device ${id} yet (its driver has not re-attached since the daemon restarted); try again`);
  checkReplacement(record.attributes, record.callbacks, attributes, callbacks);
  holding.replacing = pid;
  try {
    const current = host.drivers.get(id);
    if (current) {
      host.log(`device ${id}: the driver in pid ${pid} replaces the one in pid ${record.pid}`);
      holding.serving = 'handing-over';
      holding.change ??= { kind: 'swap', since: performance.now() };
      const result = await new Promise<Handover>((resolve) => {
        holding.handover = resolve;
        current.send({ event: 'replace' } satisfies DaemonEvent);
      });
      holding.handover = undefined;
      if (!host.registry.has(record)) throw new BdusError('ENODEV', `device ${id} was destroyed while its driver was being replaced`);
      if (!result?.ok) {
        const why = result ? `its driver failed to hand over (${result.message})` : 'its driver died while handing over';
        if (!record.attributes.recoverable) {
          host.log(`device ${id}: ${why}; it is not recoverable: destroying it`);
          await host.lock.run(() => host.beginTermination(record));
          await host.driverGone(record);
          throw new BdusError('ENODEV', `device ${id} was destroyed: ${why}, and it is not recoverable`);
        }
        host.log(`device ${id}: ${why}; it is recoverable: the new driver takes over`);
        holding.recovering = true;
        if (!result) holding.fd = frontendKind(record.frontend).keeping.lostInHandover(record, holding.fd);
      }
    } else {
      await holding.keeper?.stop();
      holding.keeper = undefined;
    }
    holding.serving = 'attached';
    if (!host.registry.has(record) || record.state !== 'available') {
      throw new BdusError('ENODEV', `device ${id} was destroyed while its driver was being replaced`);
    }
    Object.assign(record, { pid, pidStart, attributes, callbacks, command });
    host.registry.update(record);
    if (connection.socket.destroyed) {
      // The new driver is gone already; its connection's end was seen while it ran nothing.
      void host.driverDied(record);
      throw new BdusError('ESRCH', `the driver in pid ${pid} ended while waiting for device ${id}`);
    }
    connection.device = id;
    host.drivers.set(id, connection);
    return { record, kernelFd: holding.fd, daemonPid: process.pid };
  } finally {
    holding.replacing = 0;
    holding.handover = undefined;
  }
}
