/**
 * A property-based fuzzer (fast-check) against the NBD export: malformed handshakes (bad
 * magics, unknown flags and options, lying lengths, truncated messages) and malformed requests
 * (unknown commands and flags, offsets and lengths out of range, truncated and oversized
 * payloads). Property: the server answers or hangs up cleanly, never crashes and never stops
 * serving: after every run a fresh connection completes a handshake and reads a block, and at
 * the end the data a real client wrote is intact. BDUS_FUZZ_RUNS changes the number of runs.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { assertRoundTrip, exportDriver, option, raw, readRequest, transmitting, untilQuiet } from './nbd-helpers.js';

const RUNS = Number(process.env.BDUS_FUZZ_RUNS ?? 500);
const SIZE = 16 << 20;
/** How long the server may stay silent before a run moves on (it may rightly wait for more bytes). */
const QUIET_MS = 20;

const IHAVEOPT = 0x49484156454f5054n;

/** An option whose length field may lie about its data. */
const anyOption = fc
  .record({
    magic: fc.oneof(fc.constant(IHAVEOPT), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
    code: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: 0xffffffff })),
    data: fc.uint8Array({ maxLength: 64 }),
    lie: fc.oneof(fc.constant(0), fc.integer({ min: -8, max: 8 }), fc.constant(0x7fffffff)),
  })
  .map(({ magic, code, data, lie }) => {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(magic, 0);
    header.writeUInt32BE(code, 8);
    header.writeUInt32BE(Math.max(0, Math.min(0xffffffff, data.length + lie)), 12);
    return Buffer.concat([header, Buffer.from(data)]);
  });

/** A well-formed GO or INFO for the default export, asking for some info types. */
const goOrInfo = fc.record({ go: fc.boolean(), infos: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }) }).map(({ go, infos }) => {
  const data = Buffer.alloc(6 + 2 * infos.length);
  data.writeUInt16BE(infos.length, 4);
  infos.forEach((type, i) => data.writeUInt16BE(type, 6 + 2 * i));
  return option(go ? 7 : 6, data);
});

const handshake = fc.record({
  flags: fc.oneof(fc.constant(3), fc.constant(1), fc.integer({ min: 0, max: 0xffffffff })),
  options: fc.array(fc.oneof(anyOption, goOrInfo, fc.constant(option(8)), fc.constant(option(3))), { maxLength: 6 }),
  garbage: fc.uint8Array({ maxLength: 32 }),
});

/** A request, possibly malformed; a write carries a payload whose size may not match. */
const anyRequest = fc
  .record({
    magic: fc.oneof({ weight: 8, arbitrary: fc.constant(0x25609513) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) }),
    flags: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })),
    type: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 0xffff })),
    offset: fc.oneof(fc.integer({ min: 0, max: SIZE / 512 }).map((n) => BigInt(n * 512)), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
    length: fc.oneof(fc.integer({ min: 0, max: 16 }).map((n) => n * 512), fc.integer({ min: 0, max: 0xffffffff })),
    payload: fc.integer({ min: -512, max: 0 }),
  })
  .map(({ magic, flags, type, offset, length, payload }) => {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(magic, 0);
    header.writeUInt16BE(type === 2 ? 0 : flags, 4); // DISC would just end the run early
    header.writeUInt16BE(type === 2 ? 0 : type, 6);
    header.writeBigUInt64BE(0x1234n, 8);
    header.writeBigUInt64BE(offset, 16);
    header.writeUInt32BE(length, 24);
    const sent = type === 1 ? Math.max(0, Math.min(length, 8192) + payload) : 0;
    return Buffer.concat([header, Buffer.alloc(sent, 0xa5)]);
  });

/** Sends `bytes`, then waits until the server hangs up or stays quiet. */
async function send(socketPath: string, bytes: Buffer[], afterGreeting = true): Promise<void> {
  const c = await raw(socketPath);
  if (afterGreeting) await c.next(18);
  for (const piece of bytes) c.socket.write(piece);
  await untilQuiet(c, QUIET_MS);
  c.socket.destroy();
}

/** A handshake (GO, simple replies) and one read: the export still serves. */
async function probe(socketPath: string): Promise<void> {
  const c = await transmitting(socketPath);
  c.socket.write(readRequest(7n, 0, 4096));
  const reply = await c.next(16 + 4096);
  assert.equal(reply.readUInt32BE(4), 0, 'the probe read succeeds');
  c.socket.destroy();
}

test('fuzzing the NBD handshake and transmission: answers or clean hang-ups, never a crash or a hang', { timeout: 600_000 }, async (t) => {
  const exported = await exportDriver(t, ['ram', '--size', '16M']);
  let messages = 0;

  await fc.assert(
    fc.asyncProperty(handshake, async ({ flags, options, garbage }) => {
      const flagBytes = Buffer.alloc(4);
      flagBytes.writeUInt32BE(flags >>> 0);
      await send(exported.socket, [flagBytes, ...options, Buffer.from(garbage)]);
      messages += 1 + options.length + (garbage.length > 0 ? 1 : 0);
      await probe(exported.socket);
    }),
    { numRuns: RUNS, seed: Number(process.env.BDUS_FUZZ_SEED ?? Date.now() % 2 ** 31) },
  );

  await fc.assert(
    fc.asyncProperty(fc.boolean(), fc.array(anyRequest, { minLength: 1, maxLength: 8 }), async (structured, requests) => {
      const hello = [Buffer.from([0, 0, 0, 3]), ...(structured ? [option(8)] : []), option(7, Buffer.alloc(6))];
      const c = await raw(exported.socket);
      await c.next(18);
      c.socket.write(Buffer.concat(hello));
      // Option replies: STRUCTURED_REPLY's ACK, then GO's INFOs and ACK.
      for (let done = false; !done; ) {
        const header = await c.next(20);
        await c.next(header.readUInt32BE(16));
        done = header.readUInt32BE(8) === 7 && header.readUInt32BE(12) === 1;
      }
      for (const request of requests) c.socket.write(request);
      await untilQuiet(c, QUIET_MS);
      c.socket.destroy();
      messages += hello.length + requests.length;
      await probe(exported.socket);
    }),
    { numRuns: RUNS, seed: Number(process.env.BDUS_FUZZ_SEED ?? Date.now() % 2 ** 31) },
  );

  t.diagnostic(`the fuzzer sent ${messages} messages in ${2 * RUNS} connections`);
  assert.ok(messages > RUNS, `${messages} messages`);

  // The data a real client writes afterwards is intact.
  await assertRoundTrip(t, exported.uri, SIZE);
  assert.doesNotMatch(exported.log(), /TypeError|RangeError|uncaught/i, 'no crash logged');
});
