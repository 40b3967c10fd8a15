/**
 * Lanes: more than one core per device. A lane is a worker thread of the driver process with its
 * own event loop, its own driver instance (made anew from the driver's module: a driver object
 * cannot cross threads), its own request layer and its own end of the kernel device (the
 * frontend kind's LaneKind). The process's main thread is lane 0 and keeps everything else: the
 * control connection, the device's life, the statistics file. Nothing crosses threads on the
 * request path; the main thread folds the lanes' counters into the stats file at every beat
 * (counters.ts).
 *
 * Lanes start once the kernel device exists, each initializing its own instance, and stop before
 * the main thread's instance terminates: each stops taking requests, answers those it took, runs
 * terminate, and closes its end. A lane whose driver aborts, or whose thread fails, aborts the
 * device. Which drivers may run in lanes, and why not recoverable: docs/performance.md.
 */
import { Worker } from 'node:worker_threads';
import type { EffectiveAttributes } from '../driver/attributes.js';
import type { Context } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';
import type { DriverOptionValues } from '../driver/module.js';
import { LaneCounters } from './counters.js';

/**
 * How another thread makes the same driver: what `bdus run` was given (the CLI fills it in), or
 * what a program passes to run()/start() as `recipe`.
 */
export interface DriverRecipe {
  /** The driver module: an absolute path or a file: URL. */
  readonly module: string;
  /** Positional arguments for the module's factory (if its default export is one). */
  readonly args?: readonly string[];
  /** Option values for the factory. */
  readonly options?: DriverOptionValues;
}

/**
 * Lanes make the driver anew in their threads: they need to know from what. `command` is the
 * CLI command that fills the recipe in (`bdus run` or `bdus rerun`, `bdus export`).
 */
export function checkRecipe(lanes: number, recipe: DriverRecipe | undefined, command: string): void {
  if (lanes > 1 && !recipe) {
    throw new BdusError('EINVAL', `lanes ${lanes} needs the driver's module, for each lane to make the driver in its own thread: run it with ${command} (without --filter), or pass the \`recipe\` option; or give --lanes 1`);
  }
}

/** What the main thread tells a lane's thread at its start (worker.ts). */
export interface LaneData {
  readonly lane: number;
  readonly recipe: DriverRecipe;
  /** The frontend kind's name, or EXPORT_LANES (src/nbd/lane.ts) for an export's lanes. */
  readonly frontend: string;
  /** The frontend's laneShare(). */
  readonly share: unknown;
  /** The driver's laneShare() (Driver.laneShare), given to each lane's instance as ctx.laneShared. */
  readonly driverShare: unknown;
  readonly ctx: Omit<Context<unknown>, 'state' | 'lane' | 'laneShared'>;
  readonly slots: Float64Array;
}

/** What a lane's thread says (worker.ts). */
export type LaneMessage =
  | { type: 'ready' }
  | { type: 'failed'; code: string; message: string }
  | { type: 'log'; line: string }
  | { type: 'abort'; message: string }
  | { type: 'stopped'; message: string }
  | { type: 'resized'; message: string };

/**
 * What the main thread tells a lane's thread after its start (worker.ts). `deliver` hands its
 * LaneServer something to serve (an export's connection).
 */
export type LaneOrder = { type: 'stop' } | { type: 'resize'; size: number; driverShare: unknown } | { type: 'deliver'; message: unknown };

/** A lane's thread may take this long to stop beyond its requests' timeout before it is ended. */
const STOP_SLACK_MS = 5000;

class Lane {
  readonly counters = new LaneCounters();
  readonly worker: Worker;
  private stopped: ((message: string) => void) | undefined;
  private resized: ((message: string) => void) | undefined;

