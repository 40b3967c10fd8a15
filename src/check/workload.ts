/**
 * bdus check's workload (check.ts runs it): workers that write, read, flush and write-zeroes
 * random blocks of the checked range through the device, with O_DIRECT so that the page cache
 * never answers for the driver, never two at once on one block; every read, and every block read
 * back after a driver change (verify), held to the model (model.ts). What it found is kept per
 * property, with the smallest case.
 */
import { constants, promises as fsp } from 'node:fs';
import { fallocate, native } from '../native.js';
import { BLOCK, decode, describeVersion, encode, expected, freshBlock, judge, ZEROS, type BlockState, type Property } from './model.js';

/** Bytes written or read at once when filling and verifying. */
const CHUNK = 1 << 20;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
/** Most history lines kept per block (its last ones). */
const HISTORY = 12;

export interface Violation {
  property: Property;
  block: number;
  offset: number;
  expected: string;
  found: string;
  /** What happened to the block before it was found wrong, oldest first. */
  history: string[];
}

export class Workload {
  readonly ops = { writes: 0, reads: 0, flushes: 0, writeZeroes: 0, failed: 0 };
  /** Failed operations by what failed and why ("write: EIO"). */
  readonly failures: Record<string, number> = {};
  readonly violations = new Map<Property, { count: number; smallest?: Violation }>();
  /** Properties the run gave a chance to fail. */
  readonly exercised = new Set<Property>(['read-back', 'never-written']);
  readonly workers: number;
  private readonly blocks: BlockState[];
  /** Per block: the model's clock when its last write was acknowledged, and the driver change then. */
  private readonly ackedTick: Float64Array;
  private readonly ackedEpoch: Float64Array;
  private readonly busy: Uint8Array;
  private readonly runId: number;
  private readonly memory: Buffer;
  private fd: fsp.FileHandle | undefined;
  /** Global versions: every write and write-zeroes takes the next. */
  private version = 0;
  private tick = 0;
  /** Driver changes ended; `changing` while one goes on (see beginChange). */
  private epoch = 0;
  private changing = false;
  private paused: Promise<void> | undefined;
  private resume: (() => void) | undefined;
  private active = 0;
  private idle: (() => void) | undefined;
  private done = false;
  private running: Array<Promise<void>> = [];

  constructor(
    private readonly path: string,
    private readonly region: number,
    workers: number,
    seed: number,
    private readonly rand: () => number,
    private readonly log: (line: string) => void,
  ) {
    const count = region / BLOCK;
    this.blocks = Array.from({ length: count }, freshBlock);
    this.ackedTick = new Float64Array(count);
    this.ackedEpoch = new Float64Array(count);
    this.busy = new Uint8Array(count);
    this.runId = (seed ^ 0x5bd1e995) >>> 0;
    // Each worker holds at most 8 blocks at once: leave plenty free.
    this.workers = Math.max(1, Math.min(workers, Math.floor(count / 16)));
    // Page-aligned, as O_DIRECT wants: a block per worker, then the fill and verify buffer.
    this.memory = native.mapAnonymous(this.workers * BLOCK + CHUNK);
  }

  /** Opens the device, fills the range and starts the workers. */
  async start(): Promise<void> {
    this.fd = await fsp.open(this.path, constants.O_RDWR | constants.O_DIRECT);
    await this.fill();
    this.running = Array.from({ length: this.workers }, (_, i) => this.worker(i));
  }

  /** Stops the workers once their operations end (the caller makes sure they can end). */
  async stop(): Promise<void> {
    this.done = true;
    this.resume?.();
    await Promise.all(this.running);
  }

  async close(): Promise<void> {
    await this.fd?.close();
    this.fd = undefined;
  }

  /** A driver change begins (a rerun asked, a kill sent). */
  beginChange(): void {
    this.changing = true;
  }

  /**
   * The new driver serves. Operations acknowledged before this must have survived the change
   * (the old driver acknowledges up to its death or hand-over); operations in flight during it
   * may have been re-sent to the new driver, which acknowledges them after it.
   */
  endChange(): void {
    this.epoch++;
    this.changing = false;
  }

  /** The run gave `property` a chance to fail (the driver changes say which). */
  exercise(property: Property): void {
    this.exercised.add(property);
  }

  /** Writes every block once and flushes: the known state the check starts from. */
  private async fill(): Promise<void> {
    const buffer = this.memory.subarray(this.workers * BLOCK);
    for (let offset = 0; offset < this.region; offset += CHUNK) {
      const length = Math.min(CHUNK, this.region - offset);
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

  /** Reads every block back and judges it; then flushes, so that the next round starts durable. */
  async verify(after: string | undefined): Promise<number> {
    await this.pause();
    let wrong = 0;
    try {
      const buffer = this.memory.subarray(this.workers * BLOCK);
      for (let offset = 0; offset < this.region; offset += CHUNK) {
        const length = Math.min(CHUNK, this.region - offset);
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
}
