/**
 * Where a driver instance meets its device: creation, availability, destruction, abort, as seen
 * from the process that runs the driver. The control daemon (src/control) keeps the registry and
 * decides what happens when this process ends; this file does the driver's part.
 *
 * States (seed 003): INITIALIZED -> AVAILABLE -> TERMINATED, or INITIALIZED -> TERMINATED when
 * creation fails. The kernel endpoint (the FUSE connection) is held by this process, so the
 * device lives as long as its driver does:
 *
 * - destroy() (asked by `bdus destroy` through the daemon, by SIGTERM or by the API): stop taking
 *   requests, let those in progress finish, terminate callback, remove the kernel device (at
 *   once, or when the last client holding it open closes it);
 * - an abort (DriverAbort from a callback, an uncaught exception, the frontend ending on its own):
 *   waiting and later requests fail with EIO at once, no terminate callback, same removal;
 * - if the process dies instead (SIGKILL), the daemon sees the control connection end and removes
 *   the rest, closing its duplicate of the FUSE connection first (clients get EIO at once);
 * - a recoverable device outlives its driver instead (an abort or a death): the device stays with
 *   the daemon, and the requests this driver took but did not answer go to the next one;
 * - a replacement (`rerun`, the daemon's `replace` event): stop taking requests, finish those
 *   taken, flush, terminate, hand over; the new driver initializes only then (seed 001).
 *
 * How a driver instance gets to serve a device, new (start) or existing (rerun), is start.ts.
 */
import { promises as fsp } from 'node:fs';
import { setDeviceSize, sizeProblem, type EffectiveAttributes } from '../driver/attributes.js';
import type { Context, Driver } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';
import type { InstanceOptions } from '../instance/driver-instance.js';
import type { DaemonEvent } from '../control/protocol.js';
import { ControlConnection } from '../control/client.js';
import type { Frontend } from '../frontend/frontend.js';
import type { FrontendChoice } from '../frontend/select.js';
import type { RequestLayer } from '../request/request-layer.js';
import { exportServer, exportUri } from '../nbd/export.js';
import { loadTls, type TlsOptions } from '../nbd/tls.js';
import { exportLimits, type LimitSettings } from '../nbd/limits.js';
import type { ListenAddress, NbdServer } from '../nbd/server.js';
import type { DriverRecipe, Lanes } from '../lane/lanes.js';
import { Outcome } from '../util/outcome.js';
import { sleep, withTimeout } from '../util/process.js';

/** An NBD export of a device's driver instance (see Device.export). */
export interface DeviceExportOptions {
  /** Where to listen: `{ unix: path }` or `{ host, port }` (port 0: any free one). */
  listen: ListenAddress;
  /** The export's name (default ""). */
  name?: string;
  description?: string;
  tls?: TlsOptions;
  /** Who may connect and what a client may hold (default: DEFAULT_LIMITS, everyone who can reach it). */
  limits?: LimitSettings;
}

/** A device's NBD export (Device.export). */
export interface DeviceExport {
  /** The URI clients use. */
  readonly uri: string;
  readonly address: ListenAddress;
  /** Stops the export: requests in progress are answered, then every connection ends. */
  close(): Promise<void>;
}

export interface RunOptions<State = unknown> extends InstanceOptions<State> {
  /**
   * The kernel path of a new device (start() only; a rerun keeps the device's): 'fuse'
   * (FUSE+loop), 'nbd' (the kernel NBD client), or 'auto' (default: FUSE+loop where the kernel
   * has it, else NBD). See docs/frontends.md.
   */
  frontend?: FrontendChoice;
  /**
   * How this driver was started, for `bdus list` and `bdus info` (what to type to run it again):
   * the CLI gives the driver module and the arguments that followed it.
   */
  command?: readonly string[];
  /**
   * How a lane makes this driver in its own thread, for the `lanes` attribute (the CLI gives
   * the driver module and its arguments; a program gives its own module's path).
   */
  recipe?: DriverRecipe;
}

/** Longest pause between attempts to re-attach to a restarted daemon. */
const REATTACH_MAX_WAIT_MS = 1000;

