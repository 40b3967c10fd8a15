/**
 * `bdus check`: is this driver safe to mark recoverable? It creates a device of the driver
 * (recoverable), fills part of it with blocks that say which write they come from (model.ts),
 * and runs a workload on it from several workers at once (writes, reads checked against the
 * model, flushes, write-zeroes), while it changes the device's driver over and over: hot swaps
 * (`bdus rerun`), SIGKILLs at random moments, and SIGKILLs inside a callback, between the
 * driver's own steps (faults.ts), recovering each time with `bdus rerun`. After every change it
 * reads the whole checked range back and holds every block to the properties in model.ts.
 *
 * This file is the check's course: the device, the driver changes, the report. The workload and
 * what it holds the device to are workload.ts and model.ts. It goes through the real device, so
 * what is checked is what a client of the device sees, recovery included.
 */
import { fileURLToPath } from 'node:url';
import { deviceInfo } from '../control/manage.js';
import { BdusError } from '../driver/errors.js';
import { CommandError, execute } from '../util/exec.js';
import { sleep } from '../util/process.js';
import { FAULT_ENV, formatFault, type CallbackFault } from './faults.js';
import { BLOCK, PROPERTIES, type Property } from './model.js';
import { Workload, type Violation } from './workload.js';

export type { Violation } from './workload.js';

const CLI = fileURLToPath(new URL('../cli/bin.js', import.meta.url));

export interface CheckOptions {
  /** The driver as `bdus run` takes it: module (or example) and its arguments. */
  driver: readonly string[];
  /** How long to run the workload and the faults (default 30). */
  seconds?: number;
  /** Bytes of the device to check, from its start (default 16 MiB, at most the device). */
  region?: number;
  /** Concurrent workers (default 8). */
  workers?: number;
  /** Seed of the random choices (default: random); reported, to run the same choices again. */
  seed?: number;
  /** `--frontend` for the device. */
  frontend?: string;
  /** Progress lines. */
  log?: (line: string) => void;
}

export type FaultKind = 'hot swap' | 'SIGKILL' | 'SIGKILL inside a callback';

export interface Fault {
  kind: FaultKind;
  /** Seconds into the check. */
  at: number;
  detail: string;
  /** From the fault until the new driver served (ms). */
  ms: number;
  /** Blocks found wrong when verifying after it. */
  wrong: number;
}


export interface PropertyVerdict {
  property: Property;
  description: string;
  verdict: 'pass' | 'fail' | 'untested';
  violations: number;
  /** The violation with the shortest history. */
  smallest?: Violation;
  /** Why it is untested. */
  note?: string;
}

export interface CheckReport {
  driver: string[];
  device: { path: string; frontend: string; size: number };
  seed: number;
  seconds: number;
  region: number;
  workers: number;
  operations: { writes: number; reads: number; flushes: number; writeZeroes: number; failed: number };
  /** Failed operations by what failed and why ("write: EIO"). */
  failures: Record<string, number>;
  faults: Fault[];
  properties: PropertyVerdict[];
  /** Every property passed, and every one was exercised. */
  recoverable: boolean;
  /** A new driver could not take the device over (why), which ends the check early. */
  restartFailure?: string;
}

/** mulberry32: the check's random choices, from its seed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export async function checkRecoverable(options: CheckOptions): Promise<CheckReport> {
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const path = (await bdus(['run', options.driver[0]!, '--recoverable', ...options.driver.slice(1), ...(options.frontend ? ['--frontend', options.frontend] : [])])).trim();
  try {
    const info = await deviceInfo(path);
    if (info.attributes.logicalBlockSize > BLOCK) throw new BdusError('EINVAL', `bdus check needs a logical block size of at most ${BLOCK}`);
    const size = Number(info.attributes.size);
    const region = Math.floor(Math.min(options.region ?? 16 << 20, size) / BLOCK) * BLOCK;
    if (region < 64 * BLOCK) throw new BdusError('EINVAL', `the device is too small to check (${size} bytes; bdus check needs 256 KiB)`);
    const checker = new Checker(path, options, seed, region);
    checker.callbacks = info.callbacks;
    try {
      await checker.run();
    } finally {
      await checker.close();
    }
    return checker.report(info.frontend, size);
  } finally {
    await bdus(['destroy', '--force', '--no-flush', path]).catch(() => undefined);
  }
}

/** A bdus command; its failure says what the command said. */
async function bdus(args: readonly string[], env?: NodeJS.ProcessEnv): Promise<string> {
  try {
    return await execute(process.execPath, [CLI, ...args], env ? { env } : {});
  } catch (error) {
    if (!(error instanceof CommandError)) throw error;
    const said = error.stderr.replace(/^bdus: error: /gm, '').replace(/^\(see .*\)$/gm, '').trim();
    throw new BdusError('EIO', `bdus ${args[0]} failed: ${said || `exit ${error.exitCode}`}`);
  }
}

class Checker {
  private readonly rand: () => number;
  private readonly workload: Workload;
  private readonly started = Date.now();
  private readonly faults: Fault[] = [];
  private restartFailure: string | undefined;
  /** The driver's request callbacks. */
  callbacks: readonly string[] = [];

  constructor(
    private readonly path: string,
    private readonly options: CheckOptions,
    private readonly seed: number,
    private readonly region: number,
  ) {
    this.rand = random(seed);
    this.workload = new Workload(path, region, options.workers ?? 8, seed, this.rand, (line) => this.log(line));
  }

  private log(line: string): void {
    this.options.log?.(`[${this.elapsed().toFixed(1).padStart(5)} s] ${line}`);
  }

