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
 * - if the process dies instead (SIGKILL), the kernel aborts the FUSE connection (clients get EIO
 *   at once) and the daemon, seeing the control connection end, removes the rest.
 */
import { existsSync, promises as fsp } from 'node:fs';
import { adjustAttributes, describeAdjustments, type Attributes, type EffectiveAttributes } from '../driver/attributes.js';
import { isReadOnly, type Context, type Driver } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';
import { ControlConnection } from '../control/client.js';
import type { Frontend } from '../frontend/frontend.js';
import { FuseLoopFrontend, fuseLoopAttributes } from '../frontend/fuse/fuse-loop.js';
import { RequestLayer } from '../request/request-layer.js';
import { sleep } from '../util/process.js';

export interface RunOptions<State = unknown> {
  /** Attributes; they override the driver's own `attributes`. */
  attributes?: Attributes;
  /** Initial value of `ctx.state`. */
  state?: State;
  /** Where the device's log lines go (default: stderr, prefixed with the device path). */
  log?: (line: string) => void;
}

/** Checks that this process can create devices at all; a clear error if not. */
export function checkEnvironment(): void {
  if (process.geteuid?.() !== 0) {
    throw new BdusError('EPERM', 'bdus must run as root: creating block devices needs CAP_SYS_ADMIN (try sudo)');
  }
  if (!existsSync('/dev/fuse')) {
    throw new BdusError('ENODEV', 'no /dev/fuse: load the fuse module (modprobe fuse) or pass /dev/fuse into the container');
  }
  if (!existsSync('/dev/loop-control')) {
    throw new BdusError('ENODEV', 'no /dev/loop-control: load the loop module (modprobe loop)');
  }
}

/** Longest pause between attempts to re-attach to a restarted daemon. */
const REATTACH_MAX_WAIT_MS = 1000;

/** A running device and its driver instance, as seen by the process that runs the driver. */
export class Device<State = unknown> {
  /** Settles when the device is gone: resolves after destroy(), rejects with the reason of an abort. */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private rejectClosed!: (error: Error) => void;
  private ending: Promise<void> | undefined;

