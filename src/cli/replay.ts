/**
 * `bdus replay`: issues the requests of a log filter's trace to a block device again, at the
 * times they started, to reproduce a workload (a database's, a filesystem's) on another device,
 * another driver, or another filter stack.
 */
import { closeSync, constants, fdatasync, fstatSync, openSync, read, write } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { BdusError } from '../driver/errors.js';
import { patternAt } from '../drivers/pattern.js';
import { parseLog, type LoggedRequest } from '../filters/log.js';
import { blockDiscard, fallocate, native } from '../native.js';
import { parseCommandLine } from './suggest.js';
import { UsageError } from './usage.js';

export const REPLAY_HELP = `usage: bdus replay <trace> <device> [--speed N] [--depth N]

Issues the requests of a trace written by the log filter (--filter log:file=TRACE) to <device>,
any block device, each at the time it started in the trace: --speed 2 twice as fast, --speed 0
as fast as possible; at most --depth requests at once (default 16). Reads read; writes and FUA
writes write a pattern (the trace holds no data: what <device> held there is overwritten), a
FUA write through O_DSYNC; flush is fdatasync; write-zeroes is fallocate(ZERO_RANGE); discard is
BLKDISCARD. Requests with no counterpart on a block device (extents, ioctl, secure erase) are
counted, not sent. A device that is mounted or open elsewhere is refused (O_EXCL).

Prints what was sent per operation and what failed, beside the trace's own time. Exits 1 if a
request that succeeded in the trace failed.
`;

export const REPLAY_OPTIONS = { speed: { type: 'string' }, depth: { type: 'string' } } as const;

const readAsync = promisify(read);
const writeAsync = promisify(write);
const fdatasyncAsync = promisify(fdatasync);
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_ZERO_RANGE = 0x10;
const WRITES = new Set(['write', 'fua-write', 'write-same', 'write-zeroes', 'discard', 'flush']);
const SENT = new Set([...WRITES, 'read']);

interface Tally {
  seen: number;
  sent: number;
  failed: Map<string, number>;
}

