// This test ensures that the command line of `bdus run`, `rerun` and `export` cannot make the CLI
// loop or fork without end, that `--` hands everything after it to the driver, that a driver
// module's declared options are parsed and shown in --help, and that mistakes get a suggestion.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { bdus, device, DRIVERS, records, scratch, sleep } from './helpers.js';

/** Pids of the processes whose environment carries `mark` (children inherit it, detached or not). */
function marked(mark: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/environ`, 'latin1').split('\0').includes(mark)) pids.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

function killAll(mark: string): void {
  for (const pid of marked(mark)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
}

test('`bdus run ... -- ARGS` starts one driver process, not a chain of them', async (t) => {
  const mark = `BDUS_TEST_MARK=${process.pid}-${Date.now()}`;
  const env = { ...process.env, [mark.split('=')[0]!]: mark.split('=')[1]! };
  t.after(() => killAll(mark)); // whatever the outcome, nothing of this test survives it
  await bdus(['daemon', 'start']); // started on demand it would carry the mark too
  const r = await bdus(['run', 'zero', '--size', '1M', '--', 'foo', '--foreground'], { env, timeoutMs: 30_000 });
  assert.equal(r.code, 0, r.stderr);
  const dev = r.stdout.trim();
  t.after(() => bdus(['destroy', '--force', dev]));
  // A chain would grow by one process every few hundred milliseconds: watch it for a while.
  for (let i = 0; i < 10; i++) {
    await sleep(200);
    assert.deepEqual(marked(mark).length, 1, 'exactly one process: the background driver');
  }
  assert.equal((await bdus(['destroy', dev])).code, 0);
});

test("a driver's own options, `--` and the positional arguments reach the driver as given", async (t) => {
  const file = scratch('options.jsonl');
  const dev = await device(t, [`${DRIVERS}/options.js`, 'one', '--record', file, '-v', '--tag', 'a', '--tag=b', '--size', '32M', '--', '--size', 'two']);
  const [entry] = records(file);
  assert.deepEqual(entry!.args, ['one', '--size', 'two']);
  assert.deepEqual(entry!.values, { record: file, verbose: true, tag: ['a', 'b'] });
  const list = await bdus(['info', dev, '--driver', '--size']);
  assert.equal(list.stdout, `${DRIVERS}/options.js one --record ${file} -v --tag a --tag=b --size 32M -- --size two\n${32 << 20}\n`);
});

test("`bdus run DRIVER --help` lists the driver's usage and options; --help after -- is the driver's", async () => {
  const help = await bdus(['run', `${DRIVERS}/options.js`, '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^usage: bdus run /);
  assert.match(help.stdout, /driver .*options\.js \[WORDS\.\.\.\] \[driver options\]\n {2}records its command line/);
  assert.match(help.stdout, /-v, --verbose +a flag/);
  assert.match(help.stdout, /--record VALUE +the file to record to/);
  const loop = await bdus(['export', 'loop', '-h']);
  assert.match(loop.stdout, /driver loop PATH \[driver options\]\n {2}a file or block device/);
  // After `--`, --help is the driver's argument: the command goes on (and fails on the missing size).
  const passed = await bdus(['run', `${DRIVERS}/options.js`, '--size', '0', '--', '--help']);
  assert.equal(passed.code, 1);
  assert.match(passed.stderr, /the device needs a size/);
});

test('mistyped options and commands get a suggestion; -q works; a missing size says so', async () => {
  const flag = await bdus(['run', 'ram', '--sise', '1G']);
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /unknown option '--sise'; did you mean '--size'\?/);
  const driverFlag = await bdus(['run', `${DRIVERS}/options.js`, '--recrod', 'x']);
  assert.match(driverFlag.stderr, /unknown option '--recrod'; did you mean '--record'\?/);
  const before = await bdus(['run', '--recrod', 'x', `${DRIVERS}/options.js`]);
  assert.equal(before.code, 2);
  assert.match(before.stderr, /unknown option '--recrod'/);
  const command = await bdus(['destory', '/dev/bdus-0']);
  assert.match(command.stderr, /unknown command 'destory'; did you mean 'destroy'\?/);
  const quiet = await bdus(['destroy', '-q', '987654321']);
  assert.match(quiet.stderr, /no device has id 987654321/);
  const size = await bdus(['run', `${DRIVERS}/options.js`, '--size', '0', '--foreground']);
  assert.equal(size.code, 1);
  assert.match(size.stderr, /^bdus: error: the device needs a size: this driver gives none, so give one \(bdus run DRIVER --size SIZE/);
});

test('validate and initialize failures are named; nothing is left', async () => {
  const refused = await bdus(['run', `${DRIVERS}/options.js`, '--refuse']);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /^bdus: error: the driver's validate failed: this configuration is refused$/m);
  const failed = await bdus(['run', `${DRIVERS}/options.js`, '--fail-init']);
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /^bdus: error: the driver's initialize failed: the store is unreachable$/m);
  assert.equal((await bdus(['list'])).stdout, '');
});

test('a TypeScript driver runs where Node or the project can load it, or the error says what to do', async (t) => {
  const file = `${scratch('driver')}.ts`;
  writeFileSync(file, "const size: number = 1 << 20;\nexport default { attributes: { size }, read(b: Buffer) { b.fill(0); } };\n");
  try {
    if ((process.features as { typescript?: unknown }).typescript) {
      await device(t, [file]);
    } else {
      const r = await bdus(['run', file]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /does not run TypeScript by itself\. Either compile it \(npx tsc\).*install tsx.*Node 22\.18 or later/);
    }
  } finally {
    rmSync(file, { force: true });
  }
});
