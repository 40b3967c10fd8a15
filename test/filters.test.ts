// This test ensures that filters keep the filter contract (src/filter/filter.ts) and do what
// their documentation says, behind the real request layer (bdus/testing, no kernel): a filtered
// driver has exactly the inner driver's callbacks (the read-only rule and emulation see the
// truth), geometry filters give the inner driver its own size, and each filter's rule holds.
// test/filters-devices.test.ts runs them on real devices with real tools.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { isReadOnly, requestCallbacks } from '../src/driver/callbacks.js';
import type { Driver } from '../src/driver/driver.js';
import { DriverError } from '../src/driver/errors.js';
import { readInto } from '../src/driver/read-data.js';
import { chunked, file, memory, nullDriver, pattern, patternAt } from '../src/drivers/index.js';
import { compose, layer } from '../src/filter/filter.js';
import { parseFilterSpec, parseParameters } from '../src/filter/parameters.js';
import { cache, cow, delay, error, log, offset, parseLog, partition, rate, readonly, retry, stats, truncate, type StatsReport } from '../src/filters/index.js';
import { checkDriver, RequestFailed, testDriver } from '../src/testing/index.js';
import { must, scratch } from './helpers.js';

const MiB = 1 << 20;

/** A read-only driver with a declared size: what a base image is. */
const readOnlyBase: Driver = { attributes: { size: 8 * MiB }, read: (buffer, at) => patternAt(buffer, at) };

test('layer: an override of a callback the inner driver lacks is dropped, so read-only stays read-only', () => {
  for (const filter of [stats(), delay({ write: 1 }), error({ rate: 0 }), retry(), rate({ bandwidth: MiB }), log({ file: '/dev/null' })]) {
    const filtered = filter(readOnlyBase);
    assert.deepEqual(requestCallbacks(filtered), ['read'], 'only the inner driver\'s callbacks');
    assert.ok(isReadOnly(filtered));
    assert.equal(filtered.attributes?.size, 8 * MiB, 'the inner driver\'s attributes pass through');
  }
  const provided = layer(readOnlyBase, { write: () => undefined }, { provides: ['write'] });
  assert.deepEqual(requestCallbacks(provided), ['read', 'write'], 'a filter may provide an operation, saying so');
  assert.deepEqual(requestCallbacks(readonly()(memory())), ['read', 'extents'], 'readonly drops every write-type callback');
  assert.equal(readonly()(memory()).resize, undefined, '... and resize');
});

test('compose: filters apply from the driver outward, the last one first to see a request', async () => {
  const seen: string[] = [];
  const tag = (name: string) => <S>(next: Driver<S>): Driver<S> =>
    layer(next, {
      read(buffer, at, ctx) {
        seen.push(name);
        return next.read!(buffer, at, ctx);
      },
    });
  const d = await testDriver(compose(pattern(), tag('inner'), tag('outer')), { attributes: { size: MiB } });
  await d.read(0, 4096);
  await d.close();
  assert.deepEqual(seen, ['outer', 'inner']);
});

test('memory, null and pattern pass checkDriver, and memory reports holes', async () => {
  const m = await testDriver(memory(), { attributes: { size: 64 * MiB } });
  await checkDriver(m);
  await m.close();
  const n = await testDriver(nullDriver(), { attributes: { size: 64 * MiB } });
  assert.deepEqual(await n.read(0, 8192), Buffer.alloc(8192));
  await n.close();

  const driver = memory();
  const d = await testDriver(driver, { attributes: { size: 4 * MiB } });
  await d.write(MiB, Buffer.alloc(4096, 7));
  await d.write(2 * MiB, Buffer.alloc(4096)); // all zeros: allocates nothing
  const extents = await driver.extents!(0, 4 * MiB, d.ctx);
  assert.deepEqual(extents, [
    { length: MiB, hole: true, zero: true },
    { length: 64 << 10 },
    { length: 3 * MiB - (64 << 10), hole: true, zero: true },
  ]);
  assert.equal(d.ctx.state.size, 1, 'one 64 KiB page allocated');
  await d.discard(MiB, 64 << 10);
  assert.equal(d.ctx.state.size, 0, 'discard freed it');
  await d.close();

  const p = await testDriver(pattern(), { attributes: { size: 2 ** 33 } });
  const block = await p.read(2 ** 32 + 4096, 512);
  assert.equal(block.readBigUInt64BE(0), 2n ** 32n + 4096n);
  assert.equal(block.readBigUInt64BE(8), 2n ** 32n + 4104n);
  await p.close();
});