/** A running device and its driver instance, as seen by the process that runs the driver. */
export class Device<State = unknown> {
  /**
   * Settles when the device is gone from this process: resolves after destroy() or a hand-over
   * to a replacement driver, rejects with the reason of an abort. After a hand-over or an abort
   * of a ublk device the process should exit: the next driver takes the device over only then.
   */
  readonly closed: Promise<void>;
  private readonly outcome = new Outcome();
  private ending: Promise<void> | undefined;
  private readonly servers = new Set<NbdServer>();

  /** @internal use start() */
  constructor(
    readonly ctx: Context<State>,
    private readonly driver: Driver<State>,
    private control: ControlConnection,
    private readonly requests: RequestLayer,
    private readonly frontend: Frontend,
    private readonly log: (line: string) => void,
    /** The device's other lanes, if it has any (the `lanes` attribute). */
    private readonly lanes?: Lanes,
  ) {
    this.closed = this.outcome.promise;
    this.listen(control);
  }

  get id(): bigint {
    return this.ctx.id;
  }
  get path(): string {
    return this.ctx.path;
  }
  get attributes(): EffectiveAttributes {
    return this.ctx.attributes;
  }

  /**
   * Serves this driver instance over NBD too, alongside the device, through the same request
   * layer (so a flush on either covers writes completed on both). The export ends with this
   * driver instance: when the device is destroyed, aborted or handed to a new driver.
   */
  async export(options: DeviceExportOptions): Promise<DeviceExport> {
    const tls = options.tls ? loadTls(options.tls) : undefined;
    const limits = exportLimits(options.limits);
    const name = options.name ?? '';
    const server = exportServer(this.driver, this.ctx, this.requests, this.log, { ...options, tls, limits });
    const ended = () => new BdusError('ENODEV', `${this.path}: its driver instance is ending`);
    if (this.ending) throw ended();
    const address = await server.listen(options.listen);
    if (this.ending) {
      await server.close();
      throw ended();
    }
    this.servers.add(server);
    return {
      uri: exportUri(address, name, tls?.required),
      address,
      close: () => {
        this.servers.delete(server);
        return server.close();
      },
    };
  }

  /**
   * Destroys the device normally: optionally flushes it (the OS cache, then a flush request),
   * lets requests in progress finish, runs terminate, and removes the device.
   */
  destroy(options: { flush?: boolean } = {}): Promise<void> {
    this.ending ??= this.end('remove', async () => {
      await this.control.request('terminating', { id: this.ctx.id.toString() }).catch(() => undefined);
      if (options.flush) await flushNode(this.ctx.kernelPath);
      await this.requests.drain();
      const failures = (await this.lanes?.stop(this.ctx.attributes.requestTimeout, this.requests.counters.slots)) ?? [];
      for (const failure of failures) this.log(`a lane's terminate failed: ${failure}`);
      await this.driver.terminate?.(this.ctx);
    });
    return this.closed;
  }

  /**
   * Ends the driver abnormally. A device that is not recoverable is removed: pending and later
   * requests fail with EIO at once. A recoverable one stays for the next driver, which gets the
   * requests this one took but did not answer.
   */
  abort(reason: Error): Promise<void> {
    if (this.ctx.attributes.recoverable) {
      this.ending ??= this.end('keep', async () => {
        // Lanes first: a ublk lane serves through the kernel end the frontend closes.
        await this.lanes?.kill();
        await this.frontend.abandon();
        throw reason;
      });
      return this.closed;
    }
    return this.lost(reason);
  }

  /**
   * @internal Ends the driver and removes the device, recoverable or not: for when the kernel
   * side itself has ended (someone unmounted it), so there is nothing left to recover.
   */
  lost(reason: Error): Promise<void> {
    this.ending ??= this.end('remove', async () => {
      this.requests.abortAll();
      await this.lanes?.kill();
      void this.control.request('terminating', { id: this.ctx.id.toString() }).catch(() => undefined);
      throw reason;
    });
    return this.closed;
  }

