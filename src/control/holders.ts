/**
 * Who uses a block device: the mounts of it (in every mount namespace), the block devices
 * stacked on it (dm, md: /sys/.../holders), and the processes that hold it open. `bdus destroy`
 * refuses a device in use unless forced (ublk's TRY_STOP_DEV, md's "disappear when no longer
 * needed"): destroying a mounted device makes its filesystem fail mid-flight.
 *
 * This is a look at one moment, not a lock: an open that comes after it is ended by the
 * destruction as with --force (it fails cleanly, seed 002).
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { splitDeviceNumber } from '../util/device-number.js';
import { sleep } from '../util/process.js';

/** A short-lived opener (udev's probe, blkid) is gone within this: look again before refusing. */
const SETTLE_TRIES = 3;
const SETTLE_MS = 100;

/** Descriptions of what holds device major:minor ("mounted on /mnt", "open by pid 12 (fio)"), except processes in `ignore`. */
export async function deviceHolders(major: number, minor: number, ignore: ReadonlySet<number>): Promise<string[]> {
  let holders: string[] = [];
  for (let attempt = 0; attempt < SETTLE_TRIES; attempt++) {
    if (attempt > 0) await sleep(SETTLE_MS);
    holders = [...mountsOf(major, minor), ...stackedOn(major, minor), ...openers(major, minor, ignore)];
    if (holders.length === 0) return holders;
  }
  return holders;
}

function pids(): number[] {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .map(Number);
}

/** Mount points of the device, once per mount namespace. */
function mountsOf(major: number, minor: number): string[] {
  const wanted = `${major}:${minor}`;
  const seen = new Set<string>();
  const found = new Set<string>();
  for (const pid of [process.pid, ...pids()]) {
    let mountinfo: string;
    try {
      const namespace = readlinkSync(`/proc/${pid}/ns/mnt`);
      if (seen.has(namespace)) continue;
      seen.add(namespace);
      mountinfo = readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    for (const line of mountinfo.split('\n')) {
      const fields = line.split(' ');
      if (fields[2] === wanted) found.add(`mounted on ${unescape(fields[4] ?? '?')}${pid === process.pid ? '' : ` (mount namespace of pid ${pid})`}`);
    }
  }
  return [...found];
}

/** mountinfo escapes spaces and such as \040. */
function unescape(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

function stackedOn(major: number, minor: number): string[] {
  try {
    return readdirSync(`/sys/dev/block/${major}:${minor}/holders`).map((name) => `used by /dev/${name}`);
  } catch {
    return [];
  }
}

function openers(major: number, minor: number, ignore: ReadonlySet<number>): string[] {
  const found: string[] = [];
  for (const pid of pids()) {
    if (pid === process.pid || ignore.has(pid)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (!readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('/')) continue; // sockets, pipes, anon inodes
        const stat = statSync(`/proc/${pid}/fd/${fd}`);
        if (!stat.isBlockDevice()) continue;
        const number = splitDeviceNumber(stat.rdev);
        if (number.major !== major || number.minor !== minor) continue;
      } catch {
        continue;
      }
      found.push(`open by pid ${pid} (${command(pid)})`);
      break;
    }
  }
  return found;
}

function command(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}
