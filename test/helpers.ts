/**
 * Test helpers: run the real CLI, create devices that are destroyed after the test (also when it
 * fails), and run real clients as child processes (never synchronous I/O from this process: it
 * may be the one serving the device).
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';
import { waitUntilDestroyed } from '../src/control/manage.js';
import { ENABLE_URING } from '../src/frontend/fuse/ring.js';
import { withTimeout } from '../src/util/process.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BIN = `${ROOT}dist/src/cli/bin.js`;
export const DRIVERS = `${ROOT}dist/test/drivers`;

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; never rejects on a non-zero exit. */
export function sh(file: string, args: readonly string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<Result> {
  return new Promise((resolve) => {
    const settings = { timeout: options.timeoutMs ?? 120_000, env: options.env ?? process.env, cwd: options.cwd, maxBuffer: 64 << 20 };
    execFile(file, args, settings, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Runs a command and throws (with its output) unless it exits 0. */
export async function must(file: string, args: readonly string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<string> {
  const r = await sh(file, args, options);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

export function bdus(args: readonly string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Result> {
  return sh(process.execPath, [BIN, ...args], options);
}

/**
 * Creates a device with `bdus run ARGS` (in the background, as users do) and registers its
 * destruction with the test. Resolves with the device's path.
 */
export async function device(t: TestContext, args: readonly string[]): Promise<string> {
  // Generous: in the emulated VM on a loaded host a start takes tens of seconds, and a run cut
  // short leaves a device this test cannot clean up.
  const r = await bdus(['run', ...args], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`bdus run ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  const path = r.stdout.trim();
  t.after(async () => {
    if (existsSync(path)) await bdus(['destroy', '--force', '--no-flush', path], { timeoutMs: 120_000 });
  });
  return path;
}

/** The loop node behind /dev/bdus-N, e.g. "loop3". */
export async function kernelName(path: string): Promise<string> {
  return (await must('readlink', ['-f', path])).trim().replace('/dev/', '');
}

export function sysfs(name: string, file: string): string {
  return readFileSync(`/sys/block/${name}/${file}`, 'utf8').trim();
}

/** Reads the JSON-lines record a test driver writes. */
export function records(file: string): Array<Record<string, unknown>> {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Spawns a long-running client; resolves with its exit code and stderr and the time it took. */
export function background(file: string, args: readonly string[]): { done: Promise<Result & { ms: number }>; stop(): void } {
  const started = Date.now();
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return {
    done: new Promise((resolve) => child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr, ms: Date.now() - started }))),
    /** Asks the client to finish (SIGINT: fio then stops and reports as usual). */
    stop: () => void child.kill('SIGINT'),
  };
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every scratch path this test process handed out (see the exit hook below). */
const scratchPaths = new Set<string>();

/**
 * When the test process ends, whatever of its scratch paths is still there goes: a file a
 * driver wrote again after its test's own removal (a recorder's terminate runs when the device
 * is destroyed, in an after hook registered later and so run later), or one a failed test never
 * reached its removal for. Directories go only if empty: a mount point still mounted stays, and
 * is reported as a leftover.
 */
process.on('exit', () => {
  for (const path of scratchPaths) {
    try {
      if (statSync(path).isDirectory()) rmdirSync(path);
      else rmSync(path, { force: true });
    } catch {
      // gone already, or not empty: nothing more to do
    }
  }
});

/** A unique scratch path under /tmp, removed when the test process ends if its test did not remove it. */
export function scratch(name: string): string {
  const path = `/tmp/bdus-test-${process.pid}-${Date.now()}-${name}`;
  scratchPaths.add(path);
  return path;
}

/** ext4 on the device, a file written, e2fsck clean; then destroyed, leaving nothing. */
export async function ext4ThenDestroy(t: TestContext, dev: string): Promise<void> {
  await must('mkfs.ext4', ['-q', '-F', dev]);
  const mnt = await mounted(t, dev);
  writeFileSync(`${mnt}/file`, Buffer.alloc(8 << 20, 5));
  await must('umount', [mnt]);
  await must('e2fsck', ['-f', '-n', dev]);
  const destroyed = await bdus(['destroy', dev], { timeoutMs: 60_000 });
  assert.equal(destroyed.code, 0, destroyed.stderr);
  await noLeftovers();
}

/** Waits (up to 10 s) until no bdus device has left anything behind. */
export async function noLeftovers(): Promise<void> {
  for (let i = 0; i < 100 && (await leftovers()).length > 0; i++) await sleep(100);
  assert.deepEqual(await leftovers(), []);
}

/**
 * Waits for the daemon's word that the device with this id is gone (its path goes first, the
 * rest after it: in the emulated VM, seconds after), then checks that nothing is left.
 */
export async function goneLeavingNothing(id: bigint, ms = 60_000): Promise<void> {
  await withTimeout(waitUntilDestroyed(id), ms, () => new Error(`the daemon did not remove device ${id} within ${ms} ms`));
  assert.deepEqual(await leftovers(), []);
}

/** What bdus devices left in the kernel and /dev: FUSE mounts, bound loop devices, stable paths. */
export async function leftovers(): Promise<string[]> {
  const mounts = readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes(' fuse.bdus '));
  // A loop device of ours shows its image under /run/bdus, or "/" once the image was lazily unmounted.
  const loops = (await must('losetup', ['-a'])).split('\n').filter((l) => l.includes('/run/bdus/') || l.endsWith('(/)'));
  const links = (await sh('sh', ['-c', 'ls /dev/bdus-* 2>/dev/null'])).stdout.split('\n').filter(Boolean);
  // A connected kernel NBD device has a pid file (the VM's kernel; this machine's has no nbd).
  const nbds = (await sh('sh', ['-c', 'ls /sys/block/nbd*/pid 2>/dev/null'])).stdout.split('\n').filter(Boolean);
  // ublk devices, block and character (the VM's kernel again).
  const ublks = (await sh('sh', ['-c', 'ls /dev/ublkb* /dev/ublkc* 2>/dev/null'])).stdout.split('\n').filter(Boolean);
  // Statistics of devices that are gone.
  const stats = (await sh('sh', ['-c', 'ls /run/bdus/stats/* 2>/dev/null'])).stdout.split('\n').filter(Boolean);
  // Run-time filter settings of devices that are gone.
  const settings = (await sh('sh', ['-c', 'ls -d /run/bdus/filters/* 2>/dev/null'])).stdout.split('\n').filter(Boolean);
  // Drivers' run-time directories of devices that are gone (an s3 driver's cache).
  const runDirs = (await sh('sh', ['-c', 'ls -d /run/bdus/drivers/* 2>/dev/null'])).stdout.split('\n').filter(Boolean);
  return [...mounts, ...loops, ...links, ...nbds, ...ublks, ...stats, ...settings, ...runDirs];
}

/** A field of `bdus info`. */
export async function info(dev: string, field: string): Promise<string> {
  return (await must(process.execPath, [BIN, 'info', dev, `--${field}`])).trim();
}

/** A fresh sparse image file of `size` bytes (default 64 MiB), removed after the test. */
export function image(t: TestContext, size = 64 << 20): string {
  const path = scratch('image');
  writeFileSync(path, '');
  truncateSync(path, size);
  t.after(() => rmSync(path, { force: true }));
  return path;
}

/** A file the lanes test driver (drivers/lanes.ts) marks with the number of each lane that serves, removed after the test. */
export function laneMarks(t: TestContext): string {
  const path = scratch('marks');
  writeFileSync(path, '');
  t.after(() => rmSync(path, { force: true }));
  return path;
}

/** The lanes that marked `path`, sorted ('undefined' for a driver without lanes). */
export function lanesSeen(path: string): string[] {
  return readFileSync(path, 'utf8').split('\n').filter(Boolean).sort();
}

/**
 * Gives `dev` a new driver for each lane count in turn (`driver` is the lanes test driver's
 * module, in MODE serve over `img`), each serving `ms` before every one of its lanes must have
 * marked; `check(lanes)` asks more of each.
 */
export async function rerunLanes(t: TestContext, dev: string, driver: string, img: string, counts: readonly number[], ms: number, check?: (lanes: number) => Promise<void>): Promise<void> {
  for (const lanes of counts) {
    const seen = laneMarks(t);
    await mustRerun(dev, [driver, 'serve', img, seen, '--lanes', String(lanes)]);
    await check?.(lanes);
    await sleep(ms);
    // Without lanes (one), ctx.lane is undefined.
    const expected = lanes === 1 ? ['undefined'] : Array.from({ length: lanes }, (_, i) => String(i));
    assert.deepEqual(lanesSeen(seen), expected, `every lane of the ${lanes}-lane driver served`);
  }
}

/** Reads one 4 KiB block at `offset`, bypassing the page cache. */
export function readBlock(dev: string, offset: number): Promise<Result> {
  return sh('dd', [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${offset}`, 'bs=4096', 'count=1', 'status=none'], {
    timeoutMs: 120_000,
  });
}

/** Mounts `dev` on a fresh directory, unmounted and removed after the test (also when it fails). */
export async function mounted(t: TestContext, dev: string): Promise<string> {
  const mnt = scratch('mnt');
  await must('mkdir', ['-p', mnt]);
  await must('mount', [dev, mnt]);
  t.after(async () => {
    await sh('umount', [mnt]);
    await sh('rmdir', [mnt]);
  });
  return mnt;
}

/** SIGKILLs a device's driver and waits until the daemon has seen it die. */
export async function killDriver(dev: string): Promise<void> {
  process.kill(Number(await info(dev, 'pid')), 'SIGKILL');
  for (let i = 0; i < 200 && (await info(dev, 'pid').catch(() => '0')) !== '0'; i++) await sleep(50);
}

/** `bdus rerun DEV ARGS...`, which must succeed. */
export async function mustRerun(dev: string, args: readonly string[]): Promise<void> {
  // Minutes: a hand-over under fio in the emulated VM on a loaded host took over two.
  const r = await bdus(['rerun', dev, ...args], { timeoutMs: 300_000 });
  assert.equal(r.code, 0, `bdus rerun failed (${r.code}): ${r.stderr}`);
}

/**
 * fio randwrite with crc32c verify on `dev` (at queue depth 8, or `iodepth`), until stopped;
 * errors() stops it and returns its error count. With `cpus`, one job per CPU, each on its own
 * CPU and its own 16 MiB (so that every hardware queue of a ublk device has requests).
 */
export function fioVerify(t: TestContext, dev: string, { cpus = 0, iodepth = 8, bs = '4k' } = {}): { errors(): Promise<string> } {
  const jobs = cpus > 0 ? [`--numjobs=${cpus}`, `--cpus_allowed=0-${cpus - 1}`, '--cpus_allowed_policy=split', '--offset_increment=16M', '--group_reporting'] : [];
  const fio = background('fio', [
    '--name=verify', `--filename=${dev}`, '--rw=randwrite', `--bs=${bs}`, `--iodepth=${iodepth}`, '--ioengine=libaio', '--direct=1',
    '--size=16M', '--verify=crc32c', '--verify_backlog=128', '--verify_fatal=1', '--verify_state_save=0',
    '--time_based', '--runtime=600', '--output-format=terse', ...jobs,
  ]);
  t.after(() => fio.stop());
  return {
    async errors(): Promise<string> {
      fio.stop();
      const result = await fio.done;
      assert.ok(result.code === 0 || result.code === 128, `fio failed (${result.code}): ${result.stderr}`);
      return result.stdout.split(';')[4]!;
    },
  };
}

/**
 * Under fio verify on `dev`: SIGKILLs its driver and reruns `driver`, then replaces the driver
 * live three times, a second apart. Returns fio's error count.
 */
export async function killThenSwap(t: TestContext, dev: string, driver: readonly string[]): Promise<string> {
  const fio = fioVerify(t, dev);
  await sleep(1500);
  await killDriver(dev);
  await mustRerun(dev, driver);
  for (let i = 0; i < 3; i++) {
    await sleep(1000);
    await mustRerun(dev, driver);
  }
  await sleep(1000);
  return fio.errors();
}

/** What the open file descriptors of process `pid` point at (readlink of /proc/PID/fd/N). */
export function openFiles(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`).flatMap((fd) => {
    try {
      return [readlinkSync(`/proc/${pid}/fd/${fd}`)];
    } catch {
      return []; // closed meanwhile
    }
  });
}

/** This kernel has FUSE over io_uring (6.14+). */
export const fuseUringAvailable = existsSync(ENABLE_URING);

/** Switches the kernel's enable_uring (as a user would: it is the machine's) and back after the test. */
export function setUring(t: TestContext, on: boolean): void {
  const before = readFileSync(ENABLE_URING, 'utf8').trim();
  writeFileSync(ENABLE_URING, on ? 'Y' : 'N');
  t.after(() => writeFileSync(ENABLE_URING, before));
}

/** The calls of each of `names` (system calls) that process `pid` and its threads made in `seconds`, as strace counts them. */
export async function syscalls(pid: number, seconds: number, names: readonly string[]): Promise<Map<string, number>> {
  const r = await sh('timeout', ['-s', 'INT', String(seconds), 'strace', '-f', '-c', '-p', String(pid), '-e', `trace=${names.join(',')}`]);
  const calls = new Map<string, number>();
  for (const line of r.stderr.split('\n')) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$/.exec(line);
    if (m && m[2] !== 'total') calls.set(m[2]!, Number(m[1]));
  }
  return calls;
}