  /**
   * Hands the device over to a replacement driver (the daemon's `replace` event): stop taking
   * requests, finish those taken, flush, terminate, and tell the daemon how that went. Settles
   * `closed` like a destruction, but the device lives on.
   * @internal
   */
  handOver(): void {
    this.ending ??= this.end('keep', async () => {
      this.log('handing the device over to a new driver');
      await this.frontend.detach();
      // Each lane stops reading, answers what it took, terminates and closes its end, so that
      // the next driver finds every request either answered or still with the kernel.
      const laneFailures = (await this.lanes?.stop(this.ctx.attributes.requestTimeout, this.requests.counters.slots)) ?? [];
      await this.requests.drain();
      let message = laneFailures.length > 0 ? `a lane's terminate failed: ${laneFailures[0]}` : '';
      if (message) this.log(message);
      try {
        // Each within requestTimeout: a hand-over must end, and the new driver is waiting.
        const ms = this.ctx.attributes.requestTimeout;
        const late = (what: string) => () => new BdusError('ETIMEDOUT', `${what} did not finish within ${ms} ms (requestTimeout)`);
        await withTimeout(this.driver.flush?.(this.ctx), ms, late('its flush'));
        await withTimeout(this.driver.terminate?.(this.ctx), ms, late('its terminate'));
      } catch (error) {
        const failed = error instanceof Error ? error.message : String(error);
        this.log(`the driver failed while handing over: ${failed}`);
        message ||= failed;
      }
      await this.frontend.release();
      await this.control.request('handover', { id: this.ctx.id.toString(), ok: message === '', message }).catch(() => undefined);
    });
  }

  private async end(device: 'remove' | 'keep', stopDriver: () => Promise<void>): Promise<void> {
    // NBD clients of this instance: their requests in progress are answered, then they go.
    for (const server of this.servers) void server.close();
    this.servers.clear();
    let failure: Error | undefined;
    try {
      await stopDriver();
    } catch (error) {
      failure = error as Error;
    }
    // Beating until here: the daemon also ends a driver stuck in its flush or terminate.
    this.requests.counters.stopHeartbeat();
    if (device === 'keep') {
      this.control.close();
    } else {
      // On an abort the kernel side goes first, so that waiting clients get EIO without delay.
      await this.frontend.stop();
      await leave(this.control, this.ctx.id, this.log);
    }
    if (failure) {
      if (failure.name !== 'DriverAbort') this.log(`driver ended with an error: ${failure.message}`);
      this.outcome.reject(failure);
    } else {
      this.outcome.resolve();
    }
  }

  /**
   * The daemon's `resize` event (`bdus resize`): the driver's resize callback (lane 0's, then
   * the other lanes'), then the kernel; if a lane or the kernel refuses, the callbacks are asked
   * back to the old size. Answers with `resized`.
   */
  private async resize(size: number): Promise<void> {
    const { attributes } = this.ctx;
    const old = attributes.size;
    let message = '';
    try {
      if (this.ending) throw new BdusError('ENODEV', 'its driver instance is ending');
      const problem = sizeProblem(size, attributes);
      if (problem) throw new BdusError('EINVAL', problem);
      if (!this.driver.resize) throw new BdusError('EOPNOTSUPP', 'its driver has no resize callback, so its size cannot change');
      // Asked first, so that the driver is not resized (and back) for a kernel that cannot follow.
      const cannot = await this.frontend.cannotResize?.();
      if (cannot) throw new BdusError('EOPNOTSUPP', cannot);
      if (size !== old) {
        await this.driver.resize(size, this.ctx);
        setDeviceSize(attributes, size);
        const back = async () => {
          setDeviceSize(attributes, old);
          await Promise.resolve(this.driver.resize!(old, this.ctx)).catch(() => undefined);
          await this.lanes?.resize(old, this.driver.laneShare?.(this.ctx));
        };
        const laneFailures = (await this.lanes?.resize(size, this.driver.laneShare?.(this.ctx))) ?? [];
        if (laneFailures.length > 0) {
          await back();
          throw new BdusError('EIO', `a lane's driver refused the new size: ${laneFailures[0]}`);
        }
        try {
          await this.frontend.resize(size);
        } catch (error) {
          await back();
          throw new BdusError('EIO', `the kernel refused the new size: ${(error as Error).message}`);
        }
        this.log(`resized from ${old} to ${size} bytes`);
      }
    } catch (error) {
      message = error instanceof Error ? error.message : String(error);
    }
    await this.control.request('resized', { id: this.ctx.id.toString(), ok: message === '', message, size: attributes.size }).catch(() => undefined);
  }

