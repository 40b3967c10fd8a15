/** The `bdus` command: dispatch to subcommands and turn errors into one clear line. */
import { daemonVersion } from '../control/manage.js';
import { packageVersion } from '../version.js';
import { DAEMON_HELP, daemonCommand } from './daemon.js';
import { EXPORT_HELP, exportCommand } from './export.js';
import { DESTROY_HELP, destroyCommand, FLUSH_HELP, flushCommand, INFO_HELP, infoCommand, LIST_HELP, listCommand } from './manage.js';
import { attributeHelp } from './options.js';
import { rerunCommand, runCommand } from './run.js';
import { UsageError } from './usage.js';

const RUN_HELP = `usage: bdus run <driver> [ARGS...] [--size SIZE] [--<attribute> VALUE ...] [--frontend KIND] [--foreground]

Creates a device served by <driver>: a module path, or an example (ram, zero, loop). Prints the
device's path once it is available; without --foreground the driver then keeps running in the
background (its log: /run/bdus/log/bdus-N.log). ARGS go to the driver module.

  --frontend KIND   the kernel path: fuse (FUSE+loop), nbd (the kernel NBD client, /dev/nbdN),
                    or auto (default: fuse where the kernel has FUSE and loop, else nbd)
  --export ADDRESS  also serve the driver over NBD (unix:PATH, HOST:PORT or PORT), for as long
                    as this driver instance runs; with --export-name NAME, and --tls MODE,
                    --tls-certificates DIR, --tls-verify-peer as for \`bdus export\`

attributes:
${attributeHelp()}
`;

const RERUN_HELP = `usage: bdus rerun <path or id> <driver> [ARGS...] [--<attribute> VALUE ...] [--foreground]

Attaches <driver> to an existing device as its new driver. If a driver runs the device, it stops
taking requests, finishes those it took, is flushed and terminated, and only then does the new
driver initialize: clients see a delay, not an error. A recoverable device whose driver died gets
its driver back this way, with the requests the dead driver had not answered.

Attributes left out (or 0) keep the device's values. Size and block sizes cannot change, max
sizes cannot shrink, and the new driver needs every request callback the current one has.
Prints the device's path once the new driver serves; without --foreground the driver then keeps
running in the background (its log: /run/bdus/log/bdus-N.log). --export and its options work as
for \`bdus run\`.

attributes:
${attributeHelp()}
`;

const VERSION_HELP = `usage: bdus version

The versions of this command, of the library it uses and of the running daemon.
`;

const USAGE = `usage: bdus <command> [options]     (bdus <command> --help for more)

commands:
  run <driver> [ARGS...] [--<attribute> VALUE ...]   create a device served by a driver
  rerun <path or id> <driver> [ARGS...] [...]        give a device a new driver (hot swap, recovery)
  export <driver> [ARGS...] [--listen ADDRESS]       serve a driver over NBD (no local device)
  list [--json]                                      the devices on this machine
  info <path or id> [--<field> ...]                  everything about one device
  flush <path or id>...                              flush devices
  destroy [--no-flush] [--quiet] <path or id>...     destroy devices
  daemon <run | start | stop | status>               the control daemon
  version                                            versions of the CLI, library and daemon
`;

async function versionCommand(): Promise<number> {
  const daemon = await daemonVersion();
  process.stdout.write(`bdus CLI ${packageVersion()}\nbdus library ${packageVersion()}\n`);
  process.stdout.write(daemon ? `bdus daemon ${daemon.version} (pid ${daemon.pid}, control protocol ${daemon.protocol})\n` : 'bdus daemon not running\n');
  return 0;
}

const COMMANDS: Record<string, { help: string; run: (argv: string[]) => Promise<number> }> = {
  run: { help: RUN_HELP, run: runCommand },
  rerun: { help: RERUN_HELP, run: rerunCommand },
  export: { help: EXPORT_HELP, run: exportCommand },
  list: { help: LIST_HELP, run: listCommand },
  info: { help: INFO_HELP, run: infoCommand },
  flush: { help: FLUSH_HELP, run: flushCommand },
  destroy: { help: DESTROY_HELP, run: destroyCommand },
  daemon: { help: DAEMON_HELP, run: daemonCommand },
  version: { help: VERSION_HELP, run: versionCommand },
};

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  try {
    if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
      const topic = name === 'help' ? COMMANDS[rest[0] ?? ''] : undefined;
      process.stdout.write(topic?.help ?? USAGE);
      return name === undefined ? 2 : 0;
    }
    if (name === '--version') return await versionCommand();
    const command = COMMANDS[name];
    if (!command) throw new UsageError(`unknown command '${name}'`);
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(command.help);
      return 0;
    }
    return await command.run(rest);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`bdus: error: ${message}\n`);
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`(see bdus ${name && COMMANDS[name] ? `${name} ` : ''}--help)\n`);
      return 2;
    }
    return 1;
  }
}
