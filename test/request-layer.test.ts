// This test ensures that the request layer emulates what a driver lacks (FUA write as write +
// flush, write-same and write-zeroes through write), maps errors as BDUS does, turns an abort
// into one call of the abort hook, asks a driver's writeTarget only for writes that reach
// one callback whole, and answers a callback that returns without a promise at once. These paths cannot be reached through FUSE+loop (the kernel never sends
// FUA or write-same there), so they are exercised on the layer directly.
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { test } from 'node:test';
import { adjustAttributes } from '../src/driver/attributes.js';
import { abort, DriverError, type Context, type Driver } from '../src/index.js';
import { Exchange } from '../src/request/exchange.js';
import { RequestLayer } from '../src/request/request-layer.js';

/** An exchange that resolves with its answer: a request's outcome as a frontend gets it. */
class Answered extends Exchange {
  constructor(private readonly resolve: (errno: number) => void) {
    super();
  }
  answer(errno: number): void {
    this.resolve(errno);
  }
  finish(): void {}
}

function ask(start: (x: Exchange) => void): Promise<number> {
  return new Promise((resolve) => start(new Answered(resolve)));
}

const { EIO, ENOSPC, ENOLINK, ETIMEDOUT, EINVAL, EOPNOTSUPP } = constants.errno;

function layer(driver: Driver<any>, attrs = {}, { readOnly = false } = {}) {
  const calls: string[] = [];
  const aborts: Error[] = [];
  const logs: string[] = [];
  const attributes = adjustAttributes({ size: 1 << 20, maxConcurrentCallbacks: 4, ...attrs }, driver as Driver<never>);
  const ctx = { id: 1n, index: 0, path: '/dev/bdus-0', kernelPath: '', major: 0, minor: 0, attributes, isRerun: false, readOnly, state: calls } as Context<string[]>;
  const requests = new RequestLayer(driver, ctx, { abort: (e) => aborts.push(e), log: (line) => logs.push(line) });
  return { requests, calls, aborts, logs };
}

const recordingWriter: Driver<string[]> = {
  write(data, offset, ctx) {
    ctx.state.push(`write ${offset} ${data.length} ${data.every((b) => b === data[0]) ? data[0] : 'mixed'}`);
  },
  flush(ctx) {
    ctx.state.push('flush');
  },
};

test('FUA write without fuaWrite becomes write then flush', async () => {
  const { requests, calls } = layer(recordingWriter);
  assert.equal(await ask((x) => requests.fuaWrite(x, Buffer.alloc(4096, 7), 8192)), 0);
  assert.deepEqual(calls, ['write 8192 4096 7', 'flush']);
});

test('write-zeroes without writeZeros becomes writes of zeros, split to maxReadWriteSize', async () => {
  const { requests, calls } = layer(recordingWriter, { maxReadWriteSize: 65536 });
  assert.equal(await ask((x) => requests.writeZeros(x, 0, 131072 + 4096, false)), 0);
  assert.deepEqual(calls, ['write 0 65536 0', 'write 65536 65536 0', 'write 131072 4096 0']);
});

test('write-same without writeSame becomes writes of the repeated block', async () => {
  const { requests, calls } = layer(recordingWriter);
  assert.equal(await ask((x) => requests.writeSame(x, Buffer.alloc(512, 9), 1024, 2048)), 0);
  assert.deepEqual(calls, ['write 1024 2048 9']);
  assert.equal(await ask((x) => requests.writeSame(x, Buffer.alloc(100), 0, 512)), EINVAL, 'the block must be one logical block');
});

test('requests are checked before any callback runs', async () => {
  const { requests, calls } = layer(recordingWriter);
  assert.equal(await ask((x) => requests.write(x, Buffer.alloc(4096), 100)), EINVAL);
  assert.equal(await ask((x) => requests.write(x, Buffer.alloc(4096), (1 << 20) - 512)), EINVAL);
  assert.equal(await ask((x) => requests.writeZeros(x, 0, 0, true)), EINVAL);
  assert.equal(await ask((x) => requests.discard(x, 0, 4096)), EOPNOTSUPP);
  assert.deepEqual(calls, []);
});

