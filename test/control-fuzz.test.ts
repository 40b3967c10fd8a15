/**
 * A property-based fuzzer (fast-check) against the daemon's control protocol, as a local root
 * client sees it: lines that are not JSON, JSON that is no message, every operation of the
 * schema with fields of the right type, of any type or missing, ids of devices that do not
 * exist and of one that does (the witness, owned by another connection), sequences in any order
 * (a `create` then `available` then `gone`, a `handover` nobody asked for), partial and
 * oversized lines. Property: every run leaves the daemon answering (the same daemon: no
 * restart), the witness device untouched and serving, no device of the fuzzer's left behind
 * once its connection closed, and no unexpected exception in the daemon's log.
 *
 * Left out on purpose: `shutdown`, and `destroy`, `wait`, `resize` and `rerun` of the witness:
 * the daemon rightly obeys those from root. BDUS_FUZZ_RUNS (default 300), BDUS_FUZZ_SEED.
 */
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { test } from 'node:test';
import fc from 'fast-check';
import { daemonVersion, destroyDevice, deviceInfo, listDevices } from '../src/index.js';
import { DAEMON_LOG_PATH, SOCKET_PATH } from '../src/control/protocol.js';
import { SCHEMA } from '../src/control/schema.js';
import { device, must, sh, sleep } from './helpers.js';

const RUNS = Number(process.env.BDUS_FUZZ_RUNS ?? 300);
const SEED = Number(process.env.BDUS_FUZZ_SEED ?? Date.now() % 2 ** 31);
/** How long the daemon may stay silent before a run moves on (a `wait` rightly answers late). */
const QUIET_MS = 30;

type FieldType = 'id' | 'uint' | 'uints' | 'name' | 'text' | 'flag' | 'names' | 'object';

/** Operations whose effect on the witness is the daemon's duty to carry out: never aimed at it. */
const OBEYED = new Set(['destroy', 'wait', 'resize', 'rerun']);

function messages(witness: string): fc.Arbitrary<string> {
  const anyId = fc.oneof(fc.bigInt({ min: 1n, max: 2n ** 64n - 1n }).map(String), fc.constantFrom('0', '-1', 'abc', '1e3', ' 1', '18446744073709551616'));
  const valid = (type: FieldType, op: string): fc.Arbitrary<unknown> => {
    switch (type) {
      case 'id':
        return OBEYED.has(op) ? anyId : fc.oneof(anyId, fc.constant(witness));
      case 'uint':
        return fc.oneof(fc.nat({ max: 1 << 20 }), fc.constantFrom(0, 1, 7, 43, 259, 2 ** 53 - 1));
      case 'uints':
        return fc.array(fc.oneof(fc.nat({ max: 1 << 20 }), fc.constantFrom(0, 1, 2, 1023)), { maxLength: 70 });
      case 'name':
        return fc.oneof(fc.string({ minLength: 1 }), fc.constantFrom('fuse', 'nbd', 'ublk', '/dev/null', '/dev/bdus-0', '../x'));
      case 'text':
        return fc.string();
      case 'flag':
        return fc.boolean();
      case 'names':
        return fc.array(fc.oneof(fc.string(), fc.constantFrom('read', 'write', 'flush', 'discard')), { maxLength: 6 });
      case 'object':
        return fc.dictionary(
          fc.oneof(fc.string(), fc.constantFrom('size', 'logicalBlockSize', 'recoverable', 'maxConcurrentCallbacks', 'requestTimeout', '__proto__')),
          fc.oneof(fc.anything(), fc.nat(), fc.constantFrom(16 << 20, 4096, 512, true)),
          { maxKeys: 4 },
        );
    }
  };
  const operations = Object.keys(SCHEMA).filter((op) => op !== 'shutdown');
  const wellTyped = fc.constantFrom(...operations).chain((op) => {
    const fields = Object.entries(SCHEMA[op as keyof typeof SCHEMA] as Record<string, string>);
    const record: Record<string, fc.Arbitrary<unknown>> = {};
    for (const [name, field] of fields) {
      const type = field.replace('?', '') as FieldType;
      // Mostly the right type; sometimes anything at all, or missing.
      record[name] = fc.oneof({ weight: 6, arbitrary: valid(type, op) }, { weight: 1, arbitrary: fc.anything() }, { weight: 1, arbitrary: fc.constant(undefined) });
    }
    return fc.record({ seq: fc.oneof(fc.nat(), fc.anything()), fields: fc.record(record) }).map(({ seq, fields: values }) => JSON.stringify({ seq, op, ...values }));
  });
  return fc.oneof(
    { weight: 8, arbitrary: wellTyped },
    { weight: 1, arbitrary: fc.string().map((s) => s.replace(/\n/g, ' ')) },
    { weight: 1, arbitrary: fc.jsonValue().map((v) => JSON.stringify(v)) },
    { weight: 1, arbitrary: fc.record({ seq: fc.anything(), op: fc.anything() }).map((m) => JSON.stringify(m) ?? '{}') },
  );
}

