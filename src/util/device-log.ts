/**
 * A device's log: the stderr of every background driver that served it, appended in turn, in
 * RUN_DIR/log/device-<id>.log (ids are never reused, so a device's log never mixes with another's
 * that took the same /dev/bdus-N later). Each line starts with the time and the pid of the driver
 * process that wrote it, and each driver opens its part with its pid, bdus version and command, so
 * a crashed driver's last words stay there for its successor's user to read.
 *
 * Size: past LOG_ROTATE_BYTES the file is renamed to .1 (replacing an older .1) and a new one is
 * started, so a device keeps at most about twice that. `bdus logs` reads both. The logs of gone
 * devices are kept (the last words of a driver that took its device with it) until more than
 * KEPT_GONE_LOGS of them exist; the daemon prunes the oldest.
 */
import { closeSync, fstatSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { RUN_DIR } from './paths.js';

export const LOG_DIR = `${RUN_DIR}/log`;
export const LOG_ROTATE_BYTES = 8 << 20;
const KEPT_GONE_LOGS = 32;
const ROTATE_CHECK_MS = 5_000;

export function deviceLogPath(id: bigint | string): string {
  return `${LOG_DIR}/device-${id}.log`;
}

/** Opens the device's log for appending (rotating it first if it is full); returns the descriptor. */
export function openDeviceLog(id: bigint | string): number {
  mkdirSync(LOG_DIR, { recursive: true, mode: 0o700 });
  const path = deviceLogPath(id);
  try {
    if (statSync(path).size >= LOG_ROTATE_BYTES) renameSync(path, `${path}.1`);
  } catch {
    // no log yet
  }
  return openSync(path, 'a', 0o600);
}

/**
 * Points this process's stderr (descriptor 2) at the device's log for good: every line gets the
 * time and pid, the driver's part opens with `banner`, and the file is rotated while it runs.
 */
export function logStderrTo(id: bigint | string, banner: string, dup2: (from: number, to: number) => void): void {
  const reopen = () => {
    const fd = openDeviceLog(id);
    dup2(fd, 2);
    closeSync(fd);
  };
  reopen();
  const write = process.stderr.write.bind(process.stderr) as (chunk: string | Uint8Array, ...rest: unknown[]) => boolean;
  let atLineStart = true;
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    const stamp = `${new Date().toISOString()} [${process.pid}] `;
    const body = text.replace(/\n(?=.)/gs, `\n${stamp}`);
    const out = (atLineStart && text !== '' ? stamp : '') + body;
    if (text !== '') atLineStart = text.endsWith('\n');
    return write(out, ...rest);
  }) as typeof process.stderr.write;
  process.stderr.write(`${banner}\n`);
  setInterval(() => {
    try {
      if (fstatSync(2).size >= LOG_ROTATE_BYTES) {
        renameSync(deviceLogPath(id), `${deviceLogPath(id)}.1`);
        reopen();
      }
    } catch {
      // a log we cannot rotate keeps growing rather than stopping the driver
    }
  }, ROTATE_CHECK_MS).unref();
}

/** Removes the logs of gone devices beyond the newest KEPT_GONE_LOGS (daemon only). */
export function pruneDeviceLogs(liveIds: ReadonlySet<string>): void {
  let names: string[];
  try {
    names = readdirSync(LOG_DIR);
  } catch {
    return;
  }
  const gone = names
    .map((name) => /^device-(\d+)\.log$/.exec(name)?.[1])
    .filter((id): id is string => id !== undefined && !liveIds.has(id))
    .sort((a, b) => (BigInt(a) < BigInt(b) ? 1 : -1));
  for (const id of gone.slice(KEPT_GONE_LOGS)) {
    rmSync(deviceLogPath(id), { force: true });
    rmSync(`${deviceLogPath(id)}.1`, { force: true });
  }
}

/** Writes one line to a device's log from outside its driver (say, the daemon noting a crash). */
export function appendDeviceLog(id: string, line: string): void {
  try {
    const fd = openDeviceLog(id);
    try {
      writeSync(fd, `${new Date().toISOString()} [bdus daemon ${process.pid}] ${line}\n`);
    } finally {
      closeSync(fd);
    }
  } catch {
    // the log is a courtesy: never fail the daemon over it
  }
}
