/**
 * `bdus check`: is this driver safe to mark recoverable? It creates a device of the driver
 * (recoverable), fills part of it with blocks that say which write they come from (model.ts),
 * and runs a workload on it from several workers at once (writes, reads checked against the
 * model, flushes, write-zeroes), while it changes the device's driver over and over: hot swaps
 * (`bdus rerun`), SIGKILLs at random moments, and SIGKILLs inside a callback, between the
 * driver's own steps (faults.ts), recovering each time with `bdus rerun`. After every change it
 * reads the whole checked range back and holds every block to the properties in model.ts.
 *
 * The workload goes through the real device (O_DIRECT, so that the page cache never answers for
 * the driver), so what is checked is what a client of the device sees, recovery included.
 */
import { constants, promises as fsp } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { deviceInfo } from '../control/manage.js';
import { BdusError } from '../driver/errors.js';
import { fallocate, native } from '../native.js';
import { CommandError, execute } from '../util/exec.js';
import { sleep } from '../util/process.js';
import { FAULT_ENV, formatFault, type CallbackFault } from './faults.js';
import { BLOCK, decode, describeVersion, encode, expected, freshBlock, judge, PROPERTIES, ZEROS, type BlockState, type Property } from './model.js';

const CLI = fileURLToPath(new URL('../cli/bin.js', import.meta.url));
/** Bytes read at once when verifying. */
const VERIFY_CHUNK = 1 << 20;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
/** Most history lines kept per block (its last ones). */
const HISTORY = 12;

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

export interface Violation {
  property: Property;
  block: number;
  offset: number;
  expected: string;
  found: string;
  /** What happened to the block before it was found wrong, oldest first. */
  history: string[];
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
  private readonly blocks: BlockState[];
  /** Per block: the model's clock when its last write was acknowledged, and the driver change then. */
  private readonly ackedTick: Float64Array;
  private readonly ackedEpoch: Float64Array;
  private readonly busy: Uint8Array;
  private readonly rand: () => number;
  private readonly runId: number;
  private readonly memory: Buffer;
  private fd: fsp.FileHandle | undefined;
  /** Global versions: every write and write-zeroes takes the next. */
  private version = 0;
  private tick = 0;
  /** Driver changes begun; `changing` while one goes on. */
  private epoch = 0;
  private changing = false;
  private paused: Promise<void> | undefined;
  private resume: (() => void) | undefined;
  private active = 0;
  private idle: (() => void) | undefined;
  private done = false;
  private readonly started = Date.now();
  private readonly ops = { writes: 0, reads: 0, flushes: 0, writeZeroes: 0, failed: 0 };
  private readonly failures: Record<string, number> = {};
  private readonly faults: Fault[] = [];
  private readonly violations = new Map<Property, { count: number; smallest?: Violation }>();
  private readonly exercised = new Set<Property>(['read-back', 'never-written']);
  private restartFailure: string | undefined;
  private readonly workers: number;
  /** The driver's request callbacks. */
  callbacks: readonly string[] = [];

  constructor(
    private readonly path: string,
    private readonly options: CheckOptions,
    private readonly seed: number,
    private readonly region: number,
  ) {
    const count = region / BLOCK;
    this.blocks = Array.from({ length: count }, freshBlock);
    this.ackedTick = new Float64Array(count);
    this.ackedEpoch = new Float64Array(count);
    this.busy = new Uint8Array(count);
    this.rand = random(seed);
    this.runId = (seed ^ 0x5bd1e995) >>> 0;
    // Each worker holds at most 8 blocks at once: leave plenty free.
    this.workers = Math.max(1, Math.min(options.workers ?? 8, Math.floor(count / 16)));
    // Page-aligned, as O_DIRECT wants: a block per worker, then the verify buffer.
    this.memory = native.mapAnonymous(this.workers * BLOCK + VERIFY_CHUNK);
  }

  private log(line: string): void {
    this.options.log?.(`[${this.elapsed().toFixed(1).padStart(5)} s] ${line}`);
  }

  private elapsed(): number {
    return (Date.now() - this.started) / 1000;
  }

  async run(): Promise<void> {
    this.fd = await fsp.open(this.path, constants.O_RDWR | constants.O_DIRECT);
    await this.fill();
    const seconds = this.options.seconds ?? 30;
    const deadline = this.started + seconds * 1000;
    const workers = Array.from({ length: this.workers }, (_, i) => this.worker(i));
    try {
      for (let round = 0; Date.now() < deadline && !this.restartFailure; round++) {
        await sleep(300 + this.rand() * 900);
        const kind: FaultKind = (['SIGKILL inside a callback', 'SIGKILL', 'hot swap'] as const)[round % 3]!;
        await this.change(kind);
      }
    } finally {
      this.done = true;
      // Without a driver, the workers' requests wait for one that will not come: end them.
      if (this.restartFailure) await bdus(['destroy', '--force', '--no-flush', this.path]).catch(() => undefined);
      this.resume?.();
      await Promise.all(workers);
    }
    if (!this.restartFailure) await this.verify(undefined);
  }

