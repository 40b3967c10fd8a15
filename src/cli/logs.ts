/** `bdus logs`: a device's log, kept across its drivers (src/util/device-log.ts). */
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { deviceInfo, waitUntilDestroyed } from '../control/manage.js';
import { BdusError } from '../driver/errors.js';
import { deviceLogPath } from '../util/device-log.js';
import { sleep } from '../util/process.js';
import { parseCommandLine } from './suggest.js';
import { UsageError } from './usage.js';

export const LOGS_HELP = `usage: bdus logs [--follow] <path or id>

Prints a device's log: what every background driver that served it wrote to stderr, each line
with its time and the driver's pid, each driver's part opened with its pid, bdus version and
command; and what the daemon noted (a driver that died). The log lives as long as the device;
the logs of the last gone devices are kept, so \`bdus logs ID\` still shows why a driver ended.

  -f, --follow   keep printing new lines until the device is gone (or Ctrl-C)
`;

const FOLLOW_POLL_MS = 250;

export const LOGS_OPTIONS = { follow: { type: 'boolean', short: 'f' } } as const;

export async function logsCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine('logs', { args: argv, options: LOGS_OPTIONS, allowPositionals: true });
  if (positionals.length !== 1) throw new UsageError('bdus logs: give exactly one device (a path or an id)');
  const target = positionals[0]!;
  let id: string;
  let live = true;
  try {
    id = (await deviceInfo(target)).id.toString();
  } catch (error) {
    // A gone device's log may still be kept: by id only (its path may name another device now).
    if (!/^\d+$/.test(target) || !existsSync(deviceLogPath(target))) throw error;
    id = target;
    live = false;
  }
  const path = deviceLogPath(id);
  if (!existsSync(path)) throw new BdusError('ENOENT', `device ${id} has no log yet (a driver run with --foreground logs to its own stderr)`);
  copy(`${path}.1`, 0);
  let position = copy(path, 0);
  if (!values.follow || !live) return 0;
  let gone = false;
  void waitUntilDestroyed(BigInt(id)).then(
    () => (gone = true),
    () => (gone = true),
  );
  for (;;) {
    await sleep(FOLLOW_POLL_MS);
    const size = existsSync(path) ? statSync(path).size : 0;
    if (size < position) position = 0; // rotated: the new file starts afresh
    position = copy(path, position);
    if (gone) return 0;
  }
}

/** Writes `path` from `from` to its end to stdout; returns where it stopped. */
function copy(path: string, from: number): number {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return from;
  }
  try {
    const buffer = Buffer.allocUnsafe(1 << 16);
    for (let at = from; ; ) {
      const n = readSync(fd, buffer, 0, buffer.length, at);
      if (n === 0) return at;
      process.stdout.write(Buffer.from(buffer.subarray(0, n))); // written later: the buffer is reused
      at += n;
    }
  } finally {
    closeSync(fd);
  }
}