  private listen(control: ControlConnection): void {
    control.onEvent = (event) => this.onEvent(event);
    void control.closed.then(() => {
      if (!this.ending) void this.reattach();
    });
  }

  private onEvent(event: DaemonEvent): void {
    if (event.event === 'destroy') void this.destroy();
    else if (event.event === 'replace') this.handOver();
    else void this.resize(event.size);
  }

  /** The daemon went away (it is being restarted): keep serving, and re-attach when it is back. */
  private async reattach(): Promise<void> {
    this.log('lost the control daemon; I/O goes on, re-attaching when it is back');
    for (let wait = 50; !this.ending; wait = Math.min(wait * 2, REATTACH_MAX_WAIT_MS)) {
      await sleep(wait);
      try {
        const control = await ControlConnection.open({ start: false });
        // A destroy asked for meanwhile comes right after the answer, maybe in the same read.
        control.onEvent = (event) => this.onEvent(event);
        try {
          const { kernelFd } = this.frontend;
          await control.request('attach', { id: this.ctx.id.toString(), pid: process.pid, ...(kernelFd >= 0 ? { kernelFd } : {}) });
          await holdLaneEnds(control, this.ctx, this.frontend, this.log);
        } catch (error) {
          control.close();
          throw error;
        }
        this.control = control;
        this.listen(control);
        this.log('re-attached to the control daemon');
        return;
      } catch (error) {
        if ((error as BdusError).code === 'ENODEV') {
          this.log('the new control daemon does not know this device (its registry was lost); serving on without it');
          return;
        }
        // not back yet
      }
    }
  }
}

/**
 * A recoverable device's lanes' own kernel ends (Frontend.laneKernelFds: FUSE's clones) go to
 * the daemon, which holds a duplicate of each, as of the device's kernel end, and lets go of the
 * previous driver's: sent before the lanes start (after a rerun's resend, which has queued the
 * previous driver's requests again; `rerun`: also with no lanes, for the daemon to let go), and
 * again after a daemon restart. A driver the daemon cannot follow serves on, warned.
 * @internal
 */
export async function holdLaneEnds(control: ControlConnection, ctx: Context<unknown>, frontend: Frontend, log: (line: string) => void, rerun = false): Promise<void> {
  const fds = frontend.laneKernelFds;
  if (!ctx.attributes.recoverable || fds === undefined || (fds.length === 0 && !rerun)) return;
  try {
    await control.request('laneEnds', { id: ctx.id.toString(), fds: [...fds] });
  } catch (error) {
    log(`warning: the daemon cannot hold this driver's lanes' ends (${(error as Error).message}): if it dies, the requests its lanes hold fail`);
  }
}

/**
 * Tells the daemon the device is gone (its kernel device is removed) and closes the connection.
 * If the daemon was restarted meanwhile, says so to the new one; failing that, the daemon finds
 * out on its own once this process exits.
 */
export async function leave(control: ControlConnection, id: bigint, log: (line: string) => void): Promise<void> {
  try {
    await control.request('gone', { id: id.toString() });
    control.close();
    return;
  } catch {
    control.close();
  }
  try {
    const fresh = await ControlConnection.open();
    try {
      await fresh.request('attach', { id: id.toString(), pid: process.pid });
      await fresh.request('gone', { id: id.toString() });
    } finally {
      fresh.close();
    }
  } catch (error) {
    log(`could not tell the control daemon that the device is gone: ${(error as Error).message}`);
  }
}

/** fsync on a device node: the OS cache for the device, then a flush request. */
async function flushNode(path: string): Promise<void> {
  const handle = await fsp.open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
