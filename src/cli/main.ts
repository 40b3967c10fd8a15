/** The `bdus` command: dispatch to subcommands and turn errors into one clear line. */
import { daemonVersion } from '../control/manage.js';
import { packageVersion } from '../version.js';
import { CHECK_HELP, CHECK_OPTIONS, checkCommand } from './check.js';
import { complete, COMPLETION_HELP, completionScript, type CompletionSpec } from './completion.js';
import { COW_HELP, cowCommand } from './cow.js';
import { DAEMON_HELP, DAEMON_OPTIONS, daemonCommand } from './daemon.js';
import { EXPORT_HELP, EXPORT_OPTIONS, exportCommand } from './export.js';
import { FILTER_HELP, FILTER_OPTIONS, filterCommand } from './filter.js';
import { LOGS_HELP, LOGS_OPTIONS, logsCommand } from './logs.js';
import {
  DESTROY_HELP,
  DESTROY_OPTIONS,
  destroyCommand,
  FLUSH_HELP,
  flushCommand,
  INFO_HELP,
  INFO_OPTIONS,
  infoCommand,
  LIST_HELP,
  LIST_OPTIONS,
  listCommand,
  RESIZE_HELP,
  resizeCommand,
} from './manage.js';
import { REPLAY_HELP, REPLAY_OPTIONS, replayCommand } from './replay.js';
import { RERUN_HELP, RERUN_OPTIONS, RUN_HELP, RUN_OPTIONS, rerunCommand, runCommand } from './run.js';
import { STATS_HELP, STATS_OPTIONS, statsCommand } from './stats.js';
import { suggest } from './suggest.js';
import { TOP_HELP, TOP_OPTIONS, topCommand } from './top.js';
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
  resize <path or id> <size>                         grow or shrink a device while it runs
  filter <path or id> <filter> KEY=VALUE,...         change a running device's filter (delay, error, rate)
  cow <commit | discard> <overlay> [base]            commit or discard a cow filter's overlay
  replay <trace> <device> [--speed N]                issue a log filter's trace to a device again
  logs [--follow] <path or id>                       a device's log, across its drivers
  stats <path or id> [--json] [--interval S]         a device's request counts, rates and latencies
  top                                                every device's activity, live
  check [--seconds S] <driver> [ARGS...]             is this driver safe to mark recoverable?
  completion <bash | zsh | fish>                     the shell completion script
  daemon <run | start | stop | status>               the control daemon
  version                                            versions of the CLI, library and daemon
`;

async function versionCommand(): Promise<number> {
  const daemon = await daemonVersion();
  process.stdout.write(`bdus CLI ${packageVersion()}\nbdus library ${packageVersion()}\n`);
  process.stdout.write(daemon ? `bdus daemon ${daemon.version} (pid ${daemon.pid}, control protocol ${daemon.protocol})\n` : 'bdus daemon not running\n');
  return 0;
}

interface Command extends CompletionSpec {
  readonly help: string;
  readonly run: (argv: string[]) => Promise<number>;
  /** The command answers --help itself (with its driver's options when one is named). */
  readonly ownHelp?: boolean;
}

export const COMMANDS: Record<string, Command> = {
  run: { help: RUN_HELP, run: runCommand, ownHelp: true, options: RUN_OPTIONS, positionals: 'driver' },
  rerun: { help: RERUN_HELP, run: rerunCommand, ownHelp: true, options: RERUN_OPTIONS, positionals: 'device-then-driver' },
  export: { help: EXPORT_HELP, run: exportCommand, ownHelp: true, options: EXPORT_OPTIONS, positionals: 'driver' },
  list: { help: LIST_HELP, run: listCommand, options: LIST_OPTIONS, positionals: 'none' },
  info: { help: INFO_HELP, run: infoCommand, options: INFO_OPTIONS, positionals: 'devices' },
  flush: { help: FLUSH_HELP, run: flushCommand, options: {}, positionals: 'devices' },
  destroy: { help: DESTROY_HELP, run: destroyCommand, options: DESTROY_OPTIONS, positionals: 'devices' },
  resize: { help: RESIZE_HELP, run: resizeCommand, options: {}, positionals: 'devices' },
  filter: { help: FILTER_HELP, run: filterCommand, options: FILTER_OPTIONS, positionals: 'devices' },
  cow: { help: COW_HELP, run: cowCommand, options: {}, positionals: ['commit', 'discard'] },
  replay: { help: REPLAY_HELP, run: replayCommand, options: REPLAY_OPTIONS, positionals: 'files' },
  logs: { help: LOGS_HELP, run: logsCommand, options: LOGS_OPTIONS, positionals: 'devices' },
  stats: { help: STATS_HELP, run: statsCommand, options: STATS_OPTIONS, positionals: 'devices' },
  check: { help: CHECK_HELP, run: checkCommand, options: CHECK_OPTIONS, positionals: 'driver' },
  top: { help: TOP_HELP, run: topCommand, options: TOP_OPTIONS, positionals: 'none' },
  daemon: { help: DAEMON_HELP, run: daemonCommand, options: DAEMON_OPTIONS, positionals: ['run', 'start', 'stop', 'status'] },
  version: { help: VERSION_HELP, run: versionCommand, options: {}, positionals: 'none' },
  completion: {
    help: COMPLETION_HELP,
    run: async ([shell]) => (process.stdout.write(completionScript(shell)), 0),
    options: {},
    positionals: ['bash', 'zsh', 'fish'],
  },
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
    if (name === '__complete') {
      const candidates = complete(rest, COMMANDS);
      process.stdout.write(candidates.length ? `${candidates.join('\n')}\n` : '');
      return 0;
    }
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