  async close(): Promise<void> {
    await this.fd?.close();
    this.fd = undefined;
  }

  // ---- The workload ---------------------------------------------------------------------------

  /** Writes every block once and flushes: the known state the check starts from. */
  private async fill(): Promise<void> {
    const buffer = this.memory.subarray(this.workers * BLOCK);
    for (let offset = 0; offset < this.region; offset += VERIFY_CHUNK) {
      const length = Math.min(VERIFY_CHUNK, this.region - offset);
      const first = offset / BLOCK;
      const versions = Array.from({ length: length / BLOCK }, () => ++this.version);
      versions.forEach((version, i) => encode(buffer, i * BLOCK, this.runId, first + i, version));
      await this.fd!.write(buffer, 0, length, offset);
      versions.forEach((version, i) => this.acknowledge(first + i, version, false, false));
    }
    await this.flush();
    this.log(`wrote all ${this.region / BLOCK} blocks of the checked range (${this.region / 1024} KiB) and flushed`);
  }

  private async worker(index: number): Promise<void> {
    const buffer = this.memory.subarray(index * BLOCK, (index + 1) * BLOCK);
    while (!this.done) {
      if (this.paused) {
        await this.paused;
        continue;
      }
      this.active++;
      try {
        const r = this.rand();
        if (r < 0.04) await this.flush();
        else if (r < 0.06) await this.writeZeroes();
        else if (r < 0.55) await this.write(buffer);
        else await this.read(buffer);
      } finally {
        if (--this.active === 0) this.idle?.();
      }
    }
  }

  /** A free block (or a run of `count` free blocks), marked busy. */
  private take(count = 1): number {
    for (;;) {
      const block = Math.floor(this.rand() * (this.blocks.length - count + 1));
      let free = true;
      for (let i = 0; i < count; i++) free &&= this.busy[block + i] === 0;
      if (!free) continue;
      this.busy.fill(1, block, block + count);
      return block;
    }
  }

  private note(block: number, line: string): void {
    const history = this.blocks[block]!.history;
    history.push(line);
    if (history.length > HISTORY) history.shift();
  }

  /** The epoch and `changing` when an operation began: was it in flight across a driver change? */
  private acrossChange(epoch: number, changing: boolean): boolean {
    return changing || this.changing || epoch !== this.epoch;
  }

  private acknowledge(block: number, version: number, zeros: boolean, acrossChange: boolean): void {
    const state = this.blocks[block]!;
    state.acked = version;
    state.ackedZeros = zeros;
    state.uncertain = [];
    // The kernel may have re-sent it to the next driver.
    state.resent = acrossChange;
    if (acrossChange) this.exercised.add('resent-writes');
    this.ackedTick[block] = ++this.tick;
    this.ackedEpoch[block] = this.epoch;
  }

  private async write(buffer: Buffer): Promise<void> {
    const block = this.take();
    const version = ++this.version;
    const { epoch, changing } = this;
    encode(buffer, 0, this.runId, block, version);
    try {
      await this.fd!.write(buffer, 0, BLOCK, block * BLOCK);
      this.ops.writes++;
      this.acknowledge(block, version, false, this.acrossChange(epoch, changing));
      this.note(block, `write #${version} acknowledged${this.blocks[block]!.resent ? ' (in flight across a driver change)' : ''}`);
    } catch (error) {
      this.failed(block, version, `write #${version}`, error);
    } finally {
      this.busy[block] = 0;
    }
  }

  private async writeZeroes(): Promise<void> {
    const count = 1 + Math.floor(this.rand() * 8);
    const block = this.take(count);
    const version = ++this.version;
    const { epoch, changing } = this;
    // fallocate on a block device is BLKZEROOUT: ZERO_RANGE a write-zeroes that keeps the
    // blocks, PUNCH_HOLE one that may unmap them (FUSE+loop: a zeroing discard). Both read as zeros.
    const mode = (this.rand() < 0.5 ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE) | FALLOC_FL_KEEP_SIZE;
    try {
      await fallocate(this.fd!.fd, mode, block * BLOCK, count * BLOCK);
      this.ops.writeZeroes++;
      this.exercised.add('zeroes');
      for (let i = block; i < block + count; i++) {
        this.acknowledge(i, version, true, this.acrossChange(epoch, changing));
        this.note(i, `write-zeroes #${version} (blocks ${block}-${block + count - 1}) acknowledged`);
      }
    } catch (error) {
      for (let i = block; i < block + count; i++) this.failed(i, ZEROS, `write-zeroes #${version}`, error);
    } finally {
      this.busy.fill(0, block, block + count);
    }
  }

  private failed(block: number, leaves: number, what: string, error: unknown): void {
    this.blocks[block]!.uncertain.push(leaves);
    this.note(block, `${what} failed (${this.count(what.split(' ')[0]!, error)}): may or may not have landed`);
  }

  /** Counts a failed operation; returns why it failed. */
  private count(operation: string, error: unknown): string {
    const why = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    this.ops.failed++;
    const key = `${operation}: ${why}`;
    this.failures[key] = (this.failures[key] ?? 0) + 1;
    return why;
  }

