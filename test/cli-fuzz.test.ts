/**
 * A property-based fuzzer (fast-check) over the CLI's argument space: every command with words
 * drawn from its own flags, every other command's flags, values that are almost right (sizes,
 * durations, paths, drivers, frontends) and arbitrary strings, run as the real `bdus` binary.
 * Property: no input makes it loop, fork without end or hang. Each run either exits on its own
 * within DEADLINE_MS with 0, 1 or 2 (1 and 2 with a message on stderr, never a stack trace), or
 * is a command that serves until stopped (`export`, `run --foreground`, `stats --interval`,
 * `top`, `logs --follow`, `check`) and ends within STOP_MS of SIGTERM; afterwards no process of
 * the run is left but the drivers of devices it created, which are then destroyed.
 *
 * Left out: `daemon stop` and `daemon run` (the suite's daemon serves the other tests) and real
 * files as a driver's image (the loop driver would open them read-write).
 * BDUS_FUZZ_RUNS (default 120: each run starts a process), BDUS_FUZZ_SEED.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import fc from 'fast-check';
import { COMMANDS } from '../src/cli/main.js';
import { destroyDevice, listDevices } from '../src/index.js';
import { BIN, sh, sleep } from './helpers.js';

const RUNS = Number(process.env.BDUS_FUZZ_RUNS ?? 120);
const SEED = Number(process.env.BDUS_FUZZ_SEED ?? Date.now() % 2 ** 31);
const DEADLINE_MS = 6000;
const STOP_MS = 8000;

const VALUES = [
  '', '-', '--', '-h', '--help', '0', '1', '-1', '16M', '4k', '1G', '1P', '99999999999999999999P', '1e9', 'NaN', '0x10',
  '30s', '1500ms', '0s', '-5s', '1h', 'fuse', 'nbd', 'ublk', 'auto', 'on', 'off', 'require', 'reissue', 'fail-all',
  'ram', 'zero', 'loop', './nope.js', '/nonexistent/driver.js', 'data:text/javascript,export default {}', 'node:fs',
  '/dev/bdus-0', '/dev/bdus-999', '/dev/null', '/dev/loop999', '18446744073709551615', '999999999999999999999999', 'all',
  'unix:/tmp/bdus-fuzz.sock', 'unix:', '127.0.0.1:0', '[::1]:0', '70000', 'bash', 'zsh', 'start', 'status', 'x'.repeat(5000),
];

/** Words for one command line: mostly this command's flags and plausible values, sometimes anything. */
function commandLine(): fc.Arbitrary<string[]> {
  const names = Object.keys(COMMANDS);
  const allFlags = [...new Set(names.flatMap((name) => Object.keys(COMMANDS[name]!.options)))].map((flag) => `--${flag}`);
  return fc.oneof({ weight: 10, arbitrary: fc.constantFrom(...names) }, { weight: 1, arbitrary: fc.string() }).chain((command) => {
    const own = Object.keys(COMMANDS[command]?.options ?? {}).map((flag) => `--${flag}`);
    const word = fc.oneof(
      { weight: 4, arbitrary: own.length ? fc.constantFrom(...own) : fc.constantFrom(...allFlags) },
      { weight: 1, arbitrary: fc.constantFrom(...allFlags) },
      { weight: 5, arbitrary: fc.constantFrom(...VALUES) },
      { weight: 1, arbitrary: fc.string() },
      { weight: 1, arbitrary: fc.constantFrom(...own, '--x').map((flag) => `${flag}=${flag}`) },
    );
    return fc.array(word, { maxLength: 7 }).map((words) => [command, ...words]);
  }).filter((argv) => !(argv[0] === 'daemon' && argv.some((w) => w === 'stop' || w === 'run')));
}

/** Processes whose command line runs this checkout's CLI, but the daemon and the given ones. */
async function bdusProcesses(except: ReadonlySet<number>): Promise<string[]> {
  const out = (await sh('ps', ['-eo', 'pid=,args='])).stdout.split('\n');
  return out.filter((line) => line.includes(BIN) && !line.includes(' daemon run') && !except.has(Number(line.trim().split(/\s+/)[0])));
}

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  stopped: boolean;
}

function runCli(argv: string[]): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...argv], { stdio: ['ignore', 'ignore', 'pipe'], detached: false });
    let stderr = '';
    let stopped = false;
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-20_000)));
    const deadline = setTimeout(() => {
      stopped = true;
      child.kill('SIGTERM');
      setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`bdus ${JSON.stringify(argv)} did not end within ${STOP_MS} ms of SIGTERM`));
      }, STOP_MS).unref();
    }, DEADLINE_MS);
    child.on('exit', (code, signal) => {
      clearTimeout(deadline);
      resolve({ code, signal, stderr, stopped });
    });
  });
}

/** Commands that rightly run until stopped. */
function serves(argv: string[]): boolean {
  const [command] = argv;
  return (
    command === 'export' ||
    command === 'check' ||
    command === 'top' ||
    (command === 'run' && argv.includes('--foreground')) ||
    (command === 'stats' && argv.some((w) => w.startsWith('--interval'))) ||
    (command === 'logs' && argv.some((w) => w.startsWith('--follow') || w === '-f'))
  );
}

test('fuzzing the CLI: no input loops, forks without end or hangs; errors are messages, not stack traces', { timeout: 1_800_000 }, async (t) => {
  const before = new Set((await listDevices()).map((d) => d.id));
  const spare = new Set((await bdusProcesses(new Set())).map((line) => Number(line.trim().split(/\s+/)[0])));
  let served = 0;
  let created = 0;
  const codes = new Map<string, number>();
  await fc.assert(
    fc.asyncProperty(commandLine(), async (argv) => {
      const outcome = await runCli(argv);
      const key = outcome.stopped ? 'stopped' : String(outcome.code);
      codes.set(key, (codes.get(key) ?? 0) + 1);
      const what = `bdus ${JSON.stringify(argv)}: exit ${outcome.code ?? outcome.signal}\n${outcome.stderr.slice(-2000)}`;
      // First what the line made: its devices (a background driver keeps one) are destroyed, and
      // what is left of its processes is killed after a while, so that a failure below leaves nothing.
      for (const made of (await listDevices()).filter((d) => !before.has(d.id))) {
        created++;
        await destroyDevice(made.id, { force: true, flush: false }).catch(() => undefined);
      }
      let left: string[] = [];
      for (let i = 0; i < 50; i++) {
        left = await bdusProcesses(spare);
        if (left.length === 0) break;
        await sleep(100);
      }
      for (const line of left) {
        try {
          process.kill(Number(line.trim().split(/\s+/)[0]), 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }

      if (outcome.stopped) {
        assert.ok(serves(argv), `ran past ${DEADLINE_MS} ms without being a command that serves: ${what}`);
        served++;
      } else {
        assert.ok(outcome.code === 0 || outcome.code === 1 || outcome.code === 2, what);
        if (outcome.code !== 0) assert.match(outcome.stderr, /\S/, `a failure says why: ${what}`);
      }
      assert.doesNotMatch(outcome.stderr, /\n\s+at .*\(?(file|node):/, `no stack trace: ${what}`);
      assert.deepEqual(left, [], `processes left by ${what}`);
    }),
    { numRuns: RUNS, seed: SEED },
  );
  const exits = [...codes].map(([code, n]) => `${n} × ${code}`).join(', ');
  t.diagnostic(`${RUNS} command lines (seed ${SEED}): ${exits}; ${served} served until stopped, ${created} devices created`);
});
