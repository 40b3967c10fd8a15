/**
 * Writes received straight into a driver's memory (Driver.writeTarget) on an NBD export: a
 * driver that offers its store gets writes of 32 KiB and more there (its write callback finds
 * the data in place), smaller ones in bdus's buffer, and the data round-trips (nbdcopy, fio
 * verify with sizes from 4 KiB to 1 MiB). A filter hides the inner driver's writeTarget; one
 * that answers the wrong size or throws is logged once and not used; a write whose data stops
 * half-way leaves the export serving, and the `ram` example's data intact elsewhere.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { DRIVERS, must, scratch } from './helpers.js';
import { assertRoundTrip, exportDriver, transmitting } from './nbd-helpers.js';

const MiB = 1 << 20;
const TARGET = `${DRIVERS}/target.js`;

/** A COUNTS file for target.js, removed after the test, and a reader of its "IN_PLACE COPIED". */
function counts(t: TestContext): { path: string; read(): { inPlace: number; copied: number } } {
  const path = scratch('counts');
  t.after(() => rmSync(path, { force: true }));
  return {
    path,
    read() {
      const [inPlace, copied] = readFileSync(path, 'utf8').split(' ').map(Number);
      return { inPlace: inPlace!, copied: copied! };
    },
  };
}

/** A write request's header (simple, no flags). */
function writeHeader(offset: number, length: number): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(0x25609513, 0);
  header.writeUInt16BE(1, 6);
  header.writeBigUInt64BE(7n, 8);
  header.writeBigUInt64BE(BigInt(offset), 16);
  header.writeUInt32BE(length, 24);
  return header;
}

test('writeTarget on an export: writes of 32 KiB and more land in the driver\'s memory, smaller ones are copied; the data round-trips', async (t) => {
  const c = counts(t);
  const exported = await exportDriver(t, [TARGET, c.path, '--size', '32M']);
  await assertRoundTrip(t, exported.uri, 32 * MiB);
  await must('fio', ['--name=v', '--ioengine=nbd', `--uri=${exported.uri}`, '--rw=randwrite', '--bsrange=4k-1M', '--iodepth=16', '--size=32M',
    '--verify=crc32c', '--verify_fatal=1', '--output-format=terse']);
  assert.equal(await exported.stop(), 0, exported.log());
  const { inPlace, copied } = c.read();
  assert.ok(inPlace > 0, `writes received in place: ${inPlace}`);
  assert.ok(copied > 0, `small writes copied: ${copied}`);
  assert.doesNotMatch(exported.log(), /writeTarget|error|fail/i);
});

test('writeTarget is not used through a filter, nor when it answers the wrong size or throws (logged once); the data is right all the same', async (t) => {
  const filtered = counts(t);
  const behind = await exportDriver(t, [TARGET, filtered.path, '--size', '16M', '--filter', 'offset:offset=1M']);
  await assertRoundTrip(t, behind.uri, 16 * MiB);
  assert.equal(await behind.stop(), 0, behind.log());
  assert.equal(filtered.read().inPlace, 0, 'no write lands in the inner driver\'s memory past a filter');

  for (const [behaviour, logged] of [['wrong-size', /writeTarget answered \d+ bytes for \d+ bytes/g], ['throws', /writeTarget threw \(no memory to offer\)/g]] as const) {
    const c = counts(t);
    const exported = await exportDriver(t, [TARGET, c.path, behaviour, '--size', '16M']);
    await assertRoundTrip(t, exported.uri, 16 * MiB);
    assert.equal(await exported.stop(), 0, exported.log());
    assert.equal(c.read().inPlace, 0, behaviour);
    assert.equal(exported.log().match(logged)?.length, 1, `logged once: ${exported.log()}`);
  }
});

test('a write whose data stops half-way: the export serves on, and the ram example\'s other data is intact', async (t) => {
  const exported = await exportDriver(t, ['ram', '--size', '16M']);
  const source = scratch('source');
  const back = scratch('back');
  t.after(() => {
    rmSync(source, { force: true });
    rmSync(back, { force: true });
  });
  const data = randomBytes(16 * MiB);
  writeFileSync(source, data);
  await must('nbdcopy', [source, exported.uri]);

  // 1 MiB announced at 4 MiB, 100 KiB sent: the rest goes straight to the ram's memory, then never comes.
  const cut = await transmitting(exported.socket);
  cut.socket.write(Buffer.concat([writeHeader(4 * MiB, MiB), randomBytes(100 << 10)]));
  await new Promise((resolve) => setTimeout(resolve, 200));
  cut.socket.destroy();
  await cut.closed;

  await must('nbdcopy', [exported.uri, back]);
  const read = readFileSync(back);
  assert.ok(read.subarray(0, 4 * MiB).equals(data.subarray(0, 4 * MiB)), 'before the cut write: intact');
  assert.ok(read.subarray(5 * MiB).equals(data.subarray(5 * MiB)), 'after it: intact');
  assert.equal(await exported.stop(), 0, exported.log());
});
