/**
 * The torture test, after BDUS's fio-verify test: XFS on a recoverable device (the loop example
 * over an image file in /dev/shm), fio writing and verifying files on it (crc32c, several jobs,
 * direct I/O, 4 KiB blocks), while the driver is replaced every 2 s, every other time after a
 * SIGKILL. Passes with 0 fio errors, no I/O error in the kernel log for the device, and a clean
 * xfs_repair -n.
 *
 *   npm run torture -- [--seconds N] [--frontend fuse|nbd|ublk] [--image-mib M] [--jobs J] [--replace-every-ms MS]
 *
 * (default 600 s on the default frontend; CI runs 60 s via test/torture.test.ts, and 75 s on ublk in
 * the VM via test/ublk.test.ts; docs/recovery.md records the last 10-minute run on each path).
 *
 * Everything it creates (device, mount, image) is removed at the end, also when it fails.
 */
import { mkdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { background, bdus, info, must, sh, sleep } from './helpers.js';

export interface TortureReport {
  seconds: number;
  replacements: number;
  kills: number;
  fioErrors: string;
  kernelIoErrors: number;
  writtenMiB: number;
}

export interface TortureOptions {
  /** `--frontend` for the device (default: auto). */
  frontend?: string;
  /** Image size (default 1 GiB) and fio jobs of 48 MiB each (default 4): smaller in the VM. */
  imageBytes?: number;
  jobs?: number;
  /** Pause between replacements (default 2 s). */
  replaceEveryMs?: number;
  /**
   * Go on past `seconds` until this many replacements were made (default 0): on a slow machine
   * (the emulated VM on a loaded host) each takes tens of seconds, and a test wants both kinds.
   */
  minReplacements?: number;
}

export async function torture(seconds: number, log: (line: string) => void = () => undefined, options: TortureOptions = {}): Promise<TortureReport> {
  const { frontend, imageBytes = 1 << 30, jobs = 4, replaceEveryMs = 2000, minReplacements = 0 } = options;
  const name = `bdus-torture-${process.pid}`;
  const image = `/dev/shm/${name}.img`;
  const mountpoint = `/tmp/${name}`;
  writeFileSync(image, '');
  truncateSync(image, imageBytes);
  let dev = '';
  let mounted = false;
  try {
    const run = await bdus(['run', 'loop', image, '--recoverable', '--disable-partition-scanning', ...(frontend ? ['--frontend', frontend] : [])], { timeoutMs: 120_000 });
    if (run.code !== 0) throw new Error(`bdus run failed: ${run.stderr}`);
    dev = run.stdout.trim();
    const kernel = (await must('readlink', ['-f', dev])).trim().replace('/dev/', '');
    await must('mkfs.xfs', ['-q', '-f', dev]);
    mkdirSync(mountpoint, { recursive: true });
    await must('mount', [dev, mountpoint]);
    mounted = true;
    const marker = markKernelLog();

    const fio = background('fio', [
      '--name=torture', `--directory=${mountpoint}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio',
      '--iodepth=8', `--numjobs=${jobs}`, '--size=48M', '--verify=crc32c', '--verify_backlog=256', '--verify_fatal=1',
      // Stopped when the replacements end; the runtime only bounds a run whose stop went astray.
      '--verify_state_save=0', '--time_based', `--runtime=${seconds + 600}`, '--group_reporting', '--output-format=terse',
    ]);
    let replacements = 0;
    let kills = 0;
    try {
      const end = Date.now() + seconds * 1000;
      while (Date.now() < end || replacements < minReplacements) {
        await sleep(replaceEveryMs);
        if (replacements % 2 === 1) {
          process.kill(Number(await info(dev, 'pid')), 'SIGKILL');
          kills++;
        }
        // Minutes, not seconds: in the VM (emulated, ~20x slower) on a busy host a rerun can take a minute.
        const r = await bdus(['rerun', dev, 'loop', image], { timeoutMs: 300_000 });
        if (r.code !== 0) throw new Error(`rerun ${replacements + 1} failed (exit ${r.code}): ${r.stderr}`);
        replacements++;
        log(`${replacements} replacements (${kills} after SIGKILL)`);
      }
    } finally {
      fio.stop();
    }
    const result = await fio.done;
    // fio exits with 128 when stopped by a signal; its report says whether any I/O or verify failed.
    if (result.code !== 0 && result.code !== 128) throw new Error(`fio failed (${result.code}): ${result.stderr}`);
    const fields = result.stdout.trim().split('\n').at(-1)!.split(';');
    await must('umount', [mountpoint]);
    mounted = false;
    const repair = await sh('xfs_repair', ['-n', dev], { timeoutMs: 300_000 });
    if (repair.code !== 0) throw new Error(`xfs_repair -n found problems:\n${repair.stdout}${repair.stderr}`);
    return {
      seconds,
      replacements,
      kills,
      fioErrors: fields[4]!,
      kernelIoErrors: await kernelIoErrorsSince(marker, kernel),
      writtenMiB: Math.round(Number(fields[46]) / 1024),
    };
  } finally {
    if (mounted) await sh('umount', ['-l', mountpoint]);
    rmSync(mountpoint, { recursive: true, force: true });
    if (dev) await bdus(['destroy', '--force', '--no-flush', dev], { timeoutMs: 60_000 });
    rmSync(image, { force: true });
  }
}

/**
 * Writes a unique line into the kernel log: errors are counted after it. (Counting all lines
 * before and after does not work: the ring buffer drops old lines while the test runs.)
 */
export function markKernelLog(): string {
  const marker = `bdus torture ${process.pid} ${Date.now()}`;
  writeFileSync('/dev/kmsg', `${marker}\n`);
  return marker;
}

/** I/O errors the kernel logged for block device `name` since `marker`. */
export async function kernelIoErrorsSince(marker: string, name: string): Promise<number> {
  const lines = (await sh('dmesg', [])).stdout.split('\n');
  const start = lines.findIndex((line) => line.includes(marker));
  return lines.slice(start + 1).filter((line) => line.includes(`error, dev ${name},`)).length;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '600' },
      frontend: { type: 'string' },
      'image-mib': { type: 'string' },
      jobs: { type: 'string' },
      'replace-every-ms': { type: 'string' },
    },
  });
  const number = (name: keyof typeof values): number | undefined => {
    const text = values[name];
    if (text === undefined) return undefined;
    const value = Number(text);
    if (!Number.isInteger(value) || value <= 0) throw new Error(`--${name} takes a positive integer, not '${text}'`);
    return value;
  };
  const imageMiB = number('image-mib');
  const report = await torture(number('seconds')!, (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`), {
    frontend: values.frontend,
    imageBytes: imageMiB === undefined ? undefined : imageMiB * 2 ** 20,
    jobs: number('jobs'),
    replaceEveryMs: number('replace-every-ms'),
  });
  process.stdout.write(`${JSON.stringify({ frontend: values.frontend ?? 'auto', ...report }, null, 2)}\n`);
  process.exitCode = report.fioErrors === '0' && report.kernelIoErrors === 0 ? 0 : 1;
}