  constructor(
    data: Omit<LaneData, 'slots'>,
    private readonly log: (line: string) => void,
    private readonly abort: (error: Error) => void,
    ready: (error: Error | undefined) => void,
  ) {
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: { ...data, slots: this.counters.slots } });
    this.worker.on('message', (m: LaneMessage) => {
      if (m.type === 'ready') ready(undefined);
      else if (m.type === 'failed') ready(new BdusError(m.code, `lane ${data.lane}: ${m.message}`));
      else if (m.type === 'log') this.log(`lane ${data.lane}: ${m.line}`);
      else if (m.type === 'abort') this.abort(new Error(`lane ${data.lane}: ${m.message}`));
      else if (m.type === 'resized') this.resized?.(m.message);
      else this.stopped?.(m.message);
    });
    this.worker.on('error', (error) => {
      ready(error);
      this.abort(new Error(`lane ${data.lane} failed: ${error.message}`));
    });
    // A thread that ends unasked (or is ended by kill) settles whatever waits on it (a second
    // resolve of a promise does nothing).
    this.worker.once('exit', () => {
      ready(new Error(`lane ${data.lane} ended while starting`));
      this.stopped?.('');
      this.resized?.(`lane ${data.lane} ended`);
    });
  }

  /** Asks the lane to stop (see Lanes.stop); resolves with its terminate's failure, or ''. */
  async stop(timeoutMs: number): Promise<string> {
    const done = new Promise<string>((resolve) => (this.stopped = resolve));
    this.order({ type: 'stop' });
    const timer = setTimeout(() => void this.worker.terminate(), timeoutMs);
    const message = await done.finally(() => clearTimeout(timer));
    // Its thread ends now, not whenever its event loop empties: a ublk lane's queues go back to
    // the kernel only once the thread is gone (ublk/lane.ts).
    await this.worker.terminate();
    return message;
  }

  /** Asks the lane to take a new size (see Lanes.resize); resolves with its failure, or ''. */
  resize(size: number, driverShare: unknown): Promise<string> {
    const done = new Promise<string>((resolve) => (this.resized = resolve));
    this.order({ type: 'resize', size, driverShare });
    return done;
  }

  async kill(): Promise<void> {
    await this.worker.terminate();
  }

  deliver(message: unknown): void {
    this.order({ type: 'deliver', message });
  }

  private order(order: LaneOrder): void {
    this.worker.postMessage(order);
  }
}

export class Lanes {
  /** Set once the lanes were asked to stop: their beats no longer hold the main thread's. */
  private stopping = false;

  private constructor(private readonly lanes: Lane[]) {}

  /**
   * Starts lanes 1 to count-1 (the main thread is lane 0), each initialized and serving, or
   * none: if one fails to start, those started are ended and it rejects.
   */
  static async start(
    count: number,
    recipe: DriverRecipe,
    frontend: string,
    share: unknown,
    driverShare: unknown,
    ctx: Context<unknown>,
    log: (line: string) => void,
    abort: (error: Error) => void,
  ): Promise<Lanes> {
    const { state: _state, lane: _lane, ...names } = ctx;
    const shared = { ...names, attributes: { ...ctx.attributes } as EffectiveAttributes };
    const lanes: Lane[] = [];
    const starts: Promise<Error | undefined>[] = [];
    for (let lane = 1; lane < count; lane++) {
      starts.push(new Promise((resolve) => lanes.push(new Lane({ lane, recipe, frontend, share, driverShare, ctx: shared }, log, abort, resolve))));
    }
    const failure = (await Promise.all(starts)).find((error) => error !== undefined);
    if (failure) {
      await Promise.all(lanes.map((lane) => lane.kill()));
      throw failure;
    }
    return new Lanes(lanes);
  }

  /**
   * Folds the lanes' counts into `into` (the device's slots) and returns the oldest of their
   * beats: the main thread beats no later than its slowest lane.
   */
  beat(into: Float64Array<ArrayBufferLike>): number {
    let oldest = Infinity;
    for (const lane of this.lanes) {
      lane.counters.fold(into);
      oldest = Math.min(oldest, lane.counters.heartbeat);
    }
    return this.stopping ? Infinity : oldest;
  }

  /**
   * Stops every lane (a destruction): each stops taking requests, answers those it took (within
   * their timeout), runs terminate and closes its end. Returns the terminate failures.
   */
  async stop(requestTimeout: number, into: Float64Array<ArrayBufferLike>): Promise<string[]> {
    this.stopping = true;
    const messages = await Promise.all(this.lanes.map((lane) => lane.stop(requestTimeout * 1.25 + STOP_SLACK_MS)));
    this.beat(into);
    return messages.filter((m) => m !== '');
  }

  /**
   * A resize, after lane 0's driver instance took the new size: every other lane's instance
   * runs its resize callback (with `ctx.laneShared` now `driverShare`, lane 0's laneShare()
   * after its resize), then takes the size and answers the kernel with it. Resolves with the
   * lanes' failures (the caller puts the old size back).
   */
  async resize(size: number, driverShare: unknown): Promise<string[]> {
    const messages = await Promise.all(this.lanes.map((lane) => lane.resize(size, driverShare)));
    return messages.filter((m) => m !== '');
  }

  /** Hands lane `lane` (1 and up) something to serve: its LaneServer's deliver() gets `message`. */
  deliver(lane: number, message: unknown): void {
    this.lanes[lane - 1]!.deliver(message);
  }

  /** Ends every lane at once (an abort): nothing more is answered by them. */
  async kill(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.lanes.map((lane) => lane.kill()));
  }
}
