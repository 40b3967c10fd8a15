/** The `bdus` command: dispatch to subcommands and turn errors into one clear line. */
import { daemonVersion } from '../control/manage.js';
import { packageVersion } from '../version.js';
import { DAEMON_HELP, daemonCommand } from './daemon.js';
import { LOGS_HELP, logsCommand } from './logs.js';
import { EXPORT_HELP, exportCommand } from './export.js';
import { DESTROY_HELP, destroyCommand, FLUSH_HELP, flushCommand, INFO_HELP, infoCommand, LIST_HELP, listCommand } from './manage.js';
import { RERUN_HELP, RUN_HELP, rerunCommand, runCommand } from './run.js';
import { suggest } from './suggest.js';
import { UsageError } from './usage.js';

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
  destroy [--force] [--no-flush] <path or id>...     destroy devices (refused while in use)
  logs [--follow] <path or id>                       a device's log, across its drivers
  daemon <run | start | stop | status>               the control daemon
  version                                            versions of the CLI, library and daemon
`;

async function versionCommand(): Promise<number> {
  const daemon = await daemonVersion();
  process.stdout.write(`bdus CLI ${packageVersion()}\nbdus library ${packageVersion()}\n`);
  process.stdout.write(daemon ? `bdus daemon ${daemon.version} (pid ${daemon.pid}, control protocol ${daemon.protocol})\n` : 'bdus daemon not running\n');
  return 0;
}

/** `ownHelp`: the command answers --help itself (with its driver's options when one is named). */
const COMMANDS: Record<string, { help: string; run: (argv: string[]) => Promise<number>; ownHelp?: boolean }> = {
  run: { help: RUN_HELP, run: runCommand, ownHelp: true },
  rerun: { help: RERUN_HELP, run: rerunCommand, ownHelp: true },
  export: { help: EXPORT_HELP, run: exportCommand, ownHelp: true },
  list: { help: LIST_HELP, run: listCommand },
  info: { help: INFO_HELP, run: infoCommand },
  flush: { help: FLUSH_HELP, run: flushCommand },
  destroy: { help: DESTROY_HELP, run: destroyCommand },
  daemon: { help: DAEMON_HELP, run: daemonCommand },
  logs: { help: LOGS_HELP, run: logsCommand },
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
    if (!command) {
      const nearest = suggest(name, Object.keys(COMMANDS));
      throw new UsageError(`unknown command '${name}'${nearest ? `; did you mean '${nearest}'?` : ''}`);
    }
    // Only before `--`: what follows it belongs to a driver.
    const options = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
    if (!command.ownHelp && (options.includes('--help') || options.includes('-h'))) {
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