test('errors map to ENOLINK, ENOSPC, ETIMEDOUT or EIO', async () => {
  const codes: Array<[unknown, number]> = [
    [new DriverError('ENOLINK'), ENOLINK],
    [new DriverError('ENOSPC'), ENOSPC],
    [Object.assign(new Error('x'), { code: 'ETIMEDOUT' }), ETIMEDOUT],
    [new DriverError('EPERM'), EIO],
    [new Error('bug'), EIO],
    ['a string', EIO],
    [undefined, EIO],
  ];
  for (const [thrown, errno] of codes) {
    const { requests } = layer({ read: () => Promise.reject(thrown) });
    assert.equal(await ask((x) => requests.read(x, Buffer.alloc(512), 0)), errno, String(thrown));
  }
});

test('an abort fails the request with EIO and calls the abort hook once; later requests fail', async () => {
  const { requests, aborts } = layer({ read: () => abort('broken'), write: () => undefined });
  assert.equal(await ask((x) => requests.read(x, Buffer.alloc(512), 0)), EIO);
  assert.equal(aborts.length, 1);
  assert.equal(aborts[0]!.message, 'broken');
  requests.abortAll();
  assert.equal(await ask((x) => requests.write(x, Buffer.alloc(512), 0)), EIO);
});

test('a callback that returns without a promise is answered before the entry point returns; a promise, after it; a retry may switch', async () => {
  let calls = 0;
  const { requests } = layer({
    read(buffer, offset) {
      calls++;
      if (offset === 0) {
        buffer.fill(1);
        return;
      }
      if (offset === 512) return Promise.resolve();
      // The first call fails at once, the second succeeds later: the slot is held throughout.
      if (calls % 2 === 1) throw new Error('a transient failure');
      return new Promise<void>((resolve) => setTimeout(resolve, 5));
    },
    write() {
      throw new DriverError('ENOSPC');
    },
  });
  const answers: number[] = [];
  const record = () => new Answered((errno) => answers.push(errno));
  requests.read(record(), Buffer.alloc(512), 0);
  requests.write(record(), Buffer.alloc(512), 0);
  requests.write(record(), Buffer.alloc(512), 100);
  assert.deepEqual(answers, [0, ENOSPC, EINVAL], 'answered synchronously: a success, a thrown error, a refused request');
  assert.equal(requests.inProgress, 0);
  const later = ask((x) => requests.read(x, Buffer.alloc(512), 512));
  assert.equal(requests.inProgress, 1);
  assert.equal(await later, 0);
  calls = 0;
  const retried = ask((x) => requests.read(x, Buffer.alloc(512), 1024));
  assert.equal(requests.inProgress, 1, 'the retry that went asynchronous still holds its slot');
  assert.equal(await retried, 0);
  assert.equal(calls, 2);
  assert.equal(requests.inProgress, 0);
});

test('at most maxConcurrentCallbacks callbacks run at once; drain waits for them', async () => {
  let active = 0;
  let most = 0;
  const { requests } = layer({
    async read() {
      most = Math.max(most, ++active);
      await new Promise((r) => setTimeout(r, 5));
      active--;
    },
  });
  const all = Array.from({ length: 20 }, (_, i) => ask((x) => requests.read(x, Buffer.alloc(512), i * 512)));
  const drained = requests.drain();
  assert.deepEqual(await Promise.all(all), Array(20).fill(0));
  await drained;
  assert.equal(most, 4);
  assert.equal(requests.inProgress, 0);
});

test('transfer retries (seed 000): a read or write failing with EIO is called again, up to transferTries calls', async () => {
  let failures = 0;
  const flaky: Driver<string[]> = {
    read(_buffer, offset, ctx) {
      ctx.state.push(`read ${offset}`);
      if (failures-- > 0) throw new Error('a transient failure');
    },
    write(_data, offset, ctx) {
      ctx.state.push(`write ${offset}`);
      throw new DriverError('ENOSPC');
    },
    flush(ctx) {
      ctx.state.push('flush');
      throw new Error('flushes are not transfers');
    },
  };
  const { requests, calls } = layer(flaky);
  failures = 4;
  assert.equal(await ask((x) => requests.read(x, Buffer.alloc(512), 0)), 0, 'the fifth call succeeds');
  assert.equal(calls.length, 5);
  calls.length = 0;
  failures = 5;
  assert.equal(await ask((x) => requests.read(x, Buffer.alloc(512), 0)), EIO, 'five failures: the client sees EIO');
  assert.equal(calls.length, 5);
  calls.length = 0;
  assert.equal(await ask((x) => requests.write(x, Buffer.alloc(512), 0)), ENOSPC);
  assert.equal(await ask((x) => requests.flush(x)), EIO);
  assert.deepEqual(calls, ['write 0', 'flush'], 'only EIO transfers are retried');

  const once = layer(flaky, { transferTries: 1 });
  failures = 1;
  assert.equal(await ask((x) => once.requests.read(x, Buffer.alloc(512), 0)), EIO);
  assert.equal(once.calls.length, 1);
});

