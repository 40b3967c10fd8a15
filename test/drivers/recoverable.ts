/**
 * The loop example over IMAGE (so the data outlives each driver instance), misbehaving as asked:
 *
 *   recoverable.js IMAGE [BEHAVIOUR...]
 *     abort-on-discard     a discard or write-zeroes aborts the driver
 *     hang-read-at=N       a read at byte offset N never finishes
 *     crash-read-at=N      a read at byte offset N kills the process (SIGKILL)
 *     spin-read-at=N       a read at byte offset N never returns: its event loop is stuck for good
 *     stop-reading-at=N    a read at byte offset N makes the process stop reading requests, its
 *                          event loop running on: /dev/fuse's descriptor number now names
 *                          /dev/null (FUSE+loop; the daemon's copy keeps the connection open)
 *     grow-read-at=N       a read at byte offset N allocates memory (touched, 16 MiB at a time)
 *                          until something kills the process
 *     spin-flush           a flush never returns (a stuck hand-over), from 1 s after initialize on
 *     slow-flush=MS        a flush takes MS milliseconds, from 1 s after initialize on
 *                          (the device's set-up flushes before that)
 *     fail-flush           every flush fails
 *     fail-writes-while=F  while file F exists, every write and flush fails with EIO
 *     fail-terminate       terminate fails
 *     slow-terminate=MS    terminate takes MS milliseconds
 *     fail-initialize      initialize fails
 *     fail-validate        validate fails
 *     write-target         offers writeTarget (fresh memory per write, which write then stores):
 *                          a ublk device it creates uses user copy
 */
import { closeSync, existsSync, openSync, readdirSync, readlinkSync } from 'node:fs';
import loop from '../../src/examples/loop.js';
import { abort, DriverError } from '../../src/index.js';

export default function recoverable(args: readonly string[]): ReturnType<typeof loop> {
  const [image, ...behaviours] = args;
  const base = loop([image!]);
  const has = (name: string) => behaviours.includes(name);
  const value = (name: string) => {
    const found = behaviours.find((b) => b.startsWith(`${name}=`));
    return found === undefined ? undefined : Number(found.slice(name.length + 1));
  };
  const hangAt = value('hang-read-at');
  const crashAt = value('crash-read-at');
  const slowTerminate = value('slow-terminate');
  const spinAt = value('spin-read-at');
  const growAt = value('grow-read-at');
  const stopReadingAt = value('stop-reading-at');
  const hoard: Buffer[] = [];
  const slowFlush = value('slow-flush');
  const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  const failFlag = behaviours.find((b) => b.startsWith('fail-writes-while='))?.slice('fail-writes-while='.length);
  const failing = () => failFlag !== undefined && existsSync(failFlag);
  const failed = (what: string) => new DriverError('EIO', `${what} fails while ${failFlag} exists, as asked`);
  let armedAt = Infinity;

  return {
    ...base,
    attributes: { ...base.attributes, disablePartitionScanning: true },
    validate() {
      if (has('fail-validate')) throw new Error('validate refuses, as asked');
    },
    initialize(ctx) {
      if (has('fail-initialize')) throw new Error('initialize fails, as asked');
      armedAt = Date.now() + 1000;
      return base.initialize!(ctx);
    },
    async terminate(ctx) {
      if (slowTerminate) await pause(slowTerminate);
      await base.terminate!(ctx);
      if (has('fail-terminate')) throw new Error('terminate fails, as asked');
    },
    async read(buffer, offset, ctx) {
      if (offset === hangAt) return new Promise<void>(() => undefined);
      if (offset === crashAt) process.kill(process.pid, 'SIGKILL');
      if (offset === spinAt) for (;;); // eslint-disable-line no-empty
      if (offset === growAt) for (;;) hoard.push(Buffer.alloc(16 << 20, 1));
      if (offset === stopReadingAt) stopReading();
      return base.read!(buffer, offset, ctx);
    },
    ...(has('write-target') ? { writeTarget: (_offset: number, size: number) => Buffer.allocUnsafe(size) } : {}),
    async write(buffer, offset, ctx) {
      if (failing()) throw failed('a write');
      return base.write!(buffer, offset, ctx);
    },
    async flush(ctx) {
      if (has('fail-flush')) throw new DriverError('EIO', 'flush fails, as asked');
      if (failing()) throw failed('a flush');
      if (has('spin-flush') && Date.now() > armedAt) for (;;); // eslint-disable-line no-empty
      if (slowFlush && Date.now() > armedAt) await pause(slowFlush);
      return base.flush!(ctx);
    },
    async writeZeros(offset, size, mayUnmap, ctx) {
      if (has('abort-on-discard')) abort('a discard aborts this driver, as asked');
      return base.writeZeros!(offset, size, mayUnmap, ctx);
    },
    async discard(offset, size, ctx) {
      if (has('abort-on-discard')) abort('a discard aborts this driver, as asked');
      return base.discard!(offset, size, ctx);
    },
  };
}

/**
 * Swaps /dev/fuse out from under the frontend: its descriptor number comes to name /dev/null, so
 * every read finds nothing and every reply goes nowhere, while the event loop runs on (the
 * watch on the old file stays, as the daemon holds that file too).
 */
function stopReading(): void {
  const fd = readdirSync('/proc/self/fd').map(Number).find((n) => {
    try {
      return readlinkSync(`/proc/self/fd/${n}`) === '/dev/fuse';
    } catch {
      return false;
    }
  });
  if (fd === undefined) throw new Error('stop-reading-at: no /dev/fuse descriptor (FUSE+loop only)');
  closeSync(fd);
  const extra: number[] = [];
  for (let next = openSync('/dev/null', 'r+'); next !== fd; next = openSync('/dev/null', 'r+')) extra.push(next);
  for (const n of extra) closeSync(n);
}
