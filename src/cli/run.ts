/**
 * `bdus run`: create a device served by a driver module; `bdus rerun`: attach one to an existing
 * device, replacing its driver (or giving a recoverable device a new one). Without --foreground
 * the driver keeps running in the background once the device is available, as BDUS drivers
 * daemonize: the command prints the device's path and exits, so `dev=$(bdus run ram)` works.
 *
 * Background mode runs this same command line again in a detached child, unchanged: the child
 * learns that it is the background half from READY_FD_ENV alone, never from its arguments (an
 * argument appended to the user's could land after their `--` and be taken for a driver
 * argument, and the child would go into the background again, without end). The child shares
 * our stdout and stderr until the device is available; it then points them away (stdout to
 * /dev/null, stderr to the device's log) and says "ready" on a pipe.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, writeSync } from 'node:fs';
import { withInjectedFault } from '../check/faults.js';
import { deviceInfo } from '../control/manage.js';
import { DAEMON_LOG_PATH } from '../control/protocol.js';
import type { Device, RunOptions } from '../device/device.js';
import { rerun, serve, start } from '../device/start.js';
import type { Driver } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';
import type { FrontendChoice } from '../frontend/select.js';
import { native } from '../native.js';
import { logStderrTo } from '../util/device-log.js';
import { packageVersion } from '../version.js';
import { parseDriverCommand } from './driver-command.js';
import { anyExportFlag, EXPORT_FLAG_OPTIONS, limitsFromFlags, parseListen, tlsFromFlags } from './export-flags.js';
import { driverHelp, makeDriver } from './load-driver.js';
import { applyFilters, libraryHelp } from './load-filter.js';
import { attributeHelp, attributeOptions, attributesFromFlags } from './options.js';
import { activityOf, withProgress } from './progress.js';
import { UsageError } from './usage.js';

/** Set only in the background child: the descriptor of the pipe on which it says "ready". */
const READY_FD_ENV = 'BDUS_BACKGROUND_READY_FD';

export const RUN_HELP = `usage: bdus run <driver> [ARGS...] [--size SIZE] [--<attribute> VALUE ...] [driver options] [--filter F ...] [--frontend KIND] [--foreground] [-- ARGS...]

Creates a device served by <driver>: one of bdus's drivers by name (listed below), or a module
path (.js, or .ts where Node or the driver's project can load TypeScript). Prints the device's
path once it is available; without --foreground the driver then keeps running in the background
(its log: bdus logs DEVICE). ARGS and the driver's own options go to the driver module;
everything after \`--\` goes to the driver as it is. \`bdus run DRIVER --help\` lists the
driver's options.

  --filter NAME[:KEY=VALUE,...]
                    put a filter (listed below, or a module path) in front of the driver;
                    repeat for more: the first given is innermost, the last sees requests first

  --frontend KIND   the kernel path: fuse (FUSE+loop), nbd (the kernel NBD client, /dev/nbdN),
                    or auto (default: fuse where the kernel has FUSE and loop, else nbd)
  --export ADDRESS  also serve the driver over NBD (unix:PATH, HOST:PORT or PORT), for as long
                    as this driver instance runs; with --export-name NAME, and --tls,
                    --tls-certificates, --tls-psk, --tls-verify-peer, --allow,
                    --max-connections, --handshake-timeout, --connection-memory as for
                    \`bdus export\`
  --foreground      serve in this process until the device is destroyed (SIGTERM, SIGINT or
                    bdus destroy), logging to stderr

attributes:
${attributeHelp()}
`;

export const RERUN_HELP = `usage: bdus rerun <path or id> <driver> [ARGS...] [--<attribute> VALUE ...] [driver options] [--filter F ...] [--foreground] [-- ARGS...]

Attaches <driver> to an existing device as its new driver. Everything that can be checked
without the current driver's resources is checked first: the module loads, its arguments
parse, the attributes fit the device, and the driver's validate callback (if it has one)
accepts; a failure there leaves the current driver serving, untouched. Then, if a driver runs
the device, it stops taking requests, finishes those it took, is flushed and terminated, and
only then does the new driver initialize: clients see a delay, not an error. A recoverable
device whose driver died gets its driver back this way, with the requests the dead driver had
not answered.

Attributes left out (or 0) keep the device's values. Size and block sizes cannot change, max
sizes cannot shrink, and the new driver needs every request callback the current one has.
Prints the device's path once the new driver serves; without --foreground the driver then keeps
running in the background (bdus logs DEVICE). --filter, --export and its options work as for
\`bdus run\`.

attributes:
${attributeHelp()}
`;

export const RERUN_OPTIONS = {
  ...attributeOptions(),
  foreground: { type: 'boolean' },
  filter: { type: 'string', multiple: true },
  export: { type: 'string' },
  'export-name': { type: 'string' },
  ...EXPORT_FLAG_OPTIONS,
} as const;

export const RUN_OPTIONS = { ...RERUN_OPTIONS, frontend: { type: 'string' } } as const;

export function runCommand(argv: string[]): Promise<number> {
  return runDriver('run', argv);
}

export function rerunCommand(argv: string[]): Promise<number> {
  return runDriver('rerun', argv);
}

