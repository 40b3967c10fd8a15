/**
 * The pure parts of the statistics and of bdus check, without a device: the latency histogram's
 * buckets, percentiles and rates, the counters' round trip through their layout, and how bdus
 * check's model classifies a block read back.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { RequestCounters } from '../src/stats/counters.js';
import { BUCKETS, bucketEnd, bucketOf, Slot } from '../src/stats/layout.js';
import { activity, decodeStats } from '../src/stats/snapshot.js';
import { BLOCK, decode, encode, FOREIGN, freshBlock, judge, ZEROS, type BlockState } from '../src/check/model.js';
import { Operation } from '../src/request/operation.js';

test('a latency falls in a bucket at most 12.5% wide whose end is above it', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (us) => {
      const b = bucketOf(us);
      assert.ok(b >= 0 && b < BUCKETS);
      assert.ok(bucketEnd(b) > us, `${us} µs: bucket ${b} ends at ${bucketEnd(b)}`);
      const start = b === 0 ? 0 : bucketEnd(b - 1);
      assert.ok(start <= us, `${us} µs: bucket ${b} starts at ${start}`);
      if (us >= 8) assert.ok(bucketEnd(b) - start <= start / 8 + 1e-9);
    }),
  );
  for (let b = 1; b < BUCKETS; b++) assert.ok(bucketEnd(b) > bucketEnd(b - 1), 'bucket ends grow');
});

test('counters round-trip through the layout: counts, bytes, errnos, percentiles, rates', () => {
  const counters = new RequestCounters();
  for (let i = 1; i <= 100; i++) {
    counters.started(Operation.READ);
    counters.answered(Operation.READ, 0, 4096, i * 10); // 10 µs .. 1000 µs
  }
  counters.started(Operation.WRITE);
  counters.answered(Operation.WRITE, 28, 0, 0); // ENOSPC
  counters.started(Operation.WRITE); // in flight
  counters.add(Slot.TIMEOUTS);
  const stats = decodeStats(counters.slots);
  const read = stats.operations.read!;
  assert.equal(read.requests, 100);
  assert.equal(read.bytes, 409600);
  assert.equal(read.latencyMaxUs, 1000);
  assert.deepEqual(stats.operations.write!.errnos, { ENOSPC: 1 });
  assert.equal(stats.operations.write!.inFlight, 1);
  assert.equal(stats.timeouts, 1);
  const a = activity(read, undefined, 2);
  assert.equal(a.iops, 50);
  assert.ok(a.p50 >= 500 && a.p50 <= 500 * 1.125, `p50 ${a.p50}`);
  assert.ok(a.p99 >= 990 && a.p99 <= 1000, `p99 ${a.p99}`);
  assert.equal(a.max, 1000);
  const later = activity(read, read, 1);
  assert.equal(later.requests, 0);
  assert.equal(later.p99, 0);
});

test('bdus check: a block says which write put it there, or that none did', () => {
  const buffer = Buffer.alloc(2 * BLOCK);
  encode(buffer, 0, 7, 42, 1234);
  assert.equal(decode(buffer, 0, 7, 42), 1234);
  assert.equal(decode(buffer, 0, 7, 43), FOREIGN, 'another block');
  assert.equal(decode(buffer, 0, 8, 42), FOREIGN, 'another run');
  assert.equal(decode(buffer, BLOCK, 7, 43), ZEROS);
  buffer[100]! ^= 1;
  assert.equal(decode(buffer, 0, 7, 42), FOREIGN, 'a torn or damaged block');
});

test('bdus check: how a block read back is judged', () => {
  const state = (fields: Partial<BlockState>): BlockState => ({ ...freshBlock(), acked: 10, ackedZeros: false, ...fields });
  assert.equal(judge(state({}), 10, false), undefined);
  assert.equal(judge(state({ uncertain: [12] }), 12, true), undefined, 'a failed write may have landed');
  assert.equal(judge(state({}), FOREIGN, false), 'never-written');
  assert.equal(judge(state({}), 11, true), 'never-written', 'a version never acknowledged there');
  assert.equal(judge(state({}), 5, false), 'read-back');
  assert.equal(judge(state({ ackedZeros: true }), 5, false), 'zeroes');
  assert.equal(judge(state({ resent: true }), 5, false), 'resent-writes');
  assert.equal(judge(state({ durable: 8, durableZeros: false }), 5, true), 'flushed-writes');
  assert.equal(judge(state({ durable: 5, durableZeros: false }), 5, true), 'acknowledged-writes', 'only unflushed writes lost');
  assert.equal(judge(state({ durable: 8, durableZeros: false }), ZEROS, true), 'flushed-writes');
  assert.equal(judge(state({ durable: 8, durableZeros: true }), ZEROS, true), 'acknowledged-writes', 'zeros were the flushed state');
});
