/**
 * One driver instance's own life, whatever it serves (a device, an NBD export): the attributes
 * it was given, its context, its request layer, and its life-cycle callbacks in their order:
 * validate, initialize, onDeviceAvailable (announce), terminate. A device (src/device) and an
 * export (src/nbd/export.ts) each hold one and add what is theirs: the kernel path and the
 * daemon, or the NBD server.
 */
import { describeAdjustments, type Attributes, type EffectiveAttributes } from '../driver/attributes.js';
import type { Context, Driver } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';
import { RequestLayer } from '../request/request-layer.js';

/** Options of one driver instance, for a device (RunOptions) or an export (ExportOptions). */
export interface InstanceOptions<State = unknown> {
  /** Attributes; they override the driver's own `attributes`. */
  attributes?: Attributes;
  /** Initial value of `ctx.state`. */
  state?: State;
  /** Where the instance's log lines go (default: stderr, prefixed with the device path or export URI). */
  log?: (line: string) => void;
}

/** The attributes a driver instance is given: the driver's own, with the options' on top. */
export function givenAttributes(driver: Driver<any>, options: InstanceOptions<any>): Attributes {
  return { ...driver.attributes, ...options.attributes };
}

export class DriverInstance<State> {
  readonly requests: RequestLayer;
  private initialized = false;

  /**
   * `ctx` is the driver's view (its kernel fields may be filled in later); `abort` ends whatever
   * the instance serves when a callback throws DriverAbort.
   */
  constructor(
    readonly driver: Driver<State>,
    readonly ctx: Context<State>,
    readonly log: (line: string) => void,
    abort: (error: Error) => void,
    given?: Attributes,
  ) {
    if (given && ctx.attributes.log) for (const line of describeAdjustments(given, ctx.attributes as EffectiveAttributes)) log(line);
    this.requests = new RequestLayer(driver, ctx, { abort, log });
  }

  validate(): Promise<void> {
    return lifeCycle('validate', () => this.driver.validate?.(this.ctx));
  }

  async initialize(): Promise<void> {
    await lifeCycle('initialize', () => this.driver.initialize?.(this.ctx));
    this.initialized = true;
  }

  /** onDeviceAvailable; without it, the path (or URI) and a newline on stdout. */
  async announce(): Promise<void> {
    if (this.driver.onDeviceAvailable) await this.driver.onDeviceAvailable(this.ctx);
    else process.stdout.write(`${this.ctx.path}\n`);
  }

  /** terminate, at a normal end: its failure is the caller's to report. */
  async terminate(): Promise<void> {
    await this.driver.terminate?.(this.ctx);
  }

  /** After a failure on the way up: terminate if initialize ran, whatever terminate then says. */
  async unwind(): Promise<void> {
    if (this.initialized) await Promise.resolve(this.driver.terminate?.(this.ctx)).catch(() => undefined);
  }
}

/**
 * Runs a life-cycle callback, naming it in its error: "the driver's initialize failed: ...".
 * The code stays the callback's own.
 */
export async function lifeCycle(name: 'validate' | 'initialize', callback: () => Promise<void> | void): Promise<void> {
  try {
    await callback();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const code = typeof (error as { code?: unknown })?.code === 'string' ? (error as { code: string }).code : 'EIO';
    throw new BdusError(code, `the driver's ${name} failed: ${message}`, { cause: error });
  }
}
