// This test ensures that every attribute rule of BDUS holds: defaults for 0, values lowered but
// never raised, 0 when the callbacks are absent, and a clear refusal naming attribute, value, rule.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { adjustAttributes, ATTRIBUTE_NAMES, checkReplacement, inheritAttributes, PAGE_SIZE, RECOVERY_MODES, setDeviceSize, type Attributes } from '../src/driver/attributes.js';
import { REQUEST_CALLBACKS, requestCallbacks } from '../src/driver/callbacks.js';
import { AttributeError, BdusError, type Driver } from '../src/index.js';
import { attributesFromFlags, flagName } from '../src/cli/options.js';

const noop = () => undefined;
const full: Driver<never> = { read: noop, write: noop, writeSame: noop, writeZeros: noop, fuaWrite: noop, flush: noop, discard: noop, secureErase: noop };
const MiB = 1 << 20;

function refused(attrs: Attributes, pattern: RegExp, driver: Driver<never> = full): void {
  assert.throws(() => adjustAttributes(attrs, driver), (e: unknown) => e instanceof AttributeError && pattern.test(e.message) && e.code === 'EINVAL');
}

test('defaults fill in zero and omitted values', () => {
  const a = adjustAttributes({ size: MiB }, full);
  assert.equal(a.logicalBlockSize, 512);
  assert.equal(a.physicalBlockSize, 512);
  assert.equal(a.maxConcurrentCallbacks, 1);
  assert.equal(a.maxReadWriteSize, MiB);
  assert.equal(a.maxWriteSameSize, 1 << 30);
  assert.equal(a.maxWriteZerosSize, 1 << 30);
  assert.equal(a.maxDiscardEraseSize, 1 << 30);
  assert.equal(a.disablePartitionScanning, false);
  assert.equal(a.recoverable, false);
  assert.equal(a.recoveryMode, 'reissue');
  assert.equal(a.restartLimit, 10);
  assert.equal(a.recoveryLimit, 2);
  assert.equal(a.transferTries, 5);
  assert.equal(a.log, false);
  assert.deepEqual(adjustAttributes({ size: MiB, logicalBlockSize: 0, physicalBlockSize: 0, maxConcurrentCallbacks: 0 }, full), a);
});

test('physicalBlockSize 0 means the logical block size', () => {
  assert.equal(adjustAttributes({ size: MiB, logicalBlockSize: 4096 }, full).physicalBlockSize, 4096);
});

test('logicalBlockSize must be a power of two from 512 to the page size', () => {
  for (const v of [256, 1000, 2 * PAGE_SIZE, -512, 1.5]) refused({ size: MiB, logicalBlockSize: v }, /logicalBlockSize/);
  for (const v of [512, 1024, 2048, 4096]) assert.equal(adjustAttributes({ size: MiB, logicalBlockSize: v }, full).logicalBlockSize, v);
});

test('physicalBlockSize must be a power of two from the logical block size to the page size', () => {
  refused({ size: MiB, logicalBlockSize: 1024, physicalBlockSize: 512 }, /physicalBlockSize=512: must be 0 or a power of two from logicalBlockSize \(1024\)/);
  refused({ size: MiB, physicalBlockSize: 3072 }, /physicalBlockSize=3072/);
  refused({ size: MiB, physicalBlockSize: 2 * PAGE_SIZE }, /physicalBlockSize/);
  assert.equal(adjustAttributes({ size: MiB, physicalBlockSize: 4096 }, full).physicalBlockSize, 4096);
});

test('size must be a positive multiple of the physical block size', () => {
  refused({}, /the device needs a size: this driver gives none/);
  refused({ size: 1000 }, /size=1000/);
  refused({ size: MiB + 512, physicalBlockSize: 4096 }, /size=1049088: .*\(4096\)/);
  refused({ size: -4096 }, /size=-4096: must be a non-negative integer/);
  refused({ size: 2 ** 60 }, /size=/);
});

test('maxConcurrentCallbacks: 0 means 1, lowered to at most 256, never raised', () => {
  assert.equal(adjustAttributes({ size: MiB, maxConcurrentCallbacks: 7 }, full).maxConcurrentCallbacks, 7);
  assert.equal(adjustAttributes({ size: MiB, maxConcurrentCallbacks: 100000 }, full).maxConcurrentCallbacks, 256);
  refused({ size: MiB, maxConcurrentCallbacks: -1 }, /maxConcurrentCallbacks=-1/);
});

test('maxReadWriteSize: 0 or at least the page size; lowered, never raised; 0 without read/write/fuaWrite', () => {
  refused({ size: MiB, maxReadWriteSize: PAGE_SIZE - 512 }, /maxReadWriteSize=3584: must be 0 or at least the page size \(4096\)/);
  assert.equal(adjustAttributes({ size: MiB, maxReadWriteSize: 65536 }, full).maxReadWriteSize, 65536);
  assert.equal(adjustAttributes({ size: MiB, maxReadWriteSize: 65536 + 100 * 512 + 100 }, full).maxReadWriteSize % 512, 0);
  assert.ok(adjustAttributes({ size: MiB, maxReadWriteSize: 2 ** 40 }, full).maxReadWriteSize < 2 ** 40);
  assert.equal(adjustAttributes({ size: MiB, maxReadWriteSize: 65536 }, { discard: noop }).maxReadWriteSize, 0);
});

