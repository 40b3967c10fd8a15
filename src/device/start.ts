/**
 * How a driver instance comes to serve a device: start() creates one, rerun() takes over an
 * existing one (BDUS's rerun), and run()/serve() keep the process serving it until it ends.
 * Both go through Instance: the context, the request layer and the frontend of one driver
 * instance on its way to serving, and what the daemon asks of it before it does.
 */
import { closeSync } from 'node:fs';
import { adjustAttributes, checkReplacement, inheritAttributes, type Attributes, type EffectiveAttributes } from '../driver/attributes.js';
import { isReadOnly, requestCallbacks, type RequestCallback } from '../driver/callbacks.js';
import type { Context, Driver } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';
import { DriverInstance, givenAttributes, lifeCycle } from '../instance/driver-instance.js';
import { ControlConnection } from '../control/client.js';
import { deviceNames, lookUp, type DeviceName } from '../control/manage.js';
import type { DeviceRecord } from '../control/protocol.js';
import type { Frontend, FrontendKind, KernelDevice } from '../frontend/frontend.js';
import { frontendKind } from '../frontend/kinds.js';
import { chooseFrontend } from '../frontend/select.js';
import { native } from '../native.js';
import type { RequestLayer } from '../request/request-layer.js';
import { checkRecipe, Lanes, type DriverRecipe } from '../lane/lanes.js';
import { untilClosed } from '../util/process.js';
import { Device, holdLaneEnds, leave, type RunOptions } from './device.js';

/**
 * Creates a device served by `driver` in this process and resolves once it is available (after
 * onDeviceAvailable). Rejects, leaving nothing behind, if the attributes are invalid, the
 * environment cannot host devices, the daemon refuses (say, too many devices), initialize fails,
 * or the kernel device cannot be created.
 */
export async function start<State>(driver: Driver<State>, options: RunOptions<State> = {}): Promise<Device<State>> {
  const kind = await chooseFrontend(options.frontend);
  const given = givenAttributes(driver, options);
  const attributes = kind.attributes(adjustAttributes(given, driver));
  const readOnly = isReadOnly(driver);
  const callbacks = requestCallbacks(driver);
  checkRecipe(attributes.lanes, options.recipe, '`bdus run` or `bdus rerun`');

  const control = await ControlConnection.open();
  let record;
  try {
    record = await control.request('create', { pid: process.pid, frontend: kind.name, readOnly, attributes: { ...attributes }, callbacks, command: [...(options.command ?? [])] });
  } catch (error) {
    control.close();
    throw error;
  }
  const instance = new Instance(driver, options, control, record, attributes, given, false);
  const { driverInstance } = instance;
  try {
    await driverInstance.validate();
    await driverInstance.initialize();
    const kernel = await instance.frontend.start();
    await instance.serve(kernel, instance.frontend.kernelFd);
  } catch (error) {
    instance.requests.abortAll();
    await instance.lanes?.kill();
    await instance.frontend.stop();
    await driverInstance.unwind();
    await leave(control, instance.ctx.id, instance.log);
    throw error;
  }
  if (instance.note) instance.log(instance.note);
  return instance.available();
}

/**
 * Attaches `driver` in this process to an existing device, as its new driver instance (BDUS's
 * rerun), and resolves once it serves (after onDeviceAvailable, which runs again).
 *
 * Attributes the driver leaves out (or gives as 0) keep the device's values. The new driver must
 * fit the device: same size and block sizes, max sizes at least the current ones, and every
 * request callback the current driver has. If a driver runs the device, it stops taking
 * requests, finishes those it took, gets a flush and terminate, and only then does this driver
 * initialize; clients see a delay, never an error. If that driver's flush or terminate fails,
 * a recoverable device takes this driver anyway; any other is destroyed (ENODEV).
 *
 * If this driver's initialize fails, it rejects: a recoverable device keeps waiting for another
 * driver, any other is destroyed.
 */