test('a request whose callback never answers gets ETIMEDOUT after requestTimeout; its buffers stay the callback\'s until it ends', async () => {
  let finishRead!: () => void;
  const stuck: Driver<string[]> = {
    read(buffer, offset) {
      if (offset === 0) return new Promise<void>((resolve) => (finishRead = resolve));
      buffer.fill(1);
    },
  };
  const { requests } = layer(stuck, { requestTimeout: 200 });
  const alive = setTimeout(() => undefined, 5000); // the request timer alone does not keep a process alive
  let finished = false;
  const started = Date.now();
  const errno = await new Promise<number>((resolve) =>
    requests.read(
      new (class extends Exchange {
        answer(e: number) {
          resolve(e);
        }
        finish() {
          finished = true;
        }
      })(),
      Buffer.alloc(512),
      0,
    ),
  );
  const waited = Date.now() - started;
  assert.equal(errno, ETIMEDOUT);
  assert.ok(waited >= 200 && waited < 400, `answered after ${waited} ms (timeout 200 ms, slack a quarter)`);
  assert.equal(finished, false, 'the callback still holds the buffer');
  assert.equal(await ask((x) => requests.read(x, Buffer.alloc(512), 512)), 0, 'the next request is served');
  finishRead();
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(finished, true, 'finished once the callback ended, without a second answer');
  await requests.drain();
  clearTimeout(alive);
});

test('restart accounting: a request the frontend says was in flight across restartLimit driver deaths fails alone with EIO', async () => {
  const reads: number[] = [];
  const driver: Driver<string[]> = {
    read(buffer, offset) {
      reads.push(offset);
      buffer.fill(0);
    },
  };
  const { requests } = layer(driver, { restartLimit: 3 });
  const resent = (restarts: number, offset: number) =>
    ask((x) => {
      x.restarts = restarts;
      requests.read(x, Buffer.alloc(512), offset);
    });
  assert.equal(await resent(2, 0), 0, 'two deaths: served');
  assert.equal(await resent(3, 512), EIO, 'three deaths: fails alone');
  assert.equal(await resent(0, 1024), 0, 'the others are served');
  assert.deepEqual(reads, [0, 1024], 'the failed one never reached the driver');
  const failReceived = layer(driver, { restartLimit: 3, recoverable: true, recoveryMode: 'fail-received' }).requests;
  assert.equal(await ask((x) => ((x.restarts = 1), failReceived.read(x, Buffer.alloc(512), 0))), EIO, 'fail-received: one death is too many');
});

test('misbehaving callbacks are contained to their request: a sync throw, a rejection with a non-Error, a value of the wrong type', async () => {
  const odd: Driver<string[]> = {
    read(buffer, offset) {
      if (offset === 0) throw new Error('thrown before any await'); // synchronously
      if (offset === 512) return Promise.reject('a string, not an Error'); // eslint-disable-line prefer-promise-reject-errors
      if (offset === 1024) return Promise.reject(undefined); // eslint-disable-line prefer-promise-reject-errors
      if (offset === 1536) return Promise.reject(Object.assign(new Error('odd code'), { code: 42 }));
      if (offset === 2048) return 42 as unknown as void; // the wrong type: ignored, the read succeeds
      buffer.fill(1);
    },
  };
  const { requests, aborts } = layer(odd, { transferTries: 1 });
  const read = (offset: number) => ask((x) => requests.read(x, Buffer.alloc(512), offset));
  assert.equal(await read(0), EIO);
  assert.equal(await read(512), EIO);
  assert.equal(await read(1024), EIO);
  assert.equal(await read(1536), EIO);
  assert.equal(await read(2048), 0);
  assert.equal(await read(4096), 0, 'the requests after them are served');
  assert.deepEqual(aborts, []);
  assert.equal(requests.inProgress, 0, 'no slot is lost');
});