test('range max sizes: 0 or at least the logical block size; 0 without their callbacks', () => {
  for (const name of ['maxWriteSameSize', 'maxWriteZerosSize', 'maxDiscardEraseSize'] as const) {
    refused({ size: MiB, logicalBlockSize: 4096, [name]: 512 }, new RegExp(`${name}=512: must be 0 or at least logicalBlockSize \\(4096\\)`));
    assert.equal(adjustAttributes({ size: MiB, [name]: 8192 }, full)[name], 8192);
    assert.equal(adjustAttributes({ size: MiB, [name]: 8192 }, { read: noop })[name], 0);
  }
  assert.equal(adjustAttributes({ size: MiB }, { secureErase: noop }).maxDiscardEraseSize, 1 << 30);
});

test('flags must be booleans', () => {
  for (const name of ['disablePartitionScanning', 'recoverable', 'log'] as const) {
    refused({ size: MiB, [name]: 'yes' } as unknown as Attributes, new RegExp(`${name}=yes: must be true or false`));
    assert.equal(adjustAttributes({ size: MiB, [name]: true }, full)[name], true);
  }
});

test('unknown attributes are refused by name', () => {
  refused({ size: MiB, sise: 5 } as unknown as Attributes, /unknown attribute 'sise'/);
});

test('a fuaWrite callback needs a flush callback', () => {
  refused({ size: MiB }, /fuaWrite callback must also have a flush callback/, { write: noop, fuaWrite: noop });
});

test('the adjusted attributes are read-only but for the size, which only a resize changes', () => {
  const attributes = adjustAttributes({ size: MiB }, full);
  assert.ok(Object.isSealed(attributes));
  assert.throws(() => ((attributes as { logicalBlockSize: number }).logicalBlockSize = 4096), TypeError);
  setDeviceSize(attributes, 2 * MiB);
  assert.equal(attributes.size, 2 * MiB);
});

test('recovery settings: modes and limits are checked', () => {
  refused({ size: MiB, recoveryMode: 'sometimes' as never }, /^invalid attribute recoveryMode=sometimes: must be one of reissue, fail-received, fail-all$/);
  refused({ size: MiB, restartLimit: 1001 }, /^invalid attribute restartLimit=1001: must be at most 1000$/);
  refused({ size: MiB, transferTries: -1 }, /^invalid attribute transferTries=-1: must be a non-negative integer$/);
  assert.equal(adjustAttributes({ size: MiB, transferTries: 1 }, full).transferTries, 1);
});

test('a rerun inherits what it leaves out, and must fit the device (BDUS)', () => {
  const device = adjustAttributes({ size: 64 * MiB, maxConcurrentCallbacks: 8, recoverable: true }, full);
  const inherited = adjustAttributes(inheritAttributes({ maxConcurrentCallbacks: 2 }, device), full);
  assert.equal(inherited.size, 64 * MiB);
  assert.equal(inherited.recoverable, true);
  assert.equal(inherited.maxConcurrentCallbacks, 2, 'driver-instance attributes may change');
  const all = requestCallbacks(full);
  checkReplacement(device, all, inherited, all);
  const bigger = adjustAttributes(inheritAttributes({ size: 128 * MiB }, device), full);
  assert.throws(() => checkReplacement(device, all, bigger, all), /size must stay 67108864 \(got 134217728\)/);
  const smaller = adjustAttributes(inheritAttributes({ maxReadWriteSize: 64 * 1024 }, device), full);
  assert.throws(() => checkReplacement(device, all, smaller, all), /maxReadWriteSize must be at least 1048576 \(got 65536\)/);
  const readOnly: Driver<never> = { read: noop };
  assert.throws(
    () => checkReplacement(device, all, adjustAttributes(inheritAttributes({}, device), readOnly), requestCallbacks(readOnly)),
    /lacks the write, writeSame, writeZeros, fuaWrite, flush, discard, secureErase callbacks the current driver has/,
  );
  // ublk raises the queues to the lanes (a lane serves whole queues), which a rerun cannot.
  const laneSafe = { ...full, laneSafe: true };
  const oneQueue = adjustAttributes({ size: 64 * MiB }, laneSafe);
  const twoLanes = adjustAttributes(inheritAttributes({ lanes: 2, queues: 2 }, oneQueue), laneSafe);
  assert.throws(() => checkReplacement(oneQueue, all, twoLanes, all), /the device has 1 hardware queue and a lane serves whole queues: give --lanes 1 or fewer/);
});

