/** `bdus daemon run|start|stop|status`: the control daemon from the command line. */
import { startDaemon } from '../control/client.js';
import { Daemon } from '../control/daemon.js';
import { daemonVersion, stopDaemon } from '../control/manage.js';
import { DAEMON_LOG_PATH, DEFAULT_MAX_DEVICES } from '../control/protocol.js';
import { BdusError } from '../driver/errors.js';
import { parseMetricsAddress, type MetricsAddress } from '../stats/metrics-address.js';
import { parseCommandLine } from './suggest.js';
import { UsageError } from './usage.js';

export const DAEMON_HELP = `usage: bdus daemon <run | start | stop | status> [--max-devices N] [--metrics [HOST:]PORT]

The control daemon keeps the device registry, watches drivers and removes the devices of drivers
that end. bdus starts it by itself when needed; these commands are for service managers and
for changing its settings. It is never on the I/O path: devices keep serving while it is down,
and a new daemon takes over the registry.

  run      run in the foreground (for a service manager), logging to stderr
  start    start in the background unless one is running (log: ${DAEMON_LOG_PATH})
  stop     stop the running daemon (devices keep running)
  status   say whether it runs, its pid and its settings

  --max-devices N          most devices at once (default ${DEFAULT_MAX_DEVICES})
  --metrics [HOST:]PORT    serve Prometheus metrics at http://HOST:PORT/metrics (HOST: 127.0.0.1
                           unless given; 0.0.0.0 or [::] for every address). See docs/observability.md
`;

export const DAEMON_OPTIONS = { 'max-devices': { type: 'string' }, metrics: { type: 'string' } } as const;

function maxDevices(text: string | undefined): string[] {
  if (text === undefined) return [];
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new UsageError(`invalid --max-devices '${text}': expected a whole number >= 1`);
  return ['--max-devices', text];
}

function metricsAddress(text: string): MetricsAddress {
  try {
    return parseMetricsAddress(text);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

export async function daemonCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine('daemon', { args: argv, options: DAEMON_OPTIONS, allowPositionals: true });
  const metrics = values.metrics === undefined ? undefined : metricsAddress(values.metrics);
  const settings = [...maxDevices(values['max-devices']), ...(values.metrics === undefined ? [] : ['--metrics', values.metrics])];
  switch (positionals[0]) {
    case 'run': {
      if (process.geteuid?.() !== 0) throw new BdusError('EPERM', 'the bdus daemon must run as root');
      const max = values['max-devices'];
      const daemon = await Daemon.start({ maxDevices: max === undefined ? undefined : Number(max), metrics });
      const stop = () => void daemon.stop();
      process.on('SIGTERM', stop).on('SIGINT', stop);
      await daemon.stopped;
      process.off('SIGTERM', stop).off('SIGINT', stop);
      return 0;
    }
    case 'start': {
      const running = await daemonVersion();
      if (running) {
        process.stdout.write(`bdus daemon already running (pid ${running.pid}, at most ${running.maxDevices} devices${running.metrics ? `, metrics at ${running.metrics}` : ''})\n`);
        if (settings.length > 0) process.stderr.write('bdus: its settings stay as they are: `bdus daemon stop` first to change them (devices keep running)\n');
        return 0;
      }
      if (process.geteuid?.() !== 0) throw new BdusError('EPERM', 'only root can start the bdus daemon (try sudo)');
      (await startDaemon(settings)).destroy();
      const started = await daemonVersion();
      process.stdout.write(`bdus daemon running (pid ${started?.pid}, at most ${started?.maxDevices} devices${started?.metrics ? `, metrics at ${started.metrics}` : ''})\n`);
      return 0;
    }
    case 'stop':
      if (!(await stopDaemon())) process.stdout.write('bdus daemon was not running\n');
      return 0;
    case 'status': {
      const running = await daemonVersion();
      process.stdout.write(
        running ? `running: pid ${running.pid}, version ${running.version}, at most ${running.maxDevices} devices${running.metrics ? `, metrics at ${running.metrics}` : ''}\n` : 'not running\n',
      );
      return running ? 0 : 3;
    }
    default:
      throw new UsageError(`bdus daemon: expected run, start, stop or status`);
  }
}