test("a read answered with the driver's own memory: taken by a frontend that sends it, copied for one that cannot or for a split read; the wrong size fails with EIO", async () => {
  const store = Buffer.alloc(1 << 20);
  for (let i = 0; i < store.length; i++) store[i] = (i * 7) & 0xff;
  const own: Driver<string[]> = {
    read(buffer, offset) {
      if (offset === 4096) return store.subarray(0, 512); // too short
      return store.subarray(offset, offset + buffer.length);
    },
  };
  const { requests } = layer(own, { transferTries: 1, maxReadWriteSize: 65536 });
  const sent = await new Promise<{ errno: number; x: Exchange }>((resolve) => {
    const x: Exchange = new Answered((errno) => resolve({ errno, x }));
    x.takesOwnData = true;
    requests.read(x, Buffer.alloc(8192), 8192);
  });
  assert.equal(sent.errno, 0);
  assert.ok(sent.x.ownData, 'the frontend that sends own memory gets it');
  assert.deepEqual(Buffer.from(sent.x.ownData!), store.subarray(8192, 16384));

  const copied = Buffer.alloc(8192);
  assert.equal(await ask((x) => requests.read(x, copied, 8192)), 0);
  assert.deepEqual(copied, store.subarray(8192, 16384), 'copied into the buffer where the frontend cannot send it (ublk)');

  const split = Buffer.alloc(196608);
  const whole = await new Promise<{ errno: number; x: Exchange }>((resolve) => {
    const x: Exchange = new Answered((errno) => resolve({ errno, x }));
    x.takesOwnData = true;
    requests.read(x, split, 65536);
  });
  assert.equal(whole.errno, 0);
  assert.equal(whole.x.ownData, undefined, 'a split read is assembled in its buffer');
  assert.deepEqual(split, store.subarray(65536, 65536 + 196608));

  assert.equal(await ask((x) => requests.read(x, Buffer.alloc(4096), 4096)), EIO, 'own memory of the wrong size fails the read');
  assert.equal(requests.inProgress, 0);
});

test('writeTarget is asked only for a write that reaches one callback whole; a wrong answer is not used, and logged once', async () => {
  const asked: string[] = [];
  const store = Buffer.alloc(1 << 20);
  const target: Driver<string[]> = {
    ...recordingWriter,
    writeTarget(offset, size) {
      asked.push(`${offset} ${size}`);
      return store.subarray(offset, offset + size);
    },
  };
  const { requests } = layer(target, { maxReadWriteSize: 65536 });
  const memory = requests.writeTarget(8192, 65536);
  assert.ok(memory && memory.buffer === store.buffer && memory.byteOffset === store.byteOffset + 8192, 'a view of the store');
  // Misaligned, outside the device, empty, past maxReadWriteSize: never asked.
  for (const [offset, size] of [[100, 4096], [(1 << 20) - 4096, 8192], [0, 0], [0, 131072]] as const) assert.equal(requests.writeTarget(offset, size), undefined);
  assert.deepEqual(asked, ['8192 65536']);

  // A read-only device, and a layer that stopped taking requests: not asked either.
  assert.equal(layer(target, {}, { readOnly: true }).requests.writeTarget(0, 4096), undefined);
  const stopped = layer(target);
  await stopped.requests.drain();
  assert.equal(stopped.requests.writeTarget(0, 4096), undefined);
  assert.deepEqual(asked, ['8192 65536']);

  const wrong = layer({ ...recordingWriter, writeTarget: (offset, size) => store.subarray(offset, offset + size - 512) });
  assert.equal(wrong.requests.writeTarget(0, 4096), undefined);
  assert.equal(wrong.requests.writeTarget(4096, 4096), undefined);
  assert.deepEqual(wrong.logs, ["writeTarget answered 3584 bytes for 4096 bytes: writes receive their data in bdus's buffers instead (logged once)"]);
});