/**
 * The attribute space, fuzzed (fast-check): any attributes (known names with values of any type
 * and size, unknown names) for any set of callbacks, through the CLI's flag parsing too. Each is
 * either refused with an AttributeError or BdusError that names what is wrong, or adjusted into
 * attributes that keep every rule; adjusting those again changes nothing. BDUS_FUZZ_RUNS
 * (default 20000 here: it runs in-process).
 */
test('fuzzing the attribute space: a clear refusal, or attributes that keep every rule and are a fixed point', () => {
  const runs = Number(process.env.BDUS_FUZZ_RUNS ?? 20_000);
  const names = [...ATTRIBUTE_NAMES];
  const interesting = fc.oneof(
    fc.constantFrom(0, 1, 511, 512, 513, 1024, 4096, 8192, PAGE_SIZE, 2 * PAGE_SIZE, MiB, 32 * MiB, 64 * MiB, 2 ** 30, 2 ** 31, 2 ** 53 - 1, 2 ** 53, -1, -512, 0.5, NaN, Infinity),
    fc.integer({ min: 0, max: 2 ** 40 }).map((n) => n * 512),
    fc.nat(),
    fc.boolean(),
    fc.constantFrom('reissue', 'fail-received', 'fail-all', 'retry', '', '512'),
    fc.anything({ withNullPrototype: true, withBoxedValues: true, withBigInt: true, withObjectString: true }),
  );
  const attributes = fc.dictionary(fc.oneof({ weight: 12, arbitrary: fc.constantFrom(...names) }, { weight: 1, arbitrary: fc.string() }), interesting, { maxKeys: 8 });
  const driver = fc.subarray([...REQUEST_CALLBACKS]).map((has) => Object.fromEntries(has.map((name) => [name, noop])) as Driver<never>);
  const isPowerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0;
  let adjusted = 0;
  fc.assert(
    fc.property(attributes, driver, (attrs, d) => {
      let a;
      try {
        a = adjustAttributes(attrs as Attributes, d);
      } catch (error) {
        assert.ok(error instanceof BdusError, `not a BdusError: ${String(error)}`);
        assert.equal(error.code, 'EINVAL');
        assert.match(error.message, /^(invalid attribute \w+=|unknown attribute '|the device needs a size|invalid driver: )/);
        return;
      }
      adjusted++;
      const has = requestCallbacks(d);
      assert.ok(isPowerOfTwo(a.logicalBlockSize) && a.logicalBlockSize >= 512 && a.logicalBlockSize <= PAGE_SIZE);
      assert.ok(isPowerOfTwo(a.physicalBlockSize) && a.physicalBlockSize >= a.logicalBlockSize && a.physicalBlockSize <= PAGE_SIZE);
      assert.ok(Number.isSafeInteger(a.size) && a.size > 0 && a.size % a.physicalBlockSize === 0);
      assert.ok(a.maxConcurrentCallbacks >= 1 && a.maxConcurrentCallbacks <= 256);
      const rw = has.some((c) => c === 'read' || c === 'write' || c === 'fuaWrite');
      assert.ok(rw ? a.maxReadWriteSize >= PAGE_SIZE && a.maxReadWriteSize <= 32 * MiB : a.maxReadWriteSize === 0);
      for (const name of ['maxReadWriteSize', 'maxWriteSameSize', 'maxWriteZerosSize', 'maxDiscardEraseSize'] as const) {
        assert.equal(a[name] % a.logicalBlockSize, 0, name);
        assert.ok(a[name] <= 2 ** 30, name);
      }
      assert.ok(a.requestTimeout >= 1 && a.requestTimeout <= 7 * 24 * 3600_000);
      assert.ok(a.queues >= 1 && a.queues <= 64);
      for (const name of ['restartLimit', 'recoveryLimit', 'transferTries'] as const) assert.ok(a[name] >= 1 && a[name] <= 1000, name);
      assert.ok((RECOVERY_MODES as readonly string[]).includes(a.recoveryMode));
      assert.ok(!has.includes('fuaWrite') || has.includes('flush'));
      assert.deepEqual(adjustAttributes({ ...a }, d), a, 'adjusting again changes nothing');
    }),
    { numRuns: runs, seed: Number(process.env.BDUS_FUZZ_SEED ?? Date.now() % 2 ** 31) },
  );
  assert.ok(adjusted > 0, 'some attributes were valid');

  // The CLI's flags: any words for any attribute flag parse into attributes or a clear error.
  const flags = fc.dictionary(fc.constantFrom(...names.map(flagName)), fc.oneof(fc.string(), fc.constantFrom('16M', '4k', '1G', '30s', '1500ms', '2m', '0', '-1', '1e3', '99999999999999999999P', ' 8M ', '1.5s', 'fail-all'), fc.boolean()), { maxKeys: 6 });
  fc.assert(
    fc.property(flags, driver, (values, d) => {
      try {
        adjustAttributes(attributesFromFlags(values), d);
      } catch (error) {
        assert.ok(error instanceof BdusError, `not a BdusError: ${String(error)}`);
        assert.match(error.message, /invalid|unknown|needs a size/);
      }
    }),
    { numRuns: runs },
  );
});
