/**
 * `bdus run`: create a device served by a driver module; `bdus rerun`: attach one to an
 * existing device, replacing its driver (or giving a recoverable device a new one). Without --foreground the driver keeps
 * running in the background once the device is available, as BDUS drivers daemonize: the command
 * prints the device's path and exits, so `dev=$(bdus run ram)` works.
 *
 * Background mode re-runs this command with --foreground in a detached child that shares our
 * stdout and stderr until the device is available; it then points them away (stdout to
 * /dev/null, stderr to RUN_DIR/log/bdus-N.log) and says "ready" on a pipe.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { rerun, serve, start, type Device } from '../device/device.js';
import type { FrontendChoice } from '../frontend/select.js';
import { native } from '../native.js';
import { RUN_DIR } from '../util/paths.js';
import { parseListen, tlsFromFlags } from './export.js';
import { loadDriver } from './load-driver.js';
import { attributeOptions, attributesFromFlags } from './options.js';
import { UsageError } from './usage.js';

const READY_FD_ENV = 'BDUS_READY_FD';

export function runCommand(argv: string[]): Promise<number> {
  return runDriver('run', argv);
}

export function rerunCommand(argv: string[]): Promise<number> {
  return runDriver('rerun', argv);
}

async function runDriver(command: 'run' | 'rerun', argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      ...attributeOptions(),
      foreground: { type: 'boolean' },
      ...(command === 'run' ? { frontend: { type: 'string' } } : {}),
      export: { type: 'string' },
      'export-name': { type: 'string' },
      tls: { type: 'string' },
      'tls-certificates': { type: 'string' },
      'tls-verify-peer': { type: 'boolean' },
    },
    allowPositionals: true,
  });
  const target = command === 'rerun' ? positionals.shift() : undefined;
  if (command === 'rerun' && !target) throw new UsageError('bdus rerun: missing the device (a path or an id)');
  const [specifier, ...driverArgs] = positionals;
  if (!specifier) throw new UsageError(`bdus ${command}: missing the driver (a module path or an example: ram, zero, loop)`);
  const attributes = attributesFromFlags(values);
  const listen = values.export === undefined ? undefined : parseListen(values.export);
  const tls = tlsFromFlags(values.tls, values['tls-certificates'], values['tls-verify-peer']);
  if (!listen && (tls || values['export-name'] !== undefined)) throw new UsageError(`bdus ${command}: --export-name and --tls need --export`);
  if (!values.foreground) return runInBackground(command, argv);

  const driver = await loadDriver(specifier, driverArgs);
  const frontend = values.frontend as FrontendChoice | undefined;
  const device = target === undefined ? await start(driver, { attributes, frontend }) : await rerun(target, driver, { attributes });
  if (listen) {
    try {
      const exported = await device.export({ listen, name: values['export-name'] ?? '', tls });
      process.stderr.write(`${device.path}: exported over NBD at ${exported.uri}\n`);
    } catch (error) {
      await device.destroy();
      throw error;
    }
  }
  if (process.env[READY_FD_ENV]) detachFromCaller(device, Number(process.env[READY_FD_ENV]));
  await serve(device);
  return 0;
}

function detachFromCaller(device: Device<any>, readyFd: number): void {
  delete process.env[READY_FD_ENV];
  mkdirSync(`${RUN_DIR}/log`, { recursive: true, mode: 0o700 });
  const devNull = openSync('/dev/null', 'r+');
  const log = openSync(`${RUN_DIR}/log/bdus-${device.ctx.index}.log`, 'w', 0o600);
  native.dup2(devNull, 1);
  native.dup2(log, 2);
  closeSync(devNull);
  closeSync(log);
  writeSync(readyFd, 'ready\n');
  closeSync(readyFd);
}

function runInBackground(command: string, argv: string[]): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, command, ...argv, '--foreground'], {
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
      if (!ready) resolve(code ?? (signal ? 128 : 1));
    });
  });
}
