// This test ensures that bdus's filters and drivers work on real devices with real tools: fio's
// percentiles show the delay filter's latency and its byte counts match the stats filter's;
// ext4 on the error filter sees the kernel's I/O errors while writes fail (switched on and off
// with `bdus filter`) and loses nothing written before; the offset filter puts a filesystem
// where it says; the file driver's holes reach nbdinfo and nbdcopy; readonly, rate, log,
// pattern and null do what they say; retry absorbs failures that reach the client without it;
// truncate grows a file with zeros; bdus replay sends a recorded trace's requests again;
// settings made with `bdus filter` survive a hot swap; and every mistake on the command line is
// a clear error.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { bdus, device, fioVerify, image, info, kernelName, killDriver, killThenSwap, mounted, must, mustRerun, scratch, sh, sleep } from './helpers.js';
import { exportDriver } from './nbd-helpers.js';
import { kernelIoErrorsSince, markKernelLog } from './torture.js';

const MiB = 1 << 20;

interface FioJob {
  read: { io_bytes: number; total_ios: number; clat_ns: { percentile: Record<string, number> } };
  write: { io_bytes: number; total_ios: number; clat_ns: { percentile: Record<string, number> } };
}

async function fio(dev: string, rw: string, extra: readonly string[] = []): Promise<FioJob> {
  const out = await must('fio', [
    '--name=job', `--filename=${dev}`, `--rw=${rw}`, '--bs=4k', '--direct=1', '--ioengine=libaio', '--output-format=json', ...extra,
  ], { timeoutMs: 120_000 });
  return (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: FioJob[] }).jobs[0]!;
}

function removeAfter(t: { after(fn: () => void): void }, path: string): string {
  t.after(() => rmSync(path, { force: true, recursive: true }));
  return path;
}

test('delay: fio\'s latency percentiles show the delay, on reads only; bdus filter changes it live', async (t) => {
  const dev = await device(t, ['memory', '--size', '64M', '--filter', 'delay:read=20ms']);
  const reads = await fio(dev, 'randread', ['--iodepth=1', '--size=16M', '--runtime=2', '--time_based']);
  const p50 = reads.read.clat_ns.percentile['50.000000']!;
  assert.ok(p50 >= 20e6 && p50 < 40e6, `read p50 ${(p50 / 1e6).toFixed(1)} ms with a 20 ms delay`);
  const writes = await fio(dev, 'randwrite', ['--iodepth=1', '--size=16M', '--runtime=1', '--time_based']);
  assert.ok(writes.write.clat_ns.percentile['50.000000']! < 10e6, 'writes are not delayed');

  assert.equal((await bdus(['filter', dev, 'delay', 'read=0,write=30ms'])).code, 0);
  await sleep(500);
  const swapped = await fio(dev, 'randwrite', ['--iodepth=1', '--size=16M', '--runtime=1', '--time_based']);
  assert.ok(swapped.write.clat_ns.percentile['50.000000']! >= 30e6, 'now writes are delayed');
});

test('stats: the bytes written below the filter are the bytes fio wrote', async (t) => {
  const file = removeAfter(t, scratch('stats.json'));
  const dev = await device(t, ['memory', '--size', '64M', '--filter', `stats:file=${file},interval=100ms`]);
  const job = await fio(dev, 'randwrite', ['--iodepth=4', '--size=32M', '--io_size=8M']);
  await sleep(400);
  const report = JSON.parse(readFileSync(file, 'utf8')) as { operations: Record<string, { requests: number; bytes: number; failures: number }> };
  assert.equal(report.operations.write?.bytes, job.write.io_bytes, 'the same bytes');
  assert.ok(report.operations.write!.requests <= job.write.total_ios, 'no more requests than fio made (loop may merge)');
  assert.equal(report.operations.write!.failures, 0);
});