/** Sends the lines (the last one maybe cut short, or far too long), then waits until the daemon goes quiet or hangs up. */
function send(lines: string[], ending: 'newline' | 'cut' | 'oversized'): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(SOCKET_PATH);
    let text = '';
    let timer: NodeJS.Timeout | undefined;
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(text);
    };
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      text += d;
      clearTimeout(timer);
      timer = setTimeout(finish, QUIET_MS);
    });
    socket.on('error', (error) => reject(error));
    socket.on('close', finish);
    socket.on('connect', () => {
      const body = lines.join('\n');
      if (ending === 'newline') socket.write(`${body}\n`);
      else if (ending === 'cut') socket.write(body.slice(0, Math.max(0, body.length - 3)));
      else socket.write(`${body}\n{"seq":1,"op":"${'x'.repeat((1 << 20) + 10)}`);
      timer = setTimeout(finish, QUIET_MS * 4);
    });
  });
}

test('fuzzing the control protocol: clear answers or a closed connection, the daemon and the other devices untouched', { timeout: 900_000 }, async (t) => {
  const dev = await device(t, ['ram', '--size', '16M']);
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', 'count=16', 'oflag=direct', 'status=none']);
  const before = await must('sha256sum', [dev]);
  const witness = await deviceInfo(dev);
  const daemon = (await daemonVersion())!;
  const logStart = statSync(DAEMON_LOG_PATH).size;
  let sent = 0;

  await fc.assert(
    fc.asyncProperty(fc.array(messages(String(witness.id)), { minLength: 1, maxLength: 8 }), fc.constantFrom('newline', 'newline', 'newline', 'cut', 'oversized'), async (lines, ending) => {
      await send(lines, ending);
      sent += lines.length;
      // The same daemon answers, and knows the witness as it was.
      const now = await daemonVersion();
      assert.equal(now?.pid, daemon.pid, 'the daemon did not restart');
      let devices = await listDevices();
      const again = devices.find((d) => d.id === witness.id);
      assert.equal(again?.state, 'available', 'the witness is still available');
      assert.equal(again?.pid, witness.pid, 'and still has its driver');
      // Devices the fuzzer created go with its connection; give the daemon a moment, then insist.
      for (let i = 0; i < 40 && devices.length > 1; i++) {
        await sleep(50);
        devices = await listDevices();
      }
      for (const other of devices.filter((d) => d.id !== witness.id)) {
        await destroyDevice(other.id, { force: true }).catch(() => undefined);
        throw new Error(`a device of the fuzzer's outlived its connection: ${JSON.stringify(other)}`);
      }
    }),
    { numRuns: RUNS, seed: SEED, interruptAfterTimeLimit: 600_000 },
  );

  t.diagnostic(`${sent} control messages in ${RUNS} connections (seed ${SEED})`);
  assert.equal(await must('sha256sum', [dev]), before, "the witness's data is intact");
  const log = readFileSync(DAEMON_LOG_PATH, 'utf8').slice(logStart);
  assert.doesNotMatch(log, / failed: .*\n\s+at /, 'no unexpected exception in the daemon');
  assert.equal((await sh('dd', ['if=/dev/zero', `of=${dev}`, 'bs=4k', 'count=4', 'oflag=direct', 'status=none'])).code, 0, 'the witness still takes writes');
});