export async function replayCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine('replay', { args: argv, options: REPLAY_OPTIONS, allowPositionals: true });
  const [trace, target, ...extra] = positionals;
  if (trace === undefined || target === undefined || extra.length > 0) throw new UsageError('bdus replay: give the trace and the device');
  const speed = values.speed === undefined ? 1 : Number(values.speed);
  const depth = values.depth === undefined ? 16 : Number(values.depth);
  if (!(speed >= 0) || !Number.isFinite(speed)) throw new UsageError(`bdus replay: --speed ${values.speed}: a number, 0 for as fast as possible`);
  if (!Number.isInteger(depth) || depth < 1 || depth > 1024) throw new UsageError(`bdus replay: --depth ${values.depth}: 1 to 1024`);

  let requests: LoggedRequest[];
  try {
    requests = parseLog(trace).sort((a, b) => a.startMs - b.startMs);
  } catch (error) {
    if (error instanceof BdusError) throw error;
    throw new BdusError((error as NodeJS.ErrnoException).code ?? 'EIO', `bdus replay: cannot read the trace: ${(error as Error).message}`);
  }
  const writing = requests.some((r) => WRITES.has(r.operation));
  const open = (extraFlags: number): number => {
    try {
      return openSync(target, (writing ? constants.O_RDWR : constants.O_RDONLY) | constants.O_DIRECT | extraFlags);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? 'EIO';
      const why = code === 'EBUSY' ? 'it is in use (mounted, or open with O_EXCL elsewhere)' : (error as Error).message;
      throw new BdusError(code, `bdus replay: cannot open ${target}: ${why}`);
    }
  };
  const fd = open(constants.O_EXCL);
  const fds = [fd];
  try {
    if (!fstatSync(fd).isBlockDevice()) throw new BdusError('EINVAL', `bdus replay: ${target} is not a block device`);
    const size = Number(native.blockDeviceSize(fd));
    const end = Math.max(0, ...requests.filter((r) => SENT.has(r.operation)).map((r) => r.offset + r.size));
    if (end > size) throw new BdusError('EINVAL', `bdus replay: the trace reaches byte ${end}, past the end of ${target} (${size} bytes)`);
    // The O_DSYNC descriptor is not exclusive: an O_EXCL open holds the device for its own file only.
    const fua = requests.some((r) => r.operation === 'fua-write') ? open(constants.O_DSYNC) : fd;
    if (fua !== fd) fds.push(fua);

    // Aligned buffers for O_DIRECT, one per request in flight, each as large as the largest transfer.
    const largest = Math.max(4096, ...requests.filter((r) => r.operation !== 'discard' && r.operation !== 'write-zeroes').map((r) => r.size));
    const each = Math.ceil(largest / 4096) * 4096;
    const pool = native.mapAnonymous(each * depth);
    const free = Array.from({ length: depth }, (_, i) => pool.subarray(i * each, (i + 1) * each));

    const tallies = new Map<string, Tally>();
    let regressions = 0;
    const send = async (r: LoggedRequest, buffer: Buffer): Promise<void> => {
      const view = buffer.subarray(0, r.size);
      switch (r.operation) {
        case 'read':
          return void (await readAsync(fd, view, 0, r.size, r.offset));
        case 'write':
        case 'write-same':
        case 'fua-write':
          patternAt(view, r.offset);
          return void (await writeAsync(r.operation === 'fua-write' ? fua : fd, view, 0, r.size, r.offset));
        case 'flush':
          return fdatasyncAsync(fd);
        case 'write-zeroes':
          return fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, r.offset, r.size);
        case 'discard':
          return blockDiscard(fd, r.offset, r.size);
      }
    };
    const inFlight = new Set<Promise<void>>();
    const t0 = performance.now();
    const first = requests[0]?.startMs ?? 0;
    for (const r of requests) {
      const tally = tallies.get(r.operation) ?? { seen: 0, sent: 0, failed: new Map() };
      tallies.set(r.operation, tally);
      tally.seen++;
      if (!SENT.has(r.operation)) continue;
      const due = speed === 0 ? 0 : t0 + (r.startMs - first) / speed - performance.now();
      if (due > 1) await sleep(due);
      while (free.length === 0) await Promise.race(inFlight);
      const buffer = free.pop()!;
      tally.sent++;
      const done: Promise<void> = send(r, buffer)
        .catch((error: unknown) => {
          const code = String((error as { code?: unknown }).code ?? 'EIO');
          tally.failed.set(code, (tally.failed.get(code) ?? 0) + 1);
          if (r.result === 'ok') regressions++;
        })
        .finally(() => {
          free.push(buffer);
          inFlight.delete(done);
        });
      inFlight.add(done);
    }
    await Promise.all(inFlight);
    const took = performance.now() - t0;
    const traced = requests.length === 0 ? 0 : Math.max(...requests.map((r) => r.startMs + r.durationMs)) - first;

    process.stdout.write(`replayed ${trace} onto ${target} in ${(took / 1000).toFixed(3)} s (the trace: ${(traced / 1000).toFixed(3)} s)\n`);
    for (const [operation, tally] of tallies) {
      const failures = [...tally.failed].map(([code, n]) => `${n} ${code}`).join(', ');
      const line = SENT.has(operation) ? `${tally.sent} sent${failures ? `, failed: ${failures}` : ''}` : `${tally.seen} not sent (no counterpart on a block device)`;
      process.stdout.write(`  ${operation.padEnd(13)} ${line}\n`);
    }
    if (regressions > 0) process.stderr.write(`bdus replay: ${regressions} request(s) that succeeded in the trace failed here\n`);
    return regressions > 0 ? 1 : 0;
  } finally {
    for (const f of fds) closeSync(f);
  }
}
