/**
 * Testing a driver without the kernel: `import { testDriver } from 'bdus/testing'`. The driver
 * runs in the test's own process, behind the real request layer (the same attribute checks,
 * alignment and range checks, splitting at the max sizes, emulation of what it lacks, the
 * concurrency limit, request timeouts, transfer retries and error mapping that a device's or an
 * export's requests go through), with its life cycle (validate, initialize; terminate at close).
 * No root, no kernel device, no daemon: it works in any test runner (node:test, vitest, jest),
 * and the checks below throw node:assert's AssertionError, which they all report.
 *
 *   const d = await testDriver(loop(['/tmp/disk.img']));
 *   await d.write(0, Buffer.alloc(4096, 1));
 *   assert.deepEqual(await d.read(0, 4096), Buffer.alloc(4096, 1));
 *   await checkDriver(d);          // read back, flush, zeros, ranges, concurrency
 *   await d.close();
 *
 * A request answers as a client would see it: the data, or a RequestFailed whose `code` is the
 * errno name the kernel's client would get (EIO, ENOSPC, ETIMEDOUT, EINVAL, EOPNOTSUPP, ...).
 */
import assert from 'node:assert/strict';
import { adjustAttributes } from '../driver/attributes.js';
import { isReadOnly, requestCallbacks } from '../driver/callbacks.js';
import type { Context, Driver } from '../driver/driver.js';
import { givenAttributes, DriverInstance, type InstanceOptions } from '../instance/driver-instance.js';
import { errnoName } from '../native.js';
import { Exchange } from '../request/exchange.js';
import type { RequestLayer } from '../request/request-layer.js';
import { decodeStats, type DeviceStats } from '../stats/snapshot.js';

/** A request the driver (or the request layer's checks) failed: `code` is what the client sees. */
export class RequestFailed extends Error {
  constructor(
    readonly code: string,
    readonly errno: number,
    what: string,
  ) {
    super(`${what} failed with ${code}`);
    this.name = 'RequestFailed';
  }
}

/** One request, answered as the kernel's client would see it (a timeout answers early). */
class TestRequest extends Exchange {
  readonly answered: Promise<number>;
  private resolve!: (errno: number) => void;

  constructor() {
    super();
    this.answered = new Promise((resolve) => (this.resolve = resolve));
  }

  answer(errno: number): void {
    this.resolve(errno);
  }

  finish(): void {}
}

