/** The `bdus` command: dispatch to subcommands and turn errors into one clear line. */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { destroyDevice, listDevices } from '../device/manage.js';
import { attributeHelp } from './options.js';
import { runCommand, UsageError } from './run.js';

const USAGE = `usage: bdus <command> [options]

commands:
  run <driver> [ARGS...] [--size SIZE] [--<attribute> VALUE ...] [--foreground]
      Create a device served by <driver>: a module path, or an example (ram, zero, loop).
      Prints the device's path once it is available; without --foreground the driver then
      keeps running in the background. ARGS go to the driver module.
  destroy [--no-flush] [--quiet] <path or id>...
      Flush each device, ask its driver to terminate, and wait until the device is gone.
  list [--json]
      The devices on this machine.
  version
      The version of bdus.

attributes (for run):
${attributeHelp()}
`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function destroyCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { 'no-flush': { type: 'boolean' }, quiet: { type: 'boolean' } },
    allowPositionals: true,
  });
  if (positionals.length === 0) throw new UsageError('bdus destroy: missing the device (a path or an id)');
  for (const target of positionals) {
    await destroyDevice(target, {
      flush: !values['no-flush'],
      onSlowFlush: values.quiet
        ? undefined
        : () => process.stderr.write(`bdus: still flushing ${target}; the driver may be stuck (use --no-flush to skip the flush)\n`),
    });
  }
  return 0;
}

function listCommand(argv: string[]): number {
  const { values } = parseArgs({ args: argv, options: { json: { type: 'boolean' } } });
  const devices = listDevices();
  if (values.json) {
    process.stdout.write(`${JSON.stringify(devices, null, 2)}\n`);
    return 0;
  }
  for (const d of devices) {
    process.stdout.write(`${d.id}\t${d.path}\t${d.kernelPath}\t${d.state}\tpid ${d.pid}\t${d.attributes.size} bytes${d.readOnly ? '\tread-only' : ''}\n`);
  }
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'run':
        return await runCommand(rest);
      case 'destroy':
        return await destroyCommand(rest);
      case 'list':
        return listCommand(rest);
      case 'version':
      case '--version':
        process.stdout.write(`bdus ${version()}\n`);
        return 0;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`bdus: error: ${message}\n`);
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`(see bdus --help)\n`);
      return 2;
    }
    return 1;
  }
}
