/**
 * A property-based fuzzer (fast-check) against the NBD export: malformed handshakes (bad
 * magics, unknown flags and options, lying lengths, truncated messages) and malformed requests
 * (unknown commands and flags, offsets and lengths out of range, truncated and oversized
 * payloads). Property: the server answers or hangs up cleanly, never crashes and never stops
 * serving: after every run a fresh connection completes a handshake and reads a block, and at
 * the end the data a real client wrote is intact. The TLS state machine gets its own runs:
 * options in the clear, STARTTLS at any point, then garbage instead of a TLS handshake, a wrong
 * key, or a real TLS-PSK handshake followed by more random options (STARTTLS again among them).
 * BDUS_FUZZ_RUNS changes the number of runs (default 500 of each); the diagnostic line counts
 * the messages sent. docs/nbd.md records a long run.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import fc from 'fast-check';
import { must, scratch } from './helpers.js';
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

/** A TLS run: options in the clear, STARTTLS, then what the client does where TLS should start. */
const tlsRun = fc.record({
  clear: fc.array(fc.oneof(anyOption, fc.constant(option(8)), fc.constant(option(6, Buffer.alloc(6)))), { maxLength: 3 }),
  then: fc.constantFrom('garbage', 'wrong key', 'right key', 'right key'),
  garbage: fc.uint8Array({ minLength: 1, maxLength: 64 }),
  inside: fc.array(fc.oneof(anyOption, goOrInfo, fc.constant(option(8)), fc.constant(option(5))), { maxLength: 5 }),
});

test('fuzzing the TLS state machine: STARTTLS anywhere, garbage or a wrong key where TLS starts, random options inside', { timeout: 600_000 }, async (t) => {
  const keys = scratch('fuzz.psk');
  const key = randomBytes(32);
  writeFileSync(keys, `alice:${key.toString('hex')}\n`);
  t.after(() => rmSync(keys, { force: true }));
  const exported = await exportDriver(t, ['ram', '--size', '16M', '--tls', 'on', '--tls-psk', keys]);
  let messages = 0;
  let secured = 0;

  await fc.assert(
    fc.asyncProperty(tlsRun, async ({ clear, then, garbage, inside }) => {
      const c = await raw(exported.socket);
      await c.next(18);
      c.socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), ...clear, option(5)]));
      messages += 2 + clear.length;
      await untilQuiet(c, QUIET_MS);
      if (c.socket.destroyed) return probe(exported.socket);
      if (then === 'garbage') {
        c.socket.write(Buffer.from(garbage));
        messages++;
        await untilQuiet(c, QUIET_MS);
        c.socket.destroy();
        return probe(exported.socket);
      }
      c.socket.removeAllListeners('data');
      const psk = then === 'right key' ? key : randomBytes(32);
      const secure = tlsConnect({ socket: c.socket, pskCallback: () => ({ psk, identity: 'alice' }), checkServerIdentity: () => undefined });
      const up = await new Promise<boolean>((resolve) => {
        secure.once('secureConnect', () => resolve(true));
        secure.once('error', () => resolve(false));
        secure.once('close', () => resolve(false));
        setTimeout(() => resolve(false), 2000);
      });
      if (then === 'wrong key') assert.equal(up, false, 'a wrong key never gets TLS up');
      if (up) {
        secured++;
        for (const message of inside) secure.write(message);
        messages += inside.length;
        await new Promise<void>((resolve) => {
          let timer = setTimeout(resolve, QUIET_MS * 4);
          secure.on('data', () => {
            clearTimeout(timer);
            timer = setTimeout(resolve, QUIET_MS);
          });
          secure.once('close', () => resolve());
          secure.on('error', () => undefined);
        });
      }
      secure.destroy();
      c.socket.destroy();
      await probe(exported.socket);
    }),
    { numRuns: RUNS, seed: Number(process.env.BDUS_FUZZ_SEED ?? Date.now() % 2 ** 31) },
  );

  t.diagnostic(`the TLS fuzzer sent ${messages} messages in ${RUNS} connections, ${secured} of them with TLS up`);
  assert.ok(secured > 0, 'some runs got TLS up');
  const uri = `${exported.uri.replace(/^nbd\+unix:\/\//, 'nbds+unix://alice@')}&tls-psk-file=${keys}`;
  assert.match(await must('nbdinfo', [uri]), /with TLS/, 'a real TLS client still gets in');
  assert.doesNotMatch(exported.log(), /TypeError|RangeError|uncaught/i, 'no crash logged');
});