test('error: ext4 sees I/O errors while writes fail, and loses nothing written before', async (t) => {
  const dev = await device(t, ['memory', '--size', '256M', '--transfer-tries', '1', '--filter', 'error:rate=0']);
  const name = await kernelName(dev);
  await must('mkfs.ext4', ['-q', dev]);
  let mnt = await mounted(t, dev);
  const data = Buffer.alloc(8 * MiB);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  writeFileSync(`${mnt}/before`, data);
  await must('sync', ['-f', `${mnt}/before`]);

  const marker = markKernelLog();
  assert.equal((await bdus(['filter', dev, 'error', 'rate=1,ops=write+flush'])).code, 0);
  await sleep(500);
  const failed = await sh('dd', ['if=/dev/urandom', `of=${mnt}/during`, 'bs=1M', 'count=4', 'conv=fsync', 'status=none']);
  assert.notEqual(failed.code, 0, 'the write and fsync fail');
  assert.ok((await kernelIoErrorsSince(marker, name)) > 0, 'the kernel logged I/O errors for the device');

  assert.equal((await bdus(['filter', dev, 'error', '--reset'])).code, 0);
  await sleep(500);
  await must('umount', [mnt]);
  const fsck = await sh('e2fsck', ['-fy', dev], { timeoutMs: 120_000 });
  assert.ok(fsck.code <= 1, `e2fsck repaired what the failed writes left (${fsck.code}): ${fsck.stdout}`);
  await must('mount', [dev, mnt]);
  assert.ok(readFileSync(`${mnt}/before`).equals(data), 'what was synced before the failures is intact');
  mnt = '';
});

test('offset: mkfs on the window puts the filesystem at the offset in the file below', async (t) => {
  const img = image(t, 64 * MiB);
  const dev = await device(t, ['file', img, '--filter', 'offset:offset=1M']);
  assert.equal((await must('blockdev', ['--getsize64', dev])).trim(), String(63 * MiB));
  await must('mkfs.ext4', ['-q', dev]);
  await must('sync', []);
  const superblock = readFileSync(img).subarray(MiB + 1024, MiB + 2048);
  assert.equal(superblock.readUInt16LE(56), 0xef53, 'ext4\'s magic at 1 MiB + 1080 in the image');
});

test('partition: mkfs on partition 2 of a GPT disk image lands inside that partition', async (t) => {
  const img = image(t, 64 * MiB);
  await must('sh', ['-c', `printf 'label: gpt\\nstart=2048, size=32768\\nstart=34816, size=65536\\n' | sfdisk --quiet ${img}`]);
  const dev = await device(t, ['file', img, '--filter', 'partition:number=2']);
  assert.equal((await must('blockdev', ['--getsize64', dev])).trim(), String(32 * MiB));
  await must('mkfs.ext4', ['-q', dev]);
  await must('sync', []);
  assert.equal(readFileSync(img).readUInt16LE(34816 * 512 + 1080), 0xef53, 'ext4\'s magic 1080 bytes into partition 2');
  assert.match(await must('sfdisk', ['--dump', img]), /start=\s*34816, size=\s*65536/, 'the table is untouched');
});

test('file: its holes reach nbdinfo --map, and nbdcopy copies the data and leaves the holes', async (t) => {
  const img = image(t, 64 * MiB);
  await must('dd', ['if=/dev/urandom', `of=${img}`, 'bs=1M', 'seek=8', 'count=1', 'conv=notrunc', 'status=none']);
  const exported = await exportDriver(t, ['file', img]);
  const map = JSON.parse(await must('nbdinfo', ['--map', '--json', exported.uri])) as Array<{ offset: number; length: number; type: number }>;
  const data = map.filter((e) => (e.type & 1) === 0);
  assert.deepEqual(
    data.map((e) => [e.offset, e.length]),
    [[8 * MiB, MiB]],
    `only the written MiB is data: ${JSON.stringify(map)}`,
  );
  const copy = removeAfter(t, scratch('copy.img'));
  await must('nbdcopy', [exported.uri, copy]);
  await must('cmp', [img, copy]);
  assert.ok(statSync(copy).blocks * 512 < 4 * MiB, 'the copy is sparse');
});