async function runDriver(command: 'run' | 'rerun', argv: string[]): Promise<number> {
  // The background child checks the whole command line and reports on our stdout and stderr;
  // going there at once keeps a rerun quick (the kernel may be holding requests meanwhile).
  const ownWords = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
  const inForeground = ownWords.some((word) => word === '--foreground' || word === '--help' || word === '-h');
  const readyFd = process.env[READY_FD_ENV];
  if (!inForeground && readyFd === undefined) return runInBackground(command, argv);

  const line = await parseDriverCommand(command, argv, command === 'run' ? RUN_OPTIONS : RERUN_OPTIONS, command === 'rerun' ? 1 : 0);
  if (line.help) {
    process.stdout.write(`${command === 'run' ? RUN_HELP : RERUN_HELP}\n${line.driver ? driverHelp(line.driver) : await libraryHelp()}`);
    return 0;
  }
  const { values, driver: module } = line;
  const attributes = attributesFromFlags(values);
  const listen = values.export === undefined ? undefined : parseListen(values.export as string);
  if (!listen && (anyExportFlag(values) || values['export-name'] !== undefined)) {
    throw new UsageError(`bdus ${command}: --export-name, --tls and the export's limits need --export`);
  }
  const tls = tlsFromFlags(values);
  const limits = limitsFromFlags(values, listen);

  // bdus check may ask this driver instance to die inside a callback (src/check/faults.ts).
  const driver = withInjectedFault(await applyFilters(await makeDriver(module!, line.args, line.options), line.filters));
  // What to type to run this driver again: shown by list and info (and read by bdus filter).
  const driverCommand = [module!.file, ...filterFlagsBefore(argv, line.driverIndex), ...argv.slice(line.driverIndex + 1)];
  const frontend = values.frontend as FrontendChoice | undefined;
  // A lane makes the driver again in its own thread, from the same module and arguments; it
  // cannot make the filters (yet), so a filtered driver has no recipe and runs without lanes.
  if ((attributes.lanes ?? 0) > 1 && line.filters.length > 0) throw new UsageError(`bdus ${command}: --lanes cannot be combined with --filter yet`);
  const recipe = line.filters.length > 0 ? undefined : { module: module!.file, args: line.args, options: line.options };
  const options = { attributes, command: driverCommand, recipe };
  const device = command === 'run' ? await start(driver, { ...options, frontend }) : await rerunWithProgress(line.leading[0]!, driver, options);
  if (listen) {
    try {
      const exported = await device.export({ listen, name: (values['export-name'] as string | undefined) ?? '', tls, limits });
      process.stderr.write(`${device.path}: exported over NBD at ${exported.uri}\n`);
    } catch (error) {
      await device.destroy();
      throw error;
    }
  }
  if (readyFd !== undefined) detachFromCaller(device, Number(readyFd), driverCommand);
  await serve(device);
  return 0;
}

/** `--filter` flags given before the driver, so that the recorded command keeps them. */
function filterFlagsBefore(argv: readonly string[], driverIndex: number): string[] {
  const flags: string[] = [];
  for (let i = 0; i < driverIndex; i++) {
    if (argv[i] === '--filter' && i + 1 < driverIndex) flags.push('--filter', argv[++i]!);
    else if (argv[i]!.startsWith('--filter=')) flags.push(argv[i]!);
  }
  return flags;
}

/** The background child is ready: stdout goes away, stderr to the device's log, and the caller may exit. */
function detachFromCaller(device: Device<any>, readyFd: number, driverCommand: readonly string[]): void {
  delete process.env[READY_FD_ENV];
  const devNull = openSync('/dev/null', 'r+');
  native.dup2(devNull, 1);
  closeSync(devNull);
  const banner = `${device.path}: driver pid ${process.pid} (bdus ${packageVersion()}) serves it: ${driverCommand.join(' ')}`;
  logStderrTo(device.id, banner, (from, to) => native.dup2(from, to));
  try {
    writeSync(readyFd, 'ready\n');
    closeSync(readyFd);
  } catch (error) {
    throw new BdusError('EBADF', `${READY_FD_ENV}=${readyFd} names no pipe: ${(error as Error).message}`);
  }
}

/** Runs the same command line again in a detached child, and returns once its device is ready or it failed. */
function runInBackground(command: string, argv: string[]): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, command, ...argv], {
    detached: true,
    stdio: ['ignore', 'inherit', 'inherit', 'pipe'],
    env: { ...process.env, [READY_FD_ENV]: '3' },
  });
  return new Promise((resolve) => {
    let ready = false;
    const status = child.stdio[3] as NodeJS.ReadableStream;
    status.setEncoding('utf8');
    status.on('data', (text: string) => {
      if (!text.includes('ready')) return;
      ready = true;
      child.unref();
      (status as unknown as { destroy(): void }).destroy();
      resolve(0);
    });
    child.on('exit', (code, signal) => {
      if (ready) return;
      // A driver that fails says why itself; one killed cannot (say, by the daemon's watch on stuck drivers).
      if (signal) process.stderr.write(`bdus: error: the driver process was killed (${signal}) before it served; see ${DAEMON_LOG_PATH}\n`);
      resolve(code ?? (signal ? 128 : 1));
    });
  });
}

/** A rerun that says, after a few seconds and then every few, what it waits for. */
async function rerunWithProgress(target: string, driver: Driver<unknown>, options: RunOptions): Promise<Device> {
  // The rerun goes first (the kernel may be holding requests); its failure is reported by the
  // await below, not as an unhandled rejection while the id is looked up.
  const work = rerun(target, driver, options);
  work.catch(() => undefined);
  const id = await deviceInfo(target).then(
    (info) => String(info.id),
    () => undefined,
  );
  if (id === undefined) return work;
  return withProgress(work, id, (seconds, e) => {
    if (e.record.pid === process.pid) return `waiting ${seconds} s for this driver to initialize and serve ${target}`;
    if (e.record.pid === 0) return `waiting ${seconds} s to take ${target} over`;
    return `waiting ${seconds} s for the current driver of ${target} (pid ${e.record.pid}) to finish its requests and hand over: ${activityOf(e)}`;
  });
}