export async function rerun<State>(device: DeviceName, driver: Driver<State>, options: RunOptions<State> = {}): Promise<Device<State>> {
  const given = givenAttributes(driver, options);
  const callbacks = requestCallbacks(driver);

  const control = await ControlConnection.open();
  let instance: Instance<State>;
  let fd: number;
  let kind: FrontendKind;
  try {
    const current = await lookUp(control, device);
    const currentAttributes = current.attributes;
    kind = await chooseFrontend(current.frontend);
    const attributes = kind.attributes(adjustAttributes(inheritAttributes(given, currentAttributes), driver));
    // Checked here too, so that a driver that cannot fit never disturbs the current one.
    checkReplacement(currentAttributes, current.callbacks, attributes, callbacks);
    checkRecipe(attributes.lanes, options.recipe, '`bdus run` or `bdus rerun`');
    if (driver.validate) {
      const ctx = { ...deviceNames(current), attributes, isRerun: true, readOnly: current.readOnly } as Context<State>;
      await lifeCycle('validate', () => driver.validate!(ctx));
    }
    const answer = await control.request('rerun', { id: current.id, pid: process.pid, attributes: { ...attributes }, callbacks, command: [...(options.command ?? [])] });
    // No kernel end to take (-1): the previous driver died and the frontend connects afresh.
    fd = answer.kernelFd >= 0 ? native.getFd(answer.daemonPid, answer.kernelFd) : -1;
    instance = new Instance(driver, options, control, answer.record, attributes, given, true);
  } catch (error) {
    control.close();
    throw error;
  }
  const { ctx, frontend, driverInstance } = instance;
  try {
    await driverInstance.initialize();
    // Serving is reported before the first request is read: this driver has recovered the
    // device even if a re-sent request then kills it (that request's own limit deals with it).
    const kernel = { path: ctx.kernelPath, major: ctx.major, minor: ctx.minor };
    // A frontend without a kernel end (ublk) recovers the device by number, after the report.
    const adopt = () => frontend.adopt(fd, kernel);
    if (fd >= 0 || !kind.keeping.kernelEnd) await instance.serve(kernel, fd, adopt);
    else {
      await adopt();
      await instance.serve(kernel, frontend.kernelFd);
    }
  } catch (error) {
    // The device stays with the daemon, which decides: a recoverable one waits for another driver.
    const adopted = frontend.kernelFd === fd;
    await instance.lanes?.kill();
    await frontend.abandon();
    if (!adopted && fd >= 0) closeFd(fd);
    await driverInstance.unwind();
    control.close();
    throw afterHandover(error, ctx);
  }
  return instance.available();
}

/** A rerun's driver failed once the device was handed to it: say what became of the device. */
function afterHandover(error: unknown, ctx: Context<unknown>): BdusError {
  const message = error instanceof Error ? error.message : String(error);
  const code = typeof (error as { code?: unknown })?.code === 'string' ? (error as { code: string }).code : 'EIO';
  const fate = ctx.attributes.recoverable
    ? `${ctx.path} stays without a driver (recoverable): its requests wait for the next one; give it one with \`bdus rerun ${ctx.path} DRIVER ...\` or end it with \`bdus destroy ${ctx.path}\``
    : `${ctx.path} is not recoverable, so it is destroyed with its previous driver gone`;
  return new BdusError(code, `${message}; ${fate}`, { cause: error });
}

/** What start() and rerun() share: one driver instance on its way to serving a device. */
class Instance<State> {
  readonly driverInstance: DriverInstance<State>;
  readonly ctx: Context<State>;
  readonly log: (line: string) => void;
  readonly requests: RequestLayer;
  readonly frontend: Frontend;
  /** The device's other lanes, once started (the `lanes` attribute). */
  lanes: Lanes | undefined;
  /** A lane that failed before the Device existed: it aborts the device once it does. */
  private laneFailure: Error | undefined;
  private device: Device<State> | undefined;
  private destroyAsked = false;
  private replaceAsked = false;
  /** What the user should know about this driver on this frontend, said once the device serves. */
  note: string | undefined;