test('readonly, rate, log, pattern and null on real devices', async (t) => {
  const img = image(t, 16 * MiB);
  const ro = await device(t, ['file', img, '--filter', 'readonly']);
  assert.equal((await must('blockdev', ['--getro', ro])).trim(), '1');
  assert.notEqual((await sh('dd', ['if=/dev/zero', `of=${ro}`, 'bs=4k', 'count=1', 'oflag=direct', 'status=none'])).code, 0);

  const slow = await device(t, ['memory', '--size', '64M', '--filter', 'rate:bandwidth=16M,burst=0']);
  let t0 = Date.now();
  await must('dd', [`if=${slow}`, 'of=/dev/null', 'bs=1M', 'count=8', 'iflag=direct', 'status=none']);
  assert.ok(Date.now() - t0 >= 400, `8 MiB at 16 MiB/s took ${Date.now() - t0} ms`);
  assert.equal((await bdus(['filter', slow, 'rate', 'bandwidth=1G'])).code, 0);
  await sleep(500);
  t0 = Date.now();
  await must('dd', [`if=${slow}`, 'of=/dev/null', 'bs=1M', 'count=8', 'iflag=direct', 'status=none']);
  assert.ok(Date.now() - t0 < 400, `after bdus filter, 8 MiB took ${Date.now() - t0} ms`);

  const trace = removeAfter(t, scratch('trace.log'));
  const logged = await device(t, ['memory', '--size', '16M', '--filter', `log:file=${trace}`]);
  await must('dd', ['if=/dev/urandom', `of=${logged}`, 'bs=4k', 'count=3', 'seek=100', 'oflag=direct', 'status=none']);
  await sleep(300);
  const lines = readFileSync(trace, 'utf8').split('\n').filter((l) => / write /.test(l));
  assert.deepEqual(lines.map((l) => l.split(' ').slice(1, 5).join(' ')), ['write 409600 4096 ok', 'write 413696 4096 ok', 'write 417792 4096 ok']);

  const pat = await device(t, ['pattern', '--size', '64M']);
  const block = Buffer.from(await must('sh', ['-c', `dd if=${pat} bs=4k skip=256 count=1 iflag=direct status=none | od -An -tx1 -v | tr -d ' \\n'`]), 'hex');
  assert.equal(block.readBigUInt64BE(0), BigInt(MiB));
  assert.equal(block.readBigUInt64BE(4088), BigInt(MiB + 4088));

  const nul = await device(t, ['null', '--size', '1G']);
  await must('dd', ['if=/dev/urandom', `of=${nul}`, 'bs=1M', 'count=4', 'oflag=direct', 'status=none']);
  await must('cmp', ['-n', String(4 * MiB), nul, '/dev/zero']);
});

test('retry: a write that fails three times with ENOLINK reaches the disk; without retry it fails', async (t) => {
  const failing = 'error:ops=write,count=3,error=ENOLINK';
  const dev = await device(t, ['memory', '--size', '16M', '--transfer-tries', '1', '--filter', failing, '--filter', 'retry:delay=10ms,codes=ENOLINK']);
  const data = removeAfter(t, scratch('retry.bin'));
  await must('dd', ['if=/dev/urandom', `of=${data}`, 'bs=4k', 'count=4', 'status=none']);
  await must('dd', [`if=${data}`, `of=${dev}`, 'bs=4k', 'oflag=direct', 'status=none']);
  await must('cmp', ['-n', String(16 * 1024), data, dev]);
  assert.match((await bdus(['logs', dev])).stdout, /filter retry: .*ENOLINK.*trying again in 10 ms \(1 of 5\)/);

  const bare = await device(t, ['memory', '--size', '16M', '--transfer-tries', '1', '--filter', failing]);
  assert.notEqual((await sh('dd', [`if=${data}`, `of=${bare}`, 'bs=4k', 'oflag=direct', 'status=none'])).code, 0, 'the same failure reaches the client');
});

test('truncate: a 3 MiB file grown to 64 MiB reads zeros past its end and takes only zeros there', async (t) => {
  const img = image(t, 3 * MiB);
  await must('dd', ['if=/dev/urandom', `of=${img}`, 'bs=1M', 'count=3', 'conv=notrunc', 'status=none']);
  const dev = await device(t, ['file', img, '--filter', 'truncate:size=64M']);
  assert.equal((await must('blockdev', ['--getsize64', dev])).trim(), String(64 * MiB));
  const tail = removeAfter(t, scratch('tail.bin'));
  await must('dd', [`if=${dev}`, `of=${tail}`, 'bs=1M', 'skip=2', 'count=2', 'iflag=direct', 'status=none']);
  const read = readFileSync(tail);
  assert.ok(read.subarray(0, MiB).equals(readFileSync(img).subarray(2 * MiB)), 'the file\'s last MiB');
  assert.ok(read.subarray(MiB).equals(Buffer.alloc(MiB)), 'then zeros');
  await must('dd', ['if=/dev/zero', `of=${dev}`, 'bs=1M', 'seek=10', 'count=1', 'oflag=direct', 'status=none']);
  assert.notEqual((await sh('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', 'seek=10', 'count=1', 'oflag=direct', 'status=none'])).code, 0, 'data past the end fails');
  assert.equal(statSync(img).size, 3 * MiB, 'the file below keeps its size');
});