export interface DriverUnderTest<State> {
  /** The driver's context, as its callbacks see it (attributes adjusted). */
  readonly ctx: Context<State>;
  /** Callbacks in progress now, and the most that were ever in progress at once. */
  readonly inProgress: number;
  readonly mostInProgress: number;
  read(offset: number, size: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  fuaWrite(offset: number, data: Buffer): Promise<void>;
  flush(): Promise<void>;
  discard(offset: number, size: number): Promise<void>;
  writeZeros(offset: number, size: number, mayUnmap?: boolean): Promise<void>;
  /**
   * The request layer's statistics so far, as `bdus stats --json` has them for a device: per
   * request type the requests, bytes, errors by errno and latencies; timeouts, transfer retries.
   */
  stats(): DeviceStats;
  /** Lets the requests in progress finish, then runs terminate. */
  close(): Promise<void>;
}

export type TestDriverOptions<State> = InstanceOptions<State>;
export type { DeviceStats, OperationStats } from '../stats/snapshot.js';

/**
 * Validates and initializes `driver` (attributes as `bdus run` would adjust them, with
 * `options.attributes` on top) and returns a client for it. A driver that aborts (DriverAbort)
 * makes every later request fail with EIO, as its device would.
 */
export async function testDriver<State>(driver: Driver<State>, options: TestDriverOptions<State> = {}): Promise<DriverUnderTest<State>> {
  const counted = countCallbacks(driver);
  const given = givenAttributes(driver, options);
  const ctx: Context<State> = {
    id: 0n,
    index: -1,
    path: '(test)',
    kernelPath: '',
    major: 0,
    minor: 0,
    attributes: adjustAttributes(given, driver),
    isRerun: false,
    readOnly: isReadOnly(driver),
    state: options.state as State,
  };
  const log = options.log ?? (() => undefined);
  const instance = new DriverInstance(counted.driver, ctx, log, (error) => log(`the driver aborted: ${error.message}`), given);
  await instance.validate();
  await instance.initialize();
  const requests = instance.requests;

  const send = async (what: string, issue: (layer: RequestLayer, x: TestRequest) => void): Promise<void> => {
    const x = new TestRequest();
    issue(requests, x);
    const errno = await x.answered;
    if (errno !== 0) throw new RequestFailed(errnoName(errno), errno, what);
  };

  return {
    ctx,
    get inProgress() {
      return counted.now;
    },
    get mostInProgress() {
      return counted.most;
    },
    async read(offset, size) {
      const buffer = Buffer.alloc(size);
      await send(`read(offset=${offset}, size=${size})`, (l, x) => l.read(x, buffer, offset));
      return buffer;
    },
    write: (offset, data) => send(`write(offset=${offset}, size=${data.length})`, (l, x) => l.write(x, data, offset)),
    fuaWrite: (offset, data) => send(`fuaWrite(offset=${offset}, size=${data.length})`, (l, x) => l.fuaWrite(x, data, offset)),
    flush: () => send('flush()', (l, x) => l.flush(x)),
    discard: (offset, size) => send(`discard(offset=${offset}, size=${size})`, (l, x) => l.discard(x, offset, size)),
    writeZeros: (offset, size, mayUnmap = true) =>
      send(`writeZeros(offset=${offset}, size=${size})`, (l, x) => l.writeZeros(x, offset, size, mayUnmap)),
    stats: () => decodeStats(requests.counters.slots),
    async close() {
      await requests.drain();
      await instance.terminate();
    },
  };
}

/** The same driver, its request callbacks counted while they run (for the concurrency check). */
function countCallbacks<State>(driver: Driver<State>): { driver: Driver<State>; readonly now: number; readonly most: number } {
  const counts = { now: 0, most: 0 };
  const wrapped: Record<string, unknown> = Object.create(driver) as Record<string, unknown>;
  for (const name of requestCallbacks(driver)) {
    const callback = (driver as unknown as Record<string, (...args: unknown[]) => unknown>)[name]!;
    wrapped[name] = async (...args: unknown[]) => {
      counts.most = Math.max(counts.most, ++counts.now);
      try {
        return await callback.apply(driver, args);
      } finally {
        counts.now--;
      }
    };
  }
  return {
    driver: wrapped as unknown as Driver<State>,
    get now() {
      return counts.now;
    },
    get most() {
      return counts.most;
    },
  };
}

/** Bytes that differ from block to block and from run to run: a read of the wrong place shows. */
export function pattern(size: number, seed = Date.now()): Buffer {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) data.writeUInt32LE((seed + i * 2654435761) >>> 0, i);
  return data;
}

/** Writes a pattern at `offset` and reads it back, before and after a flush. */
export async function checkReadBack(d: DriverUnderTest<unknown>, offset: number, size: number): Promise<void> {
  const data = pattern(size);
  await d.write(offset, data);
  assert.deepEqual(await d.read(offset, size), data, `read(${offset}, ${size}) returns what was written`);
  await d.flush();
  assert.deepEqual(await d.read(offset, size), data, `read(${offset}, ${size}) returns what was written, after a flush`);
}

/** After `how` over [offset, offset + size), the range reads back as zeros. */
export async function checkZeros(d: DriverUnderTest<unknown>, how: 'writeZeros' | 'writeZeros(noUnmap)', offset: number, size: number): Promise<void> {
  await d.write(offset, pattern(size));
  await d.writeZeros(offset, size, how === 'writeZeros');
  assert.deepEqual(await d.read(offset, size), Buffer.alloc(size), `${how}(${offset}, ${size}) reads back as zeros`);
}