  private async read(buffer: Buffer): Promise<void> {
    const block = this.take();
    try {
      await this.fd!.read(buffer, 0, BLOCK, block * BLOCK);
      this.ops.reads++;
      this.judge(block, decode(buffer, 0, this.runId, block), 'read');
    } catch (error) {
      this.count('read', error);
    } finally {
      this.busy[block] = 0;
    }
  }

  private async flush(): Promise<void> {
    const since = ++this.tick;
    try {
      await this.fd!.sync();
    } catch (error) {
      this.count('flush', error);
      return;
    }
    this.ops.flushes++;
    for (let block = 0; block < this.blocks.length; block++) {
      const state = this.blocks[block]!;
      if (this.ackedTick[block]! < since && state.durable !== state.acked) {
        state.durable = state.acked;
        state.durableZeros = state.ackedZeros;
        this.note(block, `flush completed (covers #${state.acked})`);
      }
    }
  }

  /** Holds one block read back to the model; on a violation, takes what is there as the block's state. */
  private judge(block: number, found: number, how: string): boolean {
    const state = this.blocks[block]!;
    const changed = this.ackedEpoch[block] !== this.epoch || this.changing;
    const property = judge(state, found, changed);
    if (!property) return true;
    const violation: Violation = {
      property,
      block,
      offset: block * BLOCK,
      expected: describeVersion(expected(state)),
      found: describeVersion(found),
      history: [...state.history, `${how}: ${describeVersion(found)}`],
    };
    this.record(violation);
    // A flushed write lost is an acknowledged write lost too.
    if (property === 'flushed-writes') this.record({ ...violation, property: 'acknowledged-writes' });
    state.acked = found;
    state.ackedZeros = found === ZEROS;
    state.uncertain = [];
    return false;
  }

  private record(violation: Violation): void {
    const seen = this.violations.get(violation.property) ?? { count: 0 };
    seen.count++;
    if (!seen.smallest || violation.history.length < seen.smallest.history.length) seen.smallest = violation;
    this.violations.set(violation.property, seen);
  }

  // ---- Driver changes -------------------------------------------------------------------------

  /** Stops the workers once their operations in progress have ended. */
  private async pause(): Promise<void> {
    this.paused = new Promise((resolve) => (this.resume = resolve));
    if (this.active > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    this.idle = undefined;
  }

  private unpause(): void {
    const resume = this.resume;
    this.paused = undefined;
    this.resume = undefined;
    resume?.();
  }

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
      if (kind !== 'hot swap') this.exercised.add('flushed-writes');
      this.exercised.add('acknowledged-writes');
    } catch (error) {
      this.restartFailure = `after a ${kind}, a new driver could not take the device over: ${(error as Error).message}`;
      this.log(this.restartFailure);
      return;
    }
    const ms = Date.now() - began;
    const wrong = await this.verify(kind);
    this.faults.push({ kind, at, detail, ms, wrong });
  }

  /**
   * A driver change, from its start (a rerun asked, a kill sent) until the new driver serves.
   * Operations acknowledged before its end must survive it (the old driver acknowledges up to
   * its death or hand-over); operations in flight during it may have been re-sent to the new
   * driver, which acknowledges them after it.
   */
  private async transition(work: () => Promise<void>): Promise<void> {
    this.changing = true;
    try {
      await work();
    } finally {
      this.epoch++;
      this.changing = false;
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

  /** Reads every block back and judges it; then flushes, so that the next round starts durable. */
  private async verify(after: FaultKind | undefined): Promise<number> {
    await this.pause();
    let wrong = 0;
    try {
      const buffer = this.memory.subarray(this.workers * BLOCK);
      for (let offset = 0; offset < this.region; offset += VERIFY_CHUNK) {
        const length = Math.min(VERIFY_CHUNK, this.region - offset);
        await this.fd!.read(buffer, 0, length, offset);
        for (let i = 0; i < length / BLOCK; i++) {
          const block = offset / BLOCK + i;
          if (!this.judge(block, decode(buffer, i * BLOCK, this.runId, block), after ? `read back after the ${after}` : 'read back at the end')) wrong++;
        }
      }
      for (const state of this.blocks) {
        state.history = [];
        state.resent = false;
      }
      await this.flush();
      for (let block = 0; block < this.blocks.length; block++) this.ackedEpoch[block] = this.epoch;
      this.log(`${after ?? 'end'}: ${wrong === 0 ? 'every block reads back right' : `${wrong} block(s) wrong`}`);
    } finally {
      this.unpause();
    }
    return wrong;
  }

  // ---- The report -----------------------------------------------------------------------------

  report(frontend: string, size: number): CheckReport {
    const properties = (Object.keys(PROPERTIES) as Property[]).map((property): PropertyVerdict => {
      const seen = this.violations.get(property);
      const exercised = this.exercised.has(property);
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
      workers: this.workers,
      operations: { ...this.ops },
      failures: { ...this.failures },
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