test('log and bdus replay: a replayed fio trace sends the same requests to another device', async (t) => {
  const first = removeAfter(t, scratch('first.log'));
  const second = removeAfter(t, scratch('second.log'));
  const recorded = await device(t, ['memory', '--size', '64M', '--filter', `log:file=${first}`]);
  await must('fio', ['--name=w', `--filename=${recorded}`, '--rw=randtrimwrite', '--bs=4k', '--direct=1', '--ioengine=psync', '--size=8M', '--number_ios=300']);
  await must('fio', ['--name=r', `--filename=${recorded}`, '--rw=randread', '--bs=8k', '--direct=1', '--ioengine=libaio', '--iodepth=4', '--size=8M', '--number_ios=200']);
  const replayed = await device(t, ['memory', '--size', '64M', '--filter', `log:file=${second}`]);
  const r = await bdus(['replay', first, replayed]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^replayed .* in [\d.]+ s \(the trace: [\d.]+ s\)\n(.*\n)*  write +\d+ sent/);
  await sleep(300);
  // The kernel's own reads when a device appears (partition table, udev's probe) come and go on
  // either side: compare what fio sent, the writes and trims exactly and its 8 KiB reads.
  const requests = (path: string) =>
    readFileSync(path, 'utf8').split('\n').filter((l) => l !== '' && !l.startsWith('#')).map((l) => l.split(' ').slice(1, 4).join(' '))
      .filter((l) => !l.startsWith('read ') || l.endsWith(' 8192')).sort();
  const expected = requests(first);
  assert.ok(expected.some((l) => l.startsWith('write-zeroes ')) && expected.some((l) => l.startsWith('read ')), 'fio trimmed, wrote and read');
  assert.deepEqual(requests(second), expected, 'the same operations, offsets and sizes');

  const small = await device(t, ['memory', '--size', '4M']);
  assert.match((await bdus(['replay', first, small])).stderr, /the trace reaches byte \d+, past the end of/);
  assert.match((await bdus(['replay', first, first])).stderr, /is not a block device/);
});

test('a hot swap keeps what bdus filter set, and loses no write under fio verify', async (t) => {
  const img = image(t, 64 * MiB);
  const driver = ['file', img, '--recoverable', '--filter', 'delay:write=1ms', '--filter', 'error:rate=0'];
  const dev = await device(t, driver);
  assert.equal((await bdus(['filter', dev, 'delay', 'read=40ms'])).code, 0);
  const verify = fioVerify(t, dev);
  await sleep(1000);
  await killDriver(dev);
  await mustRerun(dev, driver);
  await sleep(1000);
  await mustRerun(dev, driver);
  await sleep(1000);
  assert.equal(await verify.errors(), '0', 'fio verify found no error');
  const t0 = Date.now();
  await must('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=2', 'skip=1000', 'iflag=direct', 'status=none']);
  assert.ok(Date.now() - t0 >= 80, `the new driver delays reads as set before the swaps (${Date.now() - t0} ms for two)`);
  assert.match(await info(dev, 'driver'), /--filter delay:write=1ms --filter error:rate=0/);
});