  /** @internal use start() */
  constructor(
    readonly ctx: Context<State>,
    private readonly driver: Driver<State>,
    private control: ControlConnection,
    private readonly requests: RequestLayer,
    private readonly frontend: Frontend,
    private readonly log: (line: string) => void,
  ) {
    this.closed = new Promise((resolve, reject) => {
      this.resolveClosed = resolve;
      this.rejectClosed = reject;
    });
    this.closed.catch(() => undefined); // observed by whoever awaits it; never unhandled here
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
   * Destroys the device normally: optionally flushes it (the OS cache, then a flush request),
   * lets requests in progress finish, runs terminate, and removes the device.
   */
  destroy(options: { flush?: boolean } = {}): Promise<void> {
    this.ending ??= this.end(async () => {
      await this.control.request('terminating', { id: this.ctx.id.toString() }).catch(() => undefined);
      if (options.flush) await flushNode(this.ctx.kernelPath);
      await this.requests.drain();
      await this.driver.terminate?.(this.ctx);
    });
    return this.closed;
  }

  /** Ends the driver abnormally: pending and later requests fail with EIO at once. */
  abort(reason: Error): Promise<void> {
    this.ending ??= this.end(async () => {
      this.requests.abortAll();
      void this.control.request('terminating', { id: this.ctx.id.toString() }).catch(() => undefined);
      throw reason;
    });
    return this.closed;
  }

  private async end(stopDriver: () => Promise<void>): Promise<void> {
    let failure: Error | undefined;
    try {
      await stopDriver();
    } catch (error) {
      failure = error as Error;
    }
    // On an abort the kernel side goes first, so that waiting clients get EIO without delay.
    await this.frontend.stop();
    await leave(this.control, this.ctx.id, this.log);
    if (failure) {
      if (failure.name !== 'DriverAbort') this.log(`driver ended with an error: ${failure.message}`);
      this.rejectClosed(failure);
    } else {
      this.resolveClosed();
    }
  }

  private listen(control: ControlConnection): void {
    control.onEvent = (event) => {
      if (event.event === 'destroy') void this.destroy();
    };
    void control.closed.then(() => {
      if (!this.ending) void this.reattach();
    });
  }

  /** The daemon went away (it is being restarted): keep serving, and re-attach when it is back. */
  private async reattach(): Promise<void> {
    this.log('lost the control daemon; I/O goes on, re-attaching when it is back');
    for (let wait = 50; !this.ending; wait = Math.min(wait * 2, REATTACH_MAX_WAIT_MS)) {
      await sleep(wait);
      try {
        const control = await ControlConnection.open({ start: false });
        try {
          await control.request('attach', { id: this.ctx.id.toString(), pid: process.pid });
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
 * Tells the daemon the device is gone (its kernel device is removed) and closes the connection.
 * If the daemon was restarted meanwhile, says so to the new one; failing that, the daemon finds
 * out on its own once this process exits.
 */
async function leave(control: ControlConnection, id: bigint, log: (line: string) => void): Promise<void> {
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

/**
 * Creates a device served by `driver` in this process and resolves once it is available (after
 * onDeviceAvailable). Rejects, leaving nothing behind, if the attributes are invalid, the
 * environment cannot host devices, the daemon refuses (say, too many devices), initialize fails,
 * or the kernel device cannot be created.
 */
export async function start<State>(driver: Driver<State>, options: RunOptions<State> = {}): Promise<Device<State>> {
  checkEnvironment();
  const given: Attributes = { ...driver.attributes, ...options.attributes };
  const attributes = fuseLoopAttributes(adjustAttributes(given, driver as Driver<never>));
  const readOnly = isReadOnly(driver as Driver<never>);

  const control = await ControlConnection.open();
  let record;
  try {
    record = await control.request('create', { pid: process.pid, frontend: 'fuse', readOnly, attributes: { ...attributes } });
  } catch (error) {
    control.close();
    throw error;
  }
  const id = BigInt(record.id);
  const log = options.log ?? ((line: string) => process.stderr.write(`${record.path}: ${line}\n`));
  if (attributes.log) for (const line of describeAdjustments(given, attributes)) log(line);

  // The context is the driver's view; bdus fills in the kernel fields once the device exists.
  const ctx = {
    id,
    index: record.index,
    path: record.path,
    kernelPath: '',
    major: 0,
    minor: 0,
    attributes,
    isRerun: false,
    readOnly,
    state: options.state as State,
  };

  let device: Device<State> | undefined;
  let destroyAsked = false;
  control.onEvent = (event) => void (event.event === 'destroy' && (destroyAsked = true));
  const requests = new RequestLayer(driver, ctx, {
    abort: (error) => void device?.abort(error),
    log,
  });
  const frontend = new FuseLoopFrontend({ index: record.index, attributes, readOnly, requests, log });

  let initialized = false;
  try {
    await driver.initialize?.(ctx);
    initialized = true;
    const kernel = await frontend.start();
    Object.assign(ctx, { kernelPath: kernel.path, major: kernel.major, minor: kernel.minor });
    await control.request('available', { id: record.id, kernelPath: kernel.path, major: kernel.major, minor: kernel.minor });
    device = new Device(ctx, driver, control, requests, frontend, log);
    void frontend.ended.then((error) => error && void device?.abort(error));
  } catch (error) {
    requests.abortAll();
    await frontend.stop();
    if (initialized) await Promise.resolve(driver.terminate?.(ctx)).catch(() => undefined);
    await leave(control, id, log);
    throw error;
  }

  try {
    if (driver.onDeviceAvailable) await driver.onDeviceAvailable(ctx);
    else process.stdout.write(`${ctx.path}\n`);
  } catch (error) {
    await device.destroy().catch(() => undefined);
    throw error;
  }
  if (destroyAsked) void device.destroy();
  return device;
}

/**
 * Runs `driver` for a new device in this process until the device is destroyed (by `bdus
 * destroy`, SIGTERM or SIGINT) or the driver aborts. Resolves after a normal destruction;
 * rejects with the reason otherwise.
 */
export async function run<State>(driver: Driver<State>, options: RunOptions<State> = {}): Promise<void> {
  return serve(await start(driver, options));
}

/**
 * Serves `device` until it is closed, destroying it on SIGTERM or SIGINT and aborting it on an
 * uncaught exception.
 */
export async function serve(device: Device<any>): Promise<void> {
  const stop = () => void device.destroy();
  const crash = (error: Error) => void device.abort(error);
  process.on('SIGTERM', stop).on('SIGINT', stop).on('uncaughtException', crash);
  try {
    await device.closed;
  } finally {
    process.off('SIGTERM', stop).off('SIGINT', stop).off('uncaughtException', crash);
  }
}
