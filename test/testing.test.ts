/**
 * bdus/testing (src/testing/index.ts): drivers tested in-process, without a kernel device, through
 * the real request layer. The first test is the documented example (docs/testing-drivers.md):
 * the `loop` example over a temporary file. The others show that the checks catch what they
 * promise to catch, on deliberately broken drivers.
 */
import assert from 'node:assert/strict';
import { rmSync, truncateSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import type { Driver } from 'bdus';
import { checkBufferOwnership, checkConcurrency, checkDriver, checkRanges, checkReadBack, checkZeros, RequestFailed, testDriver } from 'bdus/testing';
import loop from '../src/examples/loop.js';
import ram from '../src/examples/ram.js';
import { scratch } from './helpers.js';

test('the loop example passes every check, and keeps its data across driver instances', async (t) => {
  const image = scratch('loop.img');
  writeFileSync(image, '');
  truncateSync(image, 16 << 20);
  t.after(() => rmSync(image, { force: true }));

  const d = await testDriver(loop([image]));
  assert.equal(d.ctx.attributes.size, 16 << 20);
  await checkDriver(d);
  const data = Buffer.alloc(8192, 0xab);
  await d.write(1 << 20, data);
  await d.flush();
  await d.close();

  const next = await testDriver(loop([image]));
  assert.deepEqual(await next.read(1 << 20, 8192), data, 'a new instance reads what the last one wrote');
  await next.close();
});

test('the ram example passes every check; requests are split at maxReadWriteSize', async () => {
  const sizes: number[] = [];
  const counted: Driver<any> = {
    ...ram,
    read(buffer, offset, ctx) {
      sizes.push(buffer.length);
      return ram.read!(buffer, offset, ctx);
    },
  };
  const d = await testDriver(counted, { attributes: { size: 8 << 20, maxReadWriteSize: 8192 } });
  await checkDriver(d);
  sizes.length = 0;
  await checkReadBack(d, 0, 64 * 1024);
  assert.deepEqual(sizes, Array(16).fill(8192), 'two 64 KiB reads, each as eight 8 KiB callbacks');
  await d.close();
});

test('a failing callback reaches the test as the errno a client would see', async () => {
  const failing: Driver = {
    attributes: { size: 1 << 20 },
    read(_buffer, offset) {
      if (offset === 0) throw Object.assign(new Error('no space'), { code: 'ENOSPC' });
      throw new Error('a bug');
    },
  };
  const d = await testDriver(failing, { attributes: { transferTries: 1 } });
  await assert.rejects(d.read(0, 512), (e: RequestFailed) => e.code === 'ENOSPC');
  await assert.rejects(d.read(512, 512), (e: RequestFailed) => e.code === 'EIO');
  await assert.rejects(d.write(0, Buffer.alloc(512)), (e: RequestFailed) => e.code === 'EROFS', 'no write callback: read-only');
  const read = d.stats().operations.read!;
  assert.equal(read.requests, 2);
  assert.deepEqual(read.errnos, { ENOSPC: 1, EIO: 1 }, 'the statistics a device would keep, in process');
  await d.close();
});

test('the checks catch broken drivers', async () => {
  // Reads the wrong place: every other block is shifted.
  const store = Buffer.alloc(1 << 20);
  const shifted: Driver = {
    attributes: { size: 1 << 20 },
    read(buffer, offset) {
      store.copy(buffer, 0, offset + 512, offset + 512 + buffer.length);
    },
    write(data, offset) {
      data.copy(store, offset);
    },
  };
  const a = await testDriver(shifted);
  await assert.rejects(checkReadBack(a, 4096, 4096), assert.AssertionError);
  await a.close();

  // Claims writeZeros but leaves the data in place.
  const lazy: Driver = { ...ram, writeZeros() {} };
  const b = await testDriver(lazy, { attributes: { size: 1 << 20 } });
  await assert.rejects(checkZeros(b, 'writeZeros', 0, 4096), assert.AssertionError);
  await b.close();

  // Says it takes one callback at a time, but the check counts what really runs.
  const c = await testDriver(ram, { attributes: { size: 1 << 20, maxConcurrentCallbacks: 2 } });
  await checkConcurrency(c);
  assert.ok(c.mostInProgress <= 2);
  await checkRanges(c);
  await c.close();

  // Keeps the write's buffer instead of copying it: reads back whatever the next request put there.
  const kept = new Map<number, Buffer>();
  const keeper: Driver = {
    attributes: { size: 1 << 20 },
    read(buffer, offset) {
      (kept.get(offset) ?? Buffer.alloc(buffer.length)).copy(buffer);
    },
    write(data, offset) {
      kept.set(offset, data);
    },
  };
  const e = await testDriver(keeper);
  await assert.rejects(checkBufferOwnership(e), /kept the request's buffer instead of copying its data/);
  await e.close();

  // Writes into a read's buffer after answering it.
  const late: Driver = {
    attributes: { size: 1 << 20 },
    read(buffer) {
      buffer.fill(1);
      setTimeout(() => buffer.fill(2), 5);
    },
  };
  const f = await testDriver(late);
  await assert.rejects(checkBufferOwnership(f), /wrote into its buffer after answering/);
  await f.close();
});