/** Misaligned and out-of-range requests are refused with EINVAL before they reach the driver. */
export async function checkRanges(d: DriverUnderTest<unknown>): Promise<void> {
  const { size, logicalBlockSize: lbs } = d.ctx.attributes;
  const refused = async (what: string, request: Promise<unknown>) => {
    await assert.rejects(request, (error: RequestFailed) => error.code === 'EINVAL', `${what} is refused with EINVAL`);
  };
  await refused('a read past the end', d.read(size, lbs));
  await refused('a misaligned read', d.read(1, lbs));
  if (!d.ctx.readOnly) await refused('a write straddling the end', d.write(size - lbs, Buffer.alloc(2 * lbs)));
}

/** Many requests at once: the driver never has more than maxConcurrentCallbacks callbacks running. */
export async function checkConcurrency(d: DriverUnderTest<unknown>, requests = 64): Promise<void> {
  const { maxConcurrentCallbacks: max, logicalBlockSize: lbs, size } = d.ctx.attributes;
  const blocks = Math.max(1, Math.floor(Math.min(size, 1 << 20) / lbs));
  await Promise.all(Array.from({ length: requests }, (_, i) => d.read((i % blocks) * lbs, lbs)));
  assert.ok(d.mostInProgress <= max, `at most ${max} callbacks at once (maxConcurrentCallbacks); saw ${d.mostInProgress}`);
}

/**
 * The request's buffer belongs to the driver only until it answers (docs/driver-api.md): a
 * frontend reuses it for the next request at once. A write callback that keeps the buffer
 * instead of copying its data reads back what the next request put there; a read callback that
 * writes into its buffer after answering corrupts another request's data. Both are caught here:
 * the write's buffer is overwritten once the write is answered, as a frontend would, and the read's
 * buffer is watched for a while after its answer.
 */
export async function checkBufferOwnership(d: DriverUnderTest<unknown>): Promise<void> {
  const { size, logicalBlockSize: lbs } = d.ctx.attributes;
  const block = Math.min(size, Math.max(lbs, 4096 - (4096 % lbs)));
  if (!d.ctx.readOnly) {
    const data = pattern(block);
    const written = Buffer.from(data);
    await d.write(0, data);
    data.fill(0xee); // the frontend's next request
    assert.deepEqual(await d.read(0, block), written, 'the write callback kept the request\'s buffer instead of copying its data: a frontend reuses that buffer as soon as the write is answered');
  }
  const buffers = await Promise.all(Array.from({ length: 8 }, () => d.read(0, block)));
  const answered = buffers.map((buffer) => Buffer.from(buffer));
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  buffers.forEach((buffer, i) =>
    assert.ok(buffer.equals(answered[i]!), 'the read callback wrote into its buffer after answering: by then the buffer holds another request\'s data'),
  );
}

/**
 * The checks that apply to this driver: read back at the start, the middle and the last block;
 * write-zeroes (both kinds) read back as zeros; ranges refused; the concurrency limit; buffers
 * left alone once answered.
 */
export async function checkDriver(d: DriverUnderTest<unknown>): Promise<void> {
  const { size, logicalBlockSize: lbs } = d.ctx.attributes;
  if (!d.ctx.readOnly) {
    const block = Math.max(lbs, 4096 - (4096 % lbs));
    const at = (offset: number) => Math.min(offset - (offset % lbs), size - block);
    for (const offset of [0, at(size / 2), size - block]) await checkReadBack(d, offset, block);
    await checkZeros(d, 'writeZeros', at(size / 4), block);
    await checkZeros(d, 'writeZeros(noUnmap)', at(size / 4), block);
  }
  await checkRanges(d);
  await checkConcurrency(d);
  await checkBufferOwnership(d);
}