test('cow: qemu-img convert onto the device leaves the base untouched; bdus cow commit puts it there', async (t) => {
  const base = image(t, 32 * MiB);
  const source = image(t, 32 * MiB);
  await must('dd', ['if=/dev/urandom', `of=${base}`, 'bs=1M', 'count=32', 'conv=notrunc', 'status=none']);
  await must('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'count=8', 'conv=notrunc', 'status=none']);
  await must('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'seek=16', 'count=16', 'conv=notrunc', 'status=none']);
  const overlay = removeAfter(t, scratch('overlay'));
  removeAfter(t, `${overlay}.map`);
  const before = await must('sha256sum', [base]);
  const dev = await device(t, ['file', base, '--read-only', '--filter', `cow:overlay=${overlay}`]);
  // -n: the device exists; qemu-img writes the data and zeroes the rest (8-16 MiB is zeros in source).
  await must('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, dev], { timeoutMs: 120_000 });
  await must('sync', []);
  assert.equal((await sh('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, dev])).code, 0, 'the device holds the source');
  assert.equal(await must('sha256sum', [base]), before, 'the base is untouched');

  assert.notEqual((await bdus(['cow', 'commit', overlay, base])).code, 0, 'commit refuses while the device runs');
  assert.equal((await bdus(['destroy', dev])).code, 0);
  const commit = await bdus(['cow', 'commit', overlay, base]);
  assert.equal(commit.code, 0, commit.stderr);
  await must('cmp', [base, source]);
  assert.ok(!existsSync(overlay) && !existsSync(`${overlay}.map`), 'the overlay is gone');
});

test('cow: recoverable through SIGKILL and hot swaps under fio verify', async (t) => {
  const base = image(t, 64 * MiB);
  const overlay = removeAfter(t, scratch('overlay'));
  removeAfter(t, `${overlay}.map`);
  const driver = ['file', base, '--read-only', '--recoverable', '--filter', `cow:overlay=${overlay},block=16K`];
  const dev = await device(t, driver);
  assert.equal(await killThenSwap(t, dev, driver), '0', 'fio verify found no error');
  assert.equal(statSync(base).blocks, 0, 'the base got no write');
});

test('cache: write-back under fio verify and hot swaps loses nothing, and a flush puts what it holds in the file', async (t) => {
  const img = image(t, 64 * MiB);
  const driver = ['file', img, '--filter', 'cache:size=4M,block=16K,readahead=64K'];
  const dev = await device(t, driver);
  const verify = fioVerify(t, dev);
  await sleep(1000);
  await mustRerun(dev, driver);
  await sleep(1000);
  await mustRerun(dev, driver);
  await sleep(1000);
  assert.equal(await verify.errors(), '0', 'fio verify found no error');

  const data = removeAfter(t, scratch('data'));
  await must('dd', ['if=/dev/urandom', `of=${data}`, 'bs=1M', 'count=1', 'status=none']);
  await must('dd', [`if=${data}`, `of=${dev}`, 'bs=64k', 'seek=512', 'oflag=direct', 'status=none']);
  assert.equal((await bdus(['flush', dev])).code, 0);
  await must('cmp', ['-n', String(MiB), data, img, '0', String(32 * MiB)]);

  const refused = await bdus(['run', 'file', img, '--recoverable', '--filter', 'cache', '--foreground'], { timeoutMs: 30_000 });
  assert.match(refused.stderr, /a recoverable device takes mode=writethrough/);
});

test('chunked: chunks appear as written and go when discarded; recoverable under fio verify', async (t) => {
  const dir = removeAfter(t, scratch('chunks'));
  const driver = ['chunked', dir, '--size', '64M', '--chunk', '1M', '--recoverable'];
  const dev = await device(t, driver);
  const chunks = () => readdirSync(dir).filter((name) => name.startsWith('chunk-')).length;
  assert.equal(chunks(), 0, 'nothing written, no chunk');
  await must('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', 'count=3', 'seek=10', 'oflag=direct', 'status=none']);
  assert.equal(chunks(), 3);
  await must('blkdiscard', [dev]);
  assert.equal(chunks(), 0, 'a discard of the whole device deletes every chunk');
  assert.equal(await killThenSwap(t, dev, driver), '0', 'fio verify found no error');
  const restarted = await bdus(['rerun', dev, 'chunked', dir, '--size', '32M']);
  assert.match(restarted.stderr, /is a 67108864-byte device, not 33554432|size/);
});

test('command-line mistakes with filters are clear errors, and create nothing', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['run', 'memory', '--size', '1M', '--filter', 'dealy'], /no filter 'dealy'; did you mean 'delay'\?/],
    [['run', 'memory', '--size', '1M', '--filter', 'delay:reed=1ms'], /unknown parameter 'reed' \(known: read, write/],
    [['run', 'memory', '--size', '1M', '--filter', 'delay:read=soon'], /expected a duration/],
    [['run', 'memory', '--size', '1M', '--filter', 'error:rate=2'], /expected a probability from 0 to 1/],
    [['run', 'memory', '--size', '1M', '--filter', 'log'], /missing parameter 'file'/],
    [['run', 'memory', '--size', '1M', '--filter', './nowhere.js'], /no filter module at/],
    [['run', 'file', '/nonexistent/disk.img'], /cannot open \/nonexistent\/disk.img/],
    [['run', 'memory'], /needs a size/],
  ];
  for (const [args, expected] of cases) {
    const r = await bdus([...args, '--foreground'], { timeoutMs: 30_000 });
    assert.notEqual(r.code, 0, args.join(' '));
    assert.match(r.stderr, expected, args.join(' '));
  }
  const dev = await device(t, ['memory', '--size', '1M', '--filter', 'delay']);
  for (const [args, expected] of [
    [['filter', dev, 'stats', 'file=/tmp/x'], /cannot change while it runs/],
    [['filter', dev, 'error', 'rate=0.5'], /has no error filter/],
    [['filter', dev, 'delay', 'read=x'], /expected a duration/],
    [['filter', dev, 'delay'], /give KEY=VALUE,\.\.\. or --reset or --show/],
    [['filter', '/dev/bdus-999', 'delay', 'read=1'], /no such/],
  ] as Array<[string[], RegExp]>) {
    const r = await bdus(args);
    assert.notEqual(r.code, 0, args.join(' '));
    assert.match(r.stderr, expected, args.join(' '));
  }
  assert.equal((await bdus(['filter', dev, 'delay', '--show'])).stdout, '(none: the --filter flag\'s values)\n');
  assert.ok(!existsSync('/dev/bdus-999'));
});