  constructor(
    private readonly driver: Driver<State>,
    options: RunOptions<State>,
    private readonly control: ControlConnection,
    record: DeviceRecord,
    attributes: EffectiveAttributes,
    given: Attributes,
    isRerun: boolean,
  ) {
    const log = options.log ?? ((line: string) => process.stderr.write(`${record.path}: ${line}\n`));
    this.log = log;
    const readOnly = isRerun ? record.readOnly : isReadOnly(driver);
    // The context is the driver's view; a new device's kernel fields are filled in once it exists.
    this.ctx = {
      ...deviceNames(record),
      attributes,
      isRerun,
      readOnly,
      ...(attributes.lanes > 1 ? { lane: 0 } : {}),
      state: options.state as State,
    };
    // Events that come before the Device exists (say, in the same read as the answer to
    // `available`) are kept for it.
    control.onEvent = (event) => {
      if (event.event === 'destroy') this.destroyAsked = true;
      else if (event.event === 'replace') this.replaceAsked = true;
      else {
        const answer = { id: record.id, ok: false, message: 'its driver is still starting: try again', size: attributes.size };
        void control.request('resized', answer).catch(() => undefined);
      }
    };
    this.driverInstance = new DriverInstance(driver, this.ctx, log, (error) => void this.device?.abort(error), given);
    this.requests = this.driverInstance.requests;
    // Counted in the device's stats file, after what the device's earlier drivers counted; and
    // from now on the daemon can tell if this process's event loop stops (src/control/watchdog.ts).
    this.requests.counters.share(record.id);
    this.requests.counters.startHeartbeat();
    const kind = frontendKind(record.frontend);
    const callbacks = record.callbacks as RequestCallback[];
    const startLanes = (share: unknown) => this.startLanes(kind, options.recipe, share);
    this.frontend = kind.create({ id: this.ctx.id, index: record.index, callbacks, attributes, readOnly, requests: this.requests, log, startLanes });
    // extents answers NBD block-status queries only: no kernel device asks, so it is no surprise.
    const never = callbacks.filter((name) => !kind.callable.includes(name) && name !== 'extents');
    if (!isRerun && never.length > 0) {
      this.note = `note: on ${kind.title} the kernel never calls this driver's ${never.join(', ')} callback${never.length > 1 ? 's' : ''} (an NBD export, --export, can call every one; see docs/frontends.md)`;
    }
  }

  /**
   * Starts the device's other lanes, if its attributes ask for more than one (start() checked
   * the recipe): the frontend calls it (FrontendOptions.startLanes) when they may join.
   */
  private async startLanes(kind: FrontendKind, recipe: DriverRecipe | undefined, share: unknown): Promise<void> {
    const { lanes } = this.ctx.attributes;
    if (lanes <= 1) return;
    if (!kind.lanes) throw new BdusError('EINVAL', `the ${kind.title} frontend has no lanes`);
    if (this.lanes) throw new BdusError('EINVAL', 'the lanes were started twice');
    const abort = (error: Error) => void (this.device ? this.device.abort(error) : (this.laneFailure ??= error));
    // Before a lane takes a request: a driver dying at any time after leaves its lanes' requests in the kernel.
    await holdLaneEnds(this.control, this.ctx, this.frontend, this.log, this.ctx.isRerun);
    this.lanes = await Lanes.start(lanes, recipe!, kind.name, share, this.driver.laneShare?.(this.ctx), this.ctx, this.log, abort);
    const { counters } = this.requests;
    counters.onBeat = () => this.lanes!.beat(counters.slots);
  }

  /**
   * The kernel device serves requests: tell the daemon, which makes (or keeps) it available.
   * `thenRead` starts reading requests on a device adopted from another driver.
   */
  async serve(kernel: KernelDevice, kernelFd: number, thenRead?: () => Promise<void>): Promise<void> {
    const { path: kernelPath, major, minor } = kernel;
    Object.assign(this.ctx, { kernelPath, major, minor });
    // A frontend without a kernel end (ublk) gives none.
    // The daemon keeps the first driver's (DeviceRecord.modes): a rerun's ublk adopts only after this.
    const modes = [...this.frontend.modes()];
    await this.control.request('available', { id: this.ctx.id.toString(), kernelPath, major, minor, modes, ...(kernelFd >= 0 ? { kernelFd } : {}) });
    await thenRead?.();
    // With lanes, startLanes() said it; without, a rerun still tells the daemon to let go of the
    // previous driver's: not waited for, as a re-sent request may kill this driver any moment
    // now, and the rerun has succeeded (the resend has queued the old lanes' requests again).
    if (this.ctx.attributes.lanes <= 1) void holdLaneEnds(this.control, this.ctx, this.frontend, this.log, this.ctx.isRerun);
    const device = new Device(this.ctx, this.driver, this.control, this.requests, this.frontend, this.log, this.lanes);
    this.device = device;
    void this.frontend.ended.then((error) => error && void device.lost(error));
    if (this.laneFailure) void device.abort(this.laneFailure);
    else if (this.replaceAsked) device.handOver();
  }

  /** Runs onDeviceAvailable (default: print the path); a failure destroys the device. */
  async available(): Promise<Device<State>> {
    const device = this.device!;
    try {
      await this.driverInstance.announce();
    } catch (error) {
      await device.destroy().catch(() => undefined);
      throw error;
    }
    if (this.destroyAsked) void device.destroy();
    return device;
  }
}

function closeFd(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
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
export function serve(device: Device<any>): Promise<void> {
  return untilClosed(
    device.closed,
    () => void device.destroy(),
    (error) => void device.abort(error),
  );
}