// Both ways a chunk file is read and written: through io_uring (a directory on ext4) and at
// once (a directory in memory).
for (const [where, dir, ring] of [
  ['on disk', scratch('chunks'), true],
  ['in memory', `/dev/shm/bdus-test-${process.pid}-chunks`, false],
] as const) {
  test(`chunked ${where}: passes checkDriver, a new driver instance reads what the last one wrote, a short chunk is an EIO`, async () => {
    try {
      const d = await testDriver(chunked(dir, { chunk: 64 << 10 }), { attributes: { size: 4 * MiB, maxConcurrentCallbacks: 16 } });
      assert.equal(d.ctx.state.io.ring, ring);
      await checkDriver(d);
      await d.write(MiB - 4096, Buffer.alloc(8192, 3)); // across two chunks
      await d.close();
      const again = await testDriver(chunked(dir));
      assert.equal(again.ctx.attributes.size, 4 * MiB, 'the size comes from the directory');
      assert.deepEqual(await again.read(MiB - 4096, 8192), Buffer.alloc(8192, 3));
      truncateSync(`${dir}/chunk-${'f'.padStart(10, '0')}`, 4096); // chunk 15: the bytes from 960 KiB
      await assert.rejects(again.read(MiB - 8192, 8192), /failed with EIO/);
      await again.close();
      assert.throws(() => chunked(dir, { chunk: 1 << 20 }), /holds 65536-byte chunks/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('chunked: concurrent transfers over more chunks than it keeps open land where they should (a chunk in use is never closed)', async () => {
  const dir = scratch('chunks');
  try {
    // 4 KiB chunks: each 1 MiB transfer goes through 256 of them, far more than the 64 kept open.
    const d = await testDriver(chunked(dir, { chunk: 4096 }), { attributes: { size: 64 * MiB, maxConcurrentCallbacks: 16 } });
    for (let round = 0; round < 5; round++) {
      const data = Array.from({ length: 16 }, () => randomBytes(MiB));
      await Promise.all(data.map((b, i) => d.write(i * 4 * MiB, b)));
      const back = await Promise.all(data.map((_, i) => d.read(i * 4 * MiB, MiB)));
      back.forEach((b, i) => assert.ok(b.equals(data[i]!), `round ${round}: transfer ${i} read back as written`));
      await d.flush();
    }
    await d.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('chunked: a flush syncs every chunk written since the last, those closed since too', async () => {
  const dir = scratch('chunks');
  try {
    const d = await testDriver(chunked(dir, { chunk: 4096 }), { attributes: { size: 8 * MiB } });
    await d.write(0, randomBytes(1100 * 4096)); // 1100 chunks: more than the 1024 kept open
    const synced: number[] = [];
    const io = d.ctx.state.io;
    const datasync = io.datasync.bind(io);
    io.datasync = (fd) => (synced.push(fd), datasync(fd));
    await d.flush();
    assert.equal(synced.length, 1100);
    synced.length = 0;
    await d.flush();
    assert.equal(synced.length, 0, 'nothing written since');
    await d.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('offset: the window maps to the driver below, which sees its own size', async () => {
  const inner = memory();
  const sizes: number[] = [];
  const spy: Driver<Map<number, Buffer>> = {
    ...inner,
    attributes: { size: 16 * MiB },
    initialize(ctx) {
      sizes.push(ctx.attributes.size);
      return inner.initialize!(ctx);
    },
  };
  const filtered = offset({ offset: MiB, size: 4 * MiB })(spy);
  assert.equal(filtered.attributes?.size, 4 * MiB);
  const d = await testDriver(filtered);
  assert.deepEqual(sizes, [16 * MiB], 'the driver below initialized with its own size');
  await d.write(0, Buffer.alloc(4096, 1));
  assert.ok(d.ctx.state.has(MiB / (64 << 10)), 'the window\'s block 0 is the base\'s block at 1 MiB');
  await checkDriver(d);
  await d.close();

  assert.throws(() => offset({ offset: 15 * MiB, size: 2 * MiB })(spy), /ends past the driver below/);
  assert.equal(offset({ offset: MiB })(spy).attributes?.size, 15 * MiB, 'without a size, to the end');
  await assert.rejects(testDriver(offset({ offset: 100 })(spy)), /multiple of the physical block size/);
});

test('truncate: grows the driver below with zeros that take only zeros, or shrinks it', async () => {
  const below = memory();
  const base: Driver<Map<number, Buffer>> = { ...below, attributes: { size: 3 * MiB } };
  const grown = truncate({ size: 8 * MiB })(base);
  assert.equal(grown.attributes?.size, 8 * MiB);
  const d = await testDriver(grown);
  await d.write(3 * MiB - 4096, Buffer.alloc(4096, 7));
  const across = await d.read(3 * MiB - 4096, 8192);
  assert.deepEqual(across, Buffer.concat([Buffer.alloc(4096, 7), Buffer.alloc(4096)]), 'past the end reads zeros');
  await d.write(4 * MiB, Buffer.alloc(65536));
  await d.writeZeros(2 * MiB, 4 * MiB);
  await d.discard(5 * MiB, MiB);
  await assert.rejects(d.write(3 * MiB - 4096, Buffer.alloc(8192, 1)), (e: unknown) => e instanceof RequestFailed && e.code === 'ENOSPC', 'data past the end has nowhere to go');
  assert.deepEqual(await d.read(3 * MiB - 4096, 4096), Buffer.alloc(4096), 'write-zeroes reached the part inside');
  await d.close();

  assert.equal(truncate({ 'round-up': MiB })({ ...base, attributes: { size: 3 * MiB + 4096 } }).attributes?.size, 4 * MiB);
  assert.equal(truncate({ 'round-down': MiB })({ ...base, attributes: { size: 3 * MiB + 4096 } }).attributes?.size, 3 * MiB);
  const shrunk = await testDriver(truncate({ size: MiB })(base));
  await checkDriver(shrunk);
  await shrunk.close();
  assert.throws(() => truncate({})(base), /one of size=, round-up= or round-down=/);
  assert.throws(() => truncate({ 'round-up': 3000 }), /not a power of two/);
  assert.throws(() => truncate({ size: MiB })(memory()), /does not state its size/);
});

test('error: ops, range, after and count choose the failures; the client sees the code', async () => {
  const d = await testDriver(compose(memory(), error({ ops: ['write'], offset: MiB, length: MiB, error: 'ENOSPC' })), {
    attributes: { size: 4 * MiB, transferTries: 1 },
  });
  await d.write(0, Buffer.alloc(4096, 1));
  await assert.rejects(d.write(MiB + 4096, Buffer.alloc(4096, 1)), (e: RequestFailed) => e.code === 'ENOSPC');
  await d.read(MiB, 4096);
  await d.close();

  const n = await testDriver(compose(memory(), error({ after: 3, count: 2 })), { attributes: { size: MiB, transferTries: 1 } });
  const outcomes: string[] = [];
  for (let i = 0; i < 6; i++) outcomes.push(await n.read(0, 4096).then(() => 'ok', (e: RequestFailed) => e.code));
  assert.deepEqual(outcomes, ['ok', 'ok', 'EIO', 'EIO', 'ok', 'ok'], 'the 3rd and 4th fail');
  await n.close();

  const flakey = await testDriver(compose(memory(), error({ up: 150, down: 150 })), { attributes: { size: MiB, transferTries: 1 } });
  await flakey.read(0, 4096);
  await new Promise((resolve) => setTimeout(resolve, 200));
  await assert.rejects(flakey.read(0, 4096), /EIO/);
  await new Promise((resolve) => setTimeout(resolve, 150));
  await flakey.read(0, 4096);
  await flakey.close();

  assert.throws(() => error({ error: 'EWHATEVER' }), /expected one of EIO/);
  assert.throws(() => error({ rate: 2 }), /probability/);
  assert.throws(() => error({ up: 10 }), /up and down go together/);
});

test('retry: calls again until the driver below succeeds, up to its retries; stats counts every call', async () => {
  let calls = 0;
  const flaky: Driver = {
    attributes: { size: MiB },
    read(buffer) {
      if (++calls % 3 !== 0) throw new DriverError('ENOLINK', 'the store hiccupped');
      buffer.fill(9);
    },
  };
  let report: StatsReport | undefined;
  const d = await testDriver(compose(flaky, stats({ onReport: (r) => (report = r) }), retry({ delay: 1 })), { attributes: { transferTries: 1 } });
  assert.deepEqual(await d.read(0, 4096), Buffer.alloc(4096, 9));
  assert.equal(calls, 3);
  await d.close();
  assert.deepEqual(report?.operations.read, { ...report!.operations.read!, requests: 3, failures: 2, bytes: 3 * 4096 });

  calls = 0;
  const few = await testDriver(compose(flaky, retry({ retries: 1, delay: 1 })), { attributes: { transferTries: 1 } });
  await assert.rejects(few.read(0, 4096), (e: RequestFailed) => e.code === 'ENOLINK');
  await few.close();
});

test('delay and rate: requests wait as told', async () => {
  const d = await testDriver(compose(memory(), delay({ read: 50 })), { attributes: { size: MiB } });
  let t0 = performance.now();
  await d.read(0, 4096);
  assert.ok(performance.now() - t0 >= 45, 'a read waits its delay');
  t0 = performance.now();
  await d.write(0, Buffer.alloc(4096));
  assert.ok(performance.now() - t0 < 40, 'a write has none');
  await d.close();

  const r = await testDriver(compose(memory(), rate({ bandwidth: 4 * MiB, burst: 0 })), { attributes: { size: 4 * MiB, maxConcurrentCallbacks: 8 } });
  t0 = performance.now();
  await Promise.all(Array.from({ length: 8 }, (_, i) => r.read(i * 128 * 1024, 128 * 1024)));
  const ms = performance.now() - t0;
  assert.ok(ms >= 200, `1 MiB at 4 MiB/s takes 250 ms (${ms.toFixed(0)} ms)`);
  await r.close();
});

test('log: a line per request, read back by parseLog', async () => {
  const file = scratch('trace.log');
  try {
    const d = await testDriver(compose(memory(), log({ file })), { attributes: { size: MiB, transferTries: 1 } });
    await d.write(4096, Buffer.alloc(8192, 1));
    await d.read(0, 4096);
    await d.flush();
    await d.close();
    assert.match(readFileSync(file, 'utf8'), /^# bdus request log: start_ms operation offset size result duration_ms\n# pid \d+/);
    assert.deepEqual(
      parseLog(file).map((r) => [r.operation, r.offset, r.size, r.result]),
      [['write', 4096, 8192, 'ok'], ['read', 0, 4096, 'ok']],
      'flush is not a callback of memory: the request layer answers it, and the log has no line for it',
    );
  } finally {
    rmSync(file, { force: true });
  }
});

test('--filter words: parsed against the filter\'s parameters, with a clear error for any mistake', () => {
  const { parameters } = { parameters: { read: { type: 'duration', description: '' }, ops: { type: 'list', description: '' } } as const };
  const { name, words } = parseFilterSpec('delay:read=2ms,ops=read+write');
  assert.equal(name, 'delay');
  assert.deepEqual(parseParameters('delay', parameters, words), { read: 2, ops: ['read', 'write'] });
  assert.throws(() => parseParameters('delay', parameters, parseFilterSpec('delay:wirte=1').words), /unknown parameter 'wirte' \(known: read, ops\)/);
  assert.throws(() => parseParameters('delay', parameters, parseFilterSpec('delay:read=fast').words), /expected a duration/);
  assert.throws(() => parseParameters('delay', parameters, parseFilterSpec('delay:read=1,read=2').words), /given twice/);
  assert.throws(() => parseFilterSpec('delay:read'), /'read' is not KEY=VALUE/);
  assert.throws(() => parseFilterSpec(':x=1'), /expected NAME/);
  assert.throws(() => parseParameters('x', parameters, [['__proto__', '1']]), /unknown parameter/);
});

test('cow: writes land in the overlay, the base stays as it was, and a new driver instance sees them', async () => {
  const overlay = scratch('overlay');
  try {
    const make = () => compose(pattern(), cow({ overlay, block: 8192 }));
    assert.deepEqual(requestCallbacks(make()), ['read', 'write', 'writeZeros', 'flush', 'discard', 'extents'], 'cow provides the writes');
    const checked = await testDriver(compose(pattern(), cow({ overlay: `${overlay}-check`, block: 8192 })), {
      attributes: { size: 4 * MiB, maxConcurrentCallbacks: 16 },
    });
    await checkDriver(checked);
    await checked.close();
    const d = await testDriver(make(), { attributes: { size: 4 * MiB } });
    await d.write(4096, Buffer.alloc(512, 5)); // inside a block: copied up from the base around it
    await d.writeZeros(2 * MiB, 8192); // a whole block: zero, no data
    await d.close();

    const again = await testDriver(make(), { attributes: { size: 4 * MiB } });
    const block = await again.read(0, 8192);
    const expected = Buffer.alloc(8192);
    patternAt(expected, 0);
    expected.fill(5, 4096, 4608);
    assert.deepEqual(block, expected, 'the base\'s data around the write, the write in it');
    assert.deepEqual(await again.read(2 * MiB, 8192), Buffer.alloc(8192));
    const untouched = Buffer.alloc(8192);
    patternAt(untouched, 3 * MiB);
    assert.deepEqual(await again.read(3 * MiB, 8192), untouched, 'unwritten blocks are the base\'s');
    await assert.rejects(testDriver(make(), { attributes: { size: 4 * MiB } }), /in use by another driver/);
    await again.close();
    await assert.rejects(testDriver(compose(pattern(), cow({ overlay, block: 8192 })), { attributes: { size: 8 * MiB } }), /made for a 4194304-byte device/);
  } finally {
    for (const path of [overlay, `${overlay}.map`, `${overlay}-check`, `${overlay}-check.map`]) rmSync(path, { force: true });
  }
});

test('cache: write-back holds writes until a flush, stays correct under evictions and concurrency, and refuses a recoverable device', async () => {
  const inner = memory();
  let innerWrites = 0;
  let innerReads = 0;
  const spied: Driver<Map<number, Buffer>> = {
    ...inner,
    write(data, offset, ctx) {
      innerWrites++;
      return inner.write!(data, offset, ctx);
    },
    read(buffer, offset, ctx) {
      innerReads++;
      return inner.read!(buffer, offset, ctx);
    },
  };
  const d = await testDriver(compose(spied, cache({ size: 64 << 10, block: 4096, readahead: 16384 })), { attributes: { size: 4 * MiB, maxConcurrentCallbacks: 16 } });
  await d.write(0, Buffer.alloc(8192, 1));
  assert.equal(innerWrites, 0, 'a write is answered from the cache');
  await d.flush();
  assert.equal(innerWrites, 2, 'flush writes the dirty blocks below');
  const below = Buffer.alloc(8192);
  await readInto(inner.read!(below, 0, d.ctx), below); // memory() answers with a view of its page
  assert.deepEqual(below, Buffer.alloc(8192, 1));

  innerReads = 0;
  for (let at = MiB; at < MiB + 65536; at += 4096) await d.read(at, 4096);
  assert.ok(innerReads <= 5, `sequential reads are read ahead (${innerReads} reads below for 16 blocks)`);
  await checkDriver(d); // 16 blocks of cache: every pass evicts
  await d.close();

  await assert.rejects(testDriver(compose(memory(), cache()), { attributes: { size: MiB, recoverable: true } }), /a recoverable device takes mode=writethrough/);
  const through = await testDriver(compose(spied, cache({ mode: 'writethrough', block: 4096 })), { attributes: { size: MiB, recoverable: true } });
  innerWrites = 0;
  await through.write(4096, Buffer.alloc(4096, 2));
  assert.equal(innerWrites, 1, 'write-through writes below at once');
  await checkDriver(through);
  await through.close();
});

test('partition: finds MBR and GPT partitions in the driver below and serves one as the device', async () => {
  for (const label of ['gpt', 'dos']) {
    const img = scratch(`${label}.img`);
    try {
      writeFileSync(img, '');
      truncateSync(img, 64 * MiB);
      await must('sh', ['-c', `printf 'label: ${label}\\nstart=2048, size=32768\\nstart=34816, size=65536\\n' | sfdisk --quiet ${img}`]);
      const filtered = await partition({ number: 2 })(file(img));
      assert.equal(filtered.attributes?.size, 65536 * 512, `${label}: the second partition's size`);
      const d = await testDriver(filtered);
      await d.write(0, Buffer.alloc(4096, 9));
      await d.close();
      assert.deepEqual(readFileSync(img).subarray(34816 * 512, 34816 * 512 + 4096), Buffer.alloc(4096, 9), `${label}: block 0 is the partition's first`);
      await assert.rejects(partition({ number: 3 })(file(img)), /empty|not 3/);
    } finally {
      rmSync(img, { force: true });
    }
  }
  await assert.rejects(partition({ number: 1 })(pattern() as Driver), /must declare its size/);
});
