/**
 * Lanes (the `lanes` attribute): a device whose requests several threads of its driver process
 * serve, each through its own clone of the FUSE connection. ext4 and fio verify on it, every lane
 * serving and counted; the ram example's lanes sharing its memory; resizes; hot swaps between
 * lane counts; a recoverable device's lanes across a SIGKILL (the daemon holds every clone);
 * what it refuses; a lane that cannot start, aborts or gets stuck leaves nothing; a lane's reader
 * parks while the queue is 1 deep and comes back for a deep one.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { background, bdus, BIN, device, DRIVERS, ext4ThenDestroy, fioVerify, image, info, killDriver, laneMarks, lanesSeen, must, noLeftovers, openFiles, rerunLanes, sleep } from './helpers.js';
import { ABORT_AT } from './drivers/lanes.js';

const DRIVER = `${DRIVERS}/lanes.js`;

function fuseFiles(pid: number): number {
  return openFiles(pid).filter((target) => target === '/dev/fuse').length;
}

/** fio verify of random 4k writes at QD32 over [offset, offset + size): both lanes take some. */
async function verifyLanes(dev: string, offset = 0, size = 64 << 20): Promise<void> {
  const fio = await must('fio', ['--name=v', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', '--iodepth=32', '--ioengine=libaio', '--direct=1', `--offset=${offset}`, `--size=${size}`, '--verify=crc32c', '--verify_fatal=1', '--output-format=terse'], { timeoutMs: 180_000 });
  assert.equal(fio.split(';')[4], '0', `fio verify of [${offset >> 20}M, +${size >> 20}M) on ${dev}: no error`);
}

test('lanes: two threads serve a file device: fio verify and ext4 on it, every lane serves and is counted', async (t) => {
  const img = image(t, 256 << 20);
  const seen = laneMarks(t);
  const dev = await device(t, ['--frontend', 'fuse', DRIVER, 'serve', img, seen, '--lanes', '2']);
  const pid = Number(await info(dev, 'pid'));
  assert.equal(fuseFiles(pid), 2, 'the driver reads the connection through two /dev/fuse files');

  await verifyLanes(dev);
  assert.deepEqual(lanesSeen(seen), ['0', '1'], 'both lanes served requests');

  // The lanes' counts reach the stats file at the main thread's next beat.
  await sleep(600);
  const stats = JSON.parse(await must(process.execPath, [BIN, 'stats', dev, '--json'])) as { operations: Record<string, { requests: number }>; callbacks: number };
  assert.ok(stats.operations.write!.requests >= 16384, `every 4k write is counted (${stats.operations.write!.requests})`);
  assert.ok(stats.operations.read!.requests >= 16384, `every 4k read is counted (${stats.operations.read!.requests})`);
  assert.equal(stats.callbacks, 0, 'no callback is left counted as running');
  await ext4ThenDestroy(t, dev);
});

test('lanes: the ram example in two lanes shares one memory: fio verify, discard, ext4', async (t) => {
  const dev = await device(t, ['--frontend', 'fuse', 'ram', '--size', '256M', '--lanes', '2']);
  const pid = Number(await info(dev, 'pid'));
  assert.equal(fuseFiles(pid), 2, 'the driver reads the connection through two /dev/fuse files');
  const maps = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((line) => line.includes('/memfd:bdus-ram'));
  assert.equal(maps.length, 2, 'each lane maps the one memfd');

  // A write answered by one lane and its read by the other: verify fails unless they share memory.
  await verifyLanes(dev);
  await must('blkdiscard', ['-o', '0', '-l', String(16 << 20), dev]);
  const zeros = await must('sh', ['-c', `dd if=${dev} bs=1M count=16 iflag=direct status=none | tr -d '\\0' | wc -c`]);
  assert.equal(zeros.trim(), '0', 'a discarded range reads as zeros in every lane');
  await ext4ThenDestroy(t, dev);
});

/** CPU time (clock ticks) of each thread of process `pid`, by thread id. */
function threadTicks(pid: number): Map<string, number> {
  const ticks = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const fields = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    ticks.set(tid, Number(fields[11]) + Number(fields[12])); // utime, stime
  }
  return ticks;
}

/** Runs fio on `dev` and returns what each thread of `pid` spent meanwhile. */
async function spentDuring(pid: number, dev: string, args: string[]): Promise<Map<string, number>> {
  const before = threadTicks(pid);
  const fio = await must('fio', ['--name=p', `--filename=${dev}`, '--bs=4k', '--ioengine=libaio', '--direct=1', '--size=64M', '--time_based', '--runtime=3', '--output-format=terse', ...args], { timeoutMs: 60_000 });
  assert.equal(fio.split(';')[4], '0', `fio ${args.join(' ')}: no error`);
  const after = threadTicks(pid);
  return new Map([...after].map(([tid, n]) => [tid, n - (before.get(tid) ?? 0)]));
}

test('lanes: a client at queue depth 1 is served by the main thread (the lane\'s reader parks), a deep queue wakes the lane again', async (t) => {
  const dev = await device(t, ['--frontend', 'fuse', 'ram', '--size', '256M', '--lanes', '2']);
  const pid = Number(await info(dev, 'pid'));
  const main = String(pid);
  // The lane's thread is the busiest but the main one while both serve a deep queue.
  const deep = await spentDuring(pid, dev, ['--rw=randread', '--iodepth=32']);
  const lane = [...deep].filter(([tid]) => tid !== main).sort((a, b) => b[1] - a[1])[0]![0];
  assert.ok(deep.get(lane)! > deep.get(main)! / 4, `both serve a deep queue (main ${deep.get(main)}, lane ${deep.get(lane)} ticks)`);
  // Queue depth 1, writes verified: within a few dozen requests the lane parks.
  const alone = await spentDuring(pid, dev, ['--rw=randwrite', '--iodepth=1', '--verify=crc32c', '--verify_fatal=1']);
  assert.ok(alone.get(lane)! < alone.get(main)! / 4, `the main thread serves queue depth 1 (main ${alone.get(main)}, lane ${alone.get(lane)} ticks)`);
  const again = await spentDuring(pid, dev, ['--rw=randread', '--iodepth=32']);
  assert.ok(again.get(lane)! > again.get(main)! / 4, `the lane is back for a deep queue (main ${again.get(main)}, lane ${again.get(lane)} ticks)`);
  await ext4ThenDestroy(t, dev);
});

test('lanes: resize: a file and a ram device with two lanes grow and shrink, and both lanes serve the new range', async (t) => {
  const MiB = 2 ** 20;
  const img = image(t, 128 * MiB);
  // ram grows past its first GiB: the other lane maps the memory lane 0 added.
  for (const [args, grown, shrunk] of [[['file', img], 384, 96], [['ram', '--size', '256M'], 1280, 512]] as const) {
    const dev = await device(t, ['--frontend', 'fuse', ...args, '--lanes', '2']);
    const first = Number(await must('blockdev', ['--getsize64', dev]));
    const r = await bdus(['resize', dev, `${grown}M`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(Number(await must('blockdev', ['--getsize64', dev])), grown * MiB, `${args[0]}: clients see the new size`);
    await verifyLanes(dev, first, grown * MiB - first);
    assert.equal((await bdus(['resize', dev, `${shrunk}M`])).code, 0);
    assert.equal(Number(await must('blockdev', ['--getsize64', dev])), shrunk * MiB);
    await verifyLanes(dev, 0, shrunk * MiB);
    assert.equal((await bdus(['destroy', dev])).code, 0);
  }
  await noLeftovers();
});

test('lanes: hot swaps under fio verify, from 2 lanes to 3, to 1, to 2: no error, every lane of each driver serves', async (t) => {
  const img = image(t);
  const dev = await device(t, ['--frontend', 'fuse', DRIVER, 'serve', img, laneMarks(t), '--lanes', '2']);
  const fio = fioVerify(t, dev);
  await sleep(1500);
  await rerunLanes(t, dev, DRIVER, img, [3, 1, 2], 1500, async (lanes) => {
    assert.equal(fuseFiles(Number(await info(dev, 'pid'))), lanes, `the new driver reads through ${lanes} /dev/fuse files`);
  });
  assert.equal(await fio.errors(), '0', 'fio verify saw no error across the swaps');
  assert.equal(await info(dev, 'state'), 'available');
});

/** The control daemon's pid, from `bdus version`. */
async function daemonPid(): Promise<number> {
  return Number(/\(pid (\d+),/.exec(await must(process.execPath, [BIN, 'version']))![1]);
}

test('lanes and recoverable: a two-lane driver SIGKILLed under fio verify at QD32, then drivers of 2, 1 and 2 lanes: 0 errors', async (t) => {
  const img = image(t);
  const dev = await device(t, ['--frontend', 'fuse', DRIVER, 'serve', img, laneMarks(t), '--lanes', '2', '--recoverable']);
  // The daemon holds the connection's file and the lane's clone: a dead lane's requests stay.
  assert.equal(fuseFiles(await daemonPid()), 2, 'the daemon holds both /dev/fuse files of the driver');
  // At queue depth 32 both lanes hold requests when the driver is killed.
  const fio = fioVerify(t, dev, { iodepth: 32 });
  await sleep(2000);
  await killDriver(dev);
  await rerunLanes(t, dev, DRIVER, img, [2, 1, 2], 1500, async (lanes) => {
    assert.equal(fuseFiles(await daemonPid()), lanes, `the daemon holds the ${lanes}-lane driver's files, and no earlier driver's`);
  });
  assert.equal(await fio.errors(), '0', 'fio verify saw no error across the kill and the swaps');
  assert.equal(await info(dev, 'state'), 'available');
});

test('lanes: refused for a driver that keeps its data to itself, with filters, and above 64', async (t) => {
  const img = image(t);
  // Exit status 2: a usage error (the command line); 1: the attributes.
  const cases: Array<[string[], number, RegExp]> = [
    [['run', '--frontend', 'fuse', 'memory', '--size', '64M', '--lanes', '2'], 1, /needs a lane-safe driver/],
    [['run', '--frontend', 'fuse', '--filter', 'delay', 'file', img, '--lanes', '2'], 2, /--lanes cannot be combined with --filter/],
    [['run', '--frontend', 'fuse', 'file', img, '--lanes', '65'], 1, /lanes.*must be at most 64/],
  ];
  for (const [args, code, message] of cases) {
    const r = await bdus(args, { timeoutMs: 30_000 });
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stdout}`);
    assert.match(r.stderr, message);
  }
  await noLeftovers();
  // A rerun's driver must be lane-safe too, or it is refused before the current one is disturbed.
  const dev = await device(t, ['--frontend', 'fuse', 'file', img, '--lanes', '2']);
  const rerun = await bdus(['rerun', dev, 'memory', '--size', '64M'], { timeoutMs: 30_000 });
  assert.equal(rerun.code, 1);
  assert.match(rerun.stderr, /needs a lane-safe driver/);
  // A filtered driver cannot be made again in a lane: it inherits the lanes, and is refused.
  const filtered = await bdus(['rerun', dev, '--filter', 'delay', 'file', img], { timeoutMs: 30_000 });
  assert.equal(filtered.code, 1);
  assert.match(filtered.stderr, /needs a lane-safe driver .*filters/);
  assert.equal(await info(dev, 'state'), 'available');
});

test('lanes: a lane that cannot start fails the command and leaves nothing; a lane that aborts ends the device', async (t) => {
  const img = image(t);
  const failed = await bdus(['run', '--frontend', 'fuse', DRIVER, 'fail-init', img, laneMarks(t), '--lanes', '2'], { timeoutMs: 30_000 });
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /lane 1: the driver's initialize failed: lane 1 cannot start/);
  await noLeftovers();

  const dev = await device(t, ['--frontend', 'fuse', DRIVER, 'abort', img, laneMarks(t), '--lanes', '2']);
  const pid = Number(await info(dev, 'pid'));
  const fio = background('fio', ['--name=r', `--filename=${dev}`, `--offset=${ABORT_AT}`, '--size=1M', '--rw=randread', '--bs=4k', '--iodepth=16', '--ioengine=libaio', '--direct=1', '--time_based', '--runtime=60']);
  t.after(() => fio.stop());
  const ended = await fio.done;
  assert.ok(ended.ms < 30_000, `fio ended ${ended.ms} ms in`);
  assert.match(ended.stderr, /Input\/output error/, 'I/O fails once the driver is gone');
  for (let i = 0; i < 100 && readdirSync('/proc').includes(String(pid)); i++) await sleep(100);
  assert.ok(!readdirSync('/proc').includes(String(pid)), 'the driver process ended');
  await noLeftovers();
});

test('lanes: a lane stuck in a callback stops the process\'s beat, and the daemon ends the driver', async (t) => {
  const img = image(t);
  const dev = await device(t, ['--frontend', 'fuse', DRIVER, 'stuck', img, laneMarks(t), '--lanes', '2', '--request-timeout', '1s']);
  const pid = Number(await info(dev, 'pid'));
  const fio = background('fio', ['--name=r', `--filename=${dev}`, '--rw=randread', '--bs=4k', '--iodepth=16', '--ioengine=libaio', '--direct=1', '--time_based', '--runtime=60']);
  t.after(() => fio.stop());
  const ended = await fio.done;
  // The watch kills a driver silent for max(requestTimeout, 4 s) + 1 s; it looks every half second or so.
  assert.ok(ended.ms < 20_000, `fio ended ${ended.ms} ms in`);
  assert.match(ended.stderr, /Input\/output error/);
  for (let i = 0; i < 100 && readdirSync('/proc').includes(String(pid)); i++) await sleep(100);
  assert.ok(!readdirSync('/proc').includes(String(pid)), 'the driver process was ended');
  await noLeftovers();
});