  private elapsed(): number {
    return (Date.now() - this.started) / 1000;
  }

  async run(): Promise<void> {
    await this.workload.start();
    const deadline = this.started + (this.options.seconds ?? 30) * 1000;
    try {
      for (let round = 0; Date.now() < deadline && !this.restartFailure; round++) {
        await sleep(300 + this.rand() * 900);
        const kind: FaultKind = (['SIGKILL inside a callback', 'SIGKILL', 'hot swap'] as const)[round % 3]!;
        await this.change(kind);
      }
    } finally {
      // Without a driver, the workers' requests wait for one that will not come: end them.
      if (this.restartFailure) await bdus(['destroy', '--force', '--no-flush', this.path]).catch(() => undefined);
      await this.workload.stop();
    }
    if (!this.restartFailure) await this.workload.verify(undefined);
  }

  close(): Promise<void> {
    return this.workload.close();
  }

  // ---- Driver changes -------------------------------------------------------------------------

  private async change(kind: FaultKind): Promise<void> {
    const at = this.elapsed();
    const began = Date.now();
    let detail: string;
    try {
      switch (kind) {
        case 'hot swap':
          await this.transition(() => this.rerun());
          detail = 'bdus rerun while the workload runs';
          break;
        case 'SIGKILL':
          await this.transition(async () => {
            await this.killDriver();
            await this.rerun();
          });
          detail = 'SIGKILL of the driver at a random moment, then bdus rerun';
          break;
        case 'SIGKILL inside a callback': {
          // Mostly inside a write (where a driver's steps matter most), else inside a flush.
          const callback = this.rand() < 0.75 || !this.callbacks.includes('flush') ? 'write' : 'flush';
          const fault: CallbackFault = { callback, call: 1 + Math.floor(this.rand() * (callback === 'write' ? 32 : 4)), turns: Math.floor(this.rand() * 4) };
          await this.transition(() => this.rerun(fault)); // a swap to a driver that will kill itself
          const died = await this.untilDriverless(10_000);
          await this.transition(async () => {
            if (!died) await this.killDriver(); // it was not called often enough
            await this.rerun();
          });
          detail = `SIGKILL ${fault.turns} event-loop turn(s) into call ${fault.call} of a new driver's ${fault.callback} callback${died ? '' : ' (not reached in 10 s: killed from outside)'}, then bdus rerun`;
          break;
        }
      }
      if (kind !== 'hot swap') this.workload.exercise('flushed-writes');
      this.workload.exercise('acknowledged-writes');
    } catch (error) {
      this.restartFailure = `after a ${kind}, a new driver could not take the device over: ${(error as Error).message}`;
      this.log(this.restartFailure);
      return;
    }
    const ms = Date.now() - began;
    const wrong = await this.workload.verify(kind);
    this.faults.push({ kind, at, detail, ms, wrong });
  }

  /** A driver change, from its start (a rerun asked, a kill sent) until the new driver serves. */
  private async transition(work: () => Promise<void>): Promise<void> {
    this.workload.beginChange();
    try {
      await work();
    } finally {
      this.workload.endChange();
    }
  }

  /** SIGKILLs the device's driver, if it has one, and waits until the daemon has seen it die. */
  private async killDriver(): Promise<void> {
    const { pid } = await deviceInfo(this.path);
    if (pid > 0) process.kill(pid, 'SIGKILL');
    await this.untilDriverless();
  }

  /** `bdus rerun` of the device with the driver (that kills itself as `fault` says, if given). */
  private async rerun(fault?: CallbackFault): Promise<void> {
    const env = fault ? { ...process.env, [FAULT_ENV]: formatFault(fault) } : undefined;
    await bdus(['rerun', this.path, ...this.options.driver], env);
  }

  /** Waits until the daemon has seen the driver die; false if `ms` passed first. */
  private async untilDriverless(ms = 30_000): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if ((await deviceInfo(this.path)).pid === 0) return true;
      await sleep(50);
    }
    return false;
  }

  // ---- The report -----------------------------------------------------------------------------

  report(frontend: string, size: number): CheckReport {
    const properties = (Object.keys(PROPERTIES) as Property[]).map((property): PropertyVerdict => {
      const seen = this.workload.violations.get(property);
      const exercised = this.workload.exercised.has(property);
      return {
        property,
        description: PROPERTIES[property],
        verdict: seen ? 'fail' : exercised ? 'pass' : 'untested',
        violations: seen?.count ?? 0,
        ...(seen?.smallest ? { smallest: seen.smallest } : {}),
        ...(!seen && !exercised ? { note: UNTESTED[property] } : {}),
      };
    });
    return {
      driver: [...this.options.driver],
      device: { path: this.path, frontend, size },
      seed: this.seed,
      seconds: Math.round(this.elapsed() * 10) / 10,
      region: this.region,
      workers: this.workload.workers,
      operations: { ...this.workload.ops },
      failures: { ...this.workload.failures },
      faults: this.faults,
      properties,
      recoverable: !this.restartFailure && properties.every((p) => p.verdict === 'pass'),
      ...(this.restartFailure ? { restartFailure: this.restartFailure } : {}),
    };
  }
}

const UNTESTED: Partial<Record<Property, string>> = {
  'acknowledged-writes': 'no driver change happened: give it more --seconds',
  'flushed-writes': 'no crash happened: give it more --seconds',
  'resent-writes': 'no write was in flight across a driver change: give it more --seconds',
  zeroes: 'the driver takes no write-zeroes, or none completed',
};
