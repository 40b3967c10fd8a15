// This test ensures that the s3 driver keeps a device in a real object store (a one-node Ceph
// cluster's RADOS Gateway, started by test/ceph/cluster) as a disk should: the driver contract
// (checkDriver) and partial writes and reads through a cache far smaller than the data; small
// writes written back as patches, read back over their chunks, merged when they grow; a format
// version 1 volume served and upgraded; ext4 made, filled and
// read back by another driver instance; trimmed chunks lose their objects; fio verify finds no
// error across hot swaps and SIGKILLs; a gateway restart in the middle of I/O is a pause, a flush
// that cannot reach the store fails after the request timeout and succeeds once it is back; two
// drivers never hold one volume, and one stopped (SIGSTOP) while another took the volume writes
// nothing after it resumes; and every mistake (endpoint, credentials, bucket, volume, size) is a
// clear error at `bdus run` that leaves no device behind.
import { GetObjectCommand, PutBucketVersioningCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { s3 } from '../src/drivers/s3/index.js';
import { checkDriver, testDriver } from '../src/testing/index.js';
import { cephCluster } from './ceph.js';
import { bdus, device, info, killThenSwap, mounted, must, scratch, sh, sleep } from './helpers.js';

const MiB = 1 << 20;
const cluster = cephCluster();
let volumes = 0;

/** A new volume's URL in the test bucket (made on first use). */
let bucket: Promise<string> | undefined;
async function volume(): Promise<string> {
  bucket ??= cluster().bucket('bdus-tests');
  return `s3://${await bucket}/v${++volumes}-${process.pid}`;
}

/** A bucket with versioning on, where conditional puts are not atomic (Ceph 16). */
async function versioned(): Promise<string> {
  const name = await cluster().bucket('bdus-tests-versioned');
  await cluster().s3.send(new PutBucketVersioningCommand({ Bucket: name, VersioningConfiguration: { Status: 'Enabled' } }));
  return name;
}

/** How many objects the volume at `url` has under `under` ('chunks/', 'patches/'). */
async function objects(url: string, under = 'chunks/'): Promise<number> {
  const [, , name, prefix] = url.split('/');
  return (await cluster().keys(name!, `${prefix}/${under}`)).length;
}

/** sha256 of a file, in a child process (this process must not read a device it may serve). */
async function sha(path: string): Promise<string> {
  return (await must('sha256sum', [path])).split(' ')[0]!;
}

test('behind the request layer: checkDriver, and random writes through a four-chunk cache read back, also by a new driver', async () => {
  const url = await volume();
  const d = await testDriver(await s3(url, { create: true, chunkSize: 64 << 10, cacheSize: 256 << 10, connections: 4 }), { attributes: { size: 16 * MiB } });
  await checkDriver(d);
  await d.writeZeros(0, 16 * MiB);
  // Partial writes to chunks not cached, evictions (read-modify-write from the store), whole-chunk discards.
  const model = Buffer.alloc(16 * MiB);
  let seed = 7;
  const random = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
  for (let i = 0; i < 300; i++) {
    const offset = random(16 * MiB / 512 - 16) * 512;
    const length = (1 + random(16)) * 512;
    model.fill((i % 251) + 1, offset, offset + length);
    await d.write(offset, Buffer.alloc(length, (i % 251) + 1));
    // Reads out of order are range requests: the slots they fill hold part of a chunk.
    const at = random(16 * MiB / 512 - 16) * 512;
    assert.ok((await d.read(at, 4096)).equals(model.subarray(at, at + 4096)), `read at ${at}`);
    if (i % 50 === 0) await d.flush();
    if (i % 7 === 0) {
      const chunk = random(256) * 65536;
      await d.discard(chunk, 65536);
      model.fill(0, chunk, chunk + 65536);
    }
  }
  assert.ok((await d.read(0, 16 * MiB)).equals(model), 'read back through the cache');
  await d.close();
  const again = await testDriver(await s3(url), { attributes: { size: 16 * MiB } });
  assert.ok((await again.read(0, 16 * MiB)).equals(model), 'read back by a new driver');
  await again.close();
});

test('small writes to chunks not cached write back as patches, read back by a new driver; a patch past its bound makes the chunk whole', async () => {
  const url = await volume();
  const options = { chunkSize: 64 << 10, cacheSize: 256 << 10, connections: 4 };
  const size = 4 * MiB;
  const model = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) model.writeUInt32LE(i, i);
  let d = await testDriver(await s3(url, { ...options, create: true }), { attributes: { size, logicalBlockSize: 4096 } });
  await d.write(0, model);
  await d.close(); // flushed: 64 whole chunks
  assert.equal(await objects(url), 64);

  // A new driver caches nothing: a 4 KiB write to each chunk becomes a patch.
  d = await testDriver(await s3(url, options), { attributes: { size, logicalBlockSize: 4096 } });
  for (let chunk = 0; chunk < 64; chunk++) {
    const at = chunk * 65536 + (chunk % 16) * 4096;
    model.fill(chunk + 1, at, at + 4096);
    await d.write(at, model.subarray(at, at + 4096));
  }
  await d.flush();
  assert.equal(await objects(url, 'patches/'), 64, 'a patch per chunk');
  // Reads of chunks with patches, out of order (range requests) and in order (whole chunks), through a small cache.
  for (let chunk = 63; chunk >= 0; chunk -= 5) {
    const at = chunk * 65536 + (chunk % 16) * 4096;
    assert.ok((await d.read(at, 4096)).equals(model.subarray(at, at + 4096)), `chunk ${chunk}'s patched block`);
  }
  await d.close();

  d = await testDriver(await s3(url, options), { attributes: { size, logicalBlockSize: 4096 } });
  assert.ok((await d.read(0, size)).equals(model), 'read back by a new driver: objects with patches over them');
  // More blocks of chunk 0, not cached: the patch grows (cumulative: it keeps block 0), then, past
  // its bound (2 of the chunk's 16 blocks), the chunk is written back whole and has no patch.
  await d.close();
  for (const [block, patches] of [[1, 64], [2, 63]] as const) {
    d = await testDriver(await s3(url, options), { attributes: { size, logicalBlockSize: 4096 } });
    model.fill(200 + block, block * 4096, (block + 1) * 4096);
    await d.write(block * 4096, model.subarray(block * 4096, (block + 1) * 4096));
    await d.close();
    assert.equal(await objects(url, 'patches/'), patches, `after block ${block}`);
  }
  d = await testDriver(await s3(url, options), { attributes: { size, logicalBlockSize: 512 } });
  assert.ok((await d.read(0, size)).equals(model), 'read back by a driver of another block size');
  await d.close();
  assert.equal(await objects(url), 64);
});

test('a version 1 volume (no patches in its map) is served, and becomes version 2 at its first commit', async () => {
  const url = await volume();
  const [, , name, prefix] = url.split('/');
  const put = (key: string, body: Buffer | string) => cluster().s3.send(new PutObjectCommand({ Bucket: name, Key: `${prefix}/${key}`, Body: body }));
  const chunk = Buffer.alloc(65536, 0x5a);
  await put('chunks/000000000001.1.1', chunk);
  const page = new Float64Array(8192);
  page[1] = 2 ** 32 + 1; // chunk 1: epoch 1, seq 1
  await put('map/00000000.1.2', Buffer.from(page.buffer));
  const head = { format: 'bdus-s3-volume', version: 1, size: MiB, chunkSize: 65536, pageEntries: 8192, created: new Date().toISOString(), epoch: 1, commit: 1, pages: { 0: '1.2' }, owner: null, leaseUntil: 0 };
  await put('bdus-volume', JSON.stringify(head));
  const d = await testDriver(await s3(url), { attributes: { size: MiB } });
  assert.ok((await d.read(65536, 65536)).equals(chunk));
  assert.ok((await d.read(0, 65536)).equals(Buffer.alloc(65536)));
  await d.write(4096, Buffer.alloc(4096, 1));
  await d.close();
  const text = await (await cluster().s3.send(new GetObjectCommand({ Bucket: name, Key: `${prefix}/bdus-volume` }))).Body!.transformToString();
  assert.equal(JSON.parse(text).version, 2);
  const again = await testDriver(await s3(url), { attributes: { size: MiB } });
  assert.ok((await again.read(65536, 65536)).equals(chunk), 'read back from version 2 pages');
  assert.ok((await again.read(4096, 4096)).equals(Buffer.alloc(4096, 1)));
  await again.close();
});

test('ext4 on a new volume: files written, read back by a new driver; trimmed chunks lose their objects', async (t) => {
  const url = await volume();
  const dev = await device(t, ['s3', url, '--create', '--size', '256M', '--chunk-size', '256K']);
  await must('mkfs.ext4', ['-q', '-E', 'nodiscard', dev]);
  let mnt = await mounted(t, dev);
  await must('dd', ['if=/dev/urandom', `of=${mnt}/data`, 'bs=1M', 'count=32', 'status=none']);
  await must('cp', ['-r', `${process.cwd()}/src`, `${mnt}/src`]);
  await must('sync', []);
  const before = await sha(`${mnt}/data`);
  const tree = await must('sh', ['-c', `cd ${mnt}/src && find . -type f -exec sha256sum {} + | sort`]);
  await must('umount', [mnt]);
  assert.equal((await bdus(['destroy', dev])).code, 0);
  const written = await objects(url);
  assert.ok(written >= 128, `32 MiB and a tree in 256 KiB chunks: ${written} chunk objects`);

  const again = await device(t, ['s3', url]);
  assert.equal((await must('blockdev', ['--getsize64', again])).trim(), String(256 * MiB), 'the size comes from the volume');
  await must('mount', [again, mnt]);
  assert.equal(await sha(`${mnt}/data`), before);
  assert.equal(await must('sh', ['-c', `cd ${mnt}/src && find . -type f -exec sha256sum {} + | sort`]), tree);
  await must('rm', [`${mnt}/data`]);
  await must('sync', []); // ext4 trims blocks freed in a committed transaction only
  await must('fstrim', [mnt]);
  await must('sync', [again]); // a flush: the commit that drops the trimmed chunks
  let after = await objects(url);
  for (let i = 0; i < 50 && after > written - 100; i++) {
    await sleep(100); // deleting what the commit no longer names follows it: wait for the bound asserted below
    after = await objects(url);
  }
  assert.ok(after <= written - 100, `the 32 MiB file's chunks are gone after fstrim: ${written} -> ${after}`);
  mnt = '';
});

test('fio verify across a SIGKILL and hot swaps: 0 errors', async (t) => {
  const url = await volume();
  const driver = ['s3', url, '--recoverable'];
  const dev = await device(t, ['s3', url, '--create', '--size', '64M', '--recoverable']);
  assert.equal(await killThenSwap(t, dev, driver), '0');
});

test('two drivers racing for one new volume: one device, and a clear error for the other', async (t) => {
  const url = await volume();
  const runs = await Promise.all([0, 1].map(() => bdus(['run', 's3', url, '--create', '--size', '64M'], { timeoutMs: 60_000 })));
  const won = runs.filter((r) => r.code === 0);
  assert.equal(won.length, 1, runs.map((r) => r.stderr).join('\n'));
  t.after(() => bdus(['destroy', '--force', won[0]!.stdout.trim()]));
  const lost = runs.find((r) => r.code !== 0)!;
  assert.match(lost.stderr, /the volume is in use by device \d+ on .* its lease runs for \d+ s more/);
  const list = JSON.parse((await bdus(['list', '--json'])).stdout) as unknown[];
  assert.equal(list.length, 1, 'the loser left no device');
});

test('a driver stopped (SIGSTOP) while another took the volume writes nothing after it resumes', async (t) => {
  const url = await volume();
  const a = await device(t, ['s3', url, '--create', '--size', '64M', '--lease', '2s']);
  const block = (byte: number) => {
    const path = scratch(`block-${byte}`);
    writeFileSync(path, Buffer.alloc(4096, byte));
    t.after(() => sh('rm', ['-f', path]));
    return path;
  };
  const write = (dev: string, byte: number, at: number) => sh('dd', [`if=${block(byte)}`, `of=${dev}`, 'bs=4096', `seek=${at}`, 'oflag=direct', 'conv=fsync,notrunc', 'status=none']);
  assert.equal((await write(a, 1, 0)).code, 0);
  const pid = Number(await info(a, 'pid'));
  process.kill(pid, 'SIGSTOP');
  t.after(() => {
    try {
      process.kill(pid, 'SIGCONT'); // if the test failed before it did
    } catch {
      // gone: a fenced driver ends
    }
  });
  await sleep(3000); // its lease (2 s) runs out

  const b = await device(t, ['s3', url, '--lease', '2s']);
  assert.equal((await write(b, 2, 1)).code, 0);
  process.kill(pid, 'SIGCONT');
  const late = await write(a, 3, 2);
  assert.notEqual(late.code, 0, 'the resumed driver\'s write and fsync fail');
  assert.equal((await bdus(['destroy', b])).code, 0);

  const c = await device(t, ['s3', url]);
  const read = (at: number) => must('sh', ['-c', `dd if=${c} bs=4096 skip=${at} count=1 iflag=direct status=none | od -An -tu1 -N1`]);
  assert.equal((await read(0)).trim(), '1', 'what the first driver flushed');
  assert.equal((await read(1)).trim(), '2', 'what the second driver flushed');
  assert.equal((await read(2)).trim(), '0', 'nothing of the resumed driver\'s write');
});

test('the gateway restarted in the middle of I/O: a pause, nothing lost; a flush fails after the timeout and succeeds once it is back', async (t) => {
  const data = scratch('data');
  t.after(() => sh('rm', ['-f', data]));
  await must('dd', ['if=/dev/urandom', `of=${data}`, 'bs=1M', 'count=16', 'status=none']);
  // A cache of 4 MiB: the copy must go to the store as it runs, while the gateway is away.
  const dev = await device(t, ['s3', await volume(), '--create', '--size', '64M', '--cache-size', '4M', '--chunk-size', '256K']);
  const copying = sh('dd', [`if=${data}`, `of=${dev}`, 'bs=256k', 'oflag=direct', 'conv=fsync', 'status=none'], { timeoutMs: 120_000 });
  await sleep(300);
  await cluster().stopGateway();
  await sleep(2000);
  await cluster().startGateway();
  assert.equal((await copying).code, 0, 'the copy and its fsync waited for the gateway');
  await must('cmp', ['-n', String(16 * MiB), data, dev]);

  const short = await device(t, ['s3', await volume(), '--create', '--size', '64M', '--request-timeout', '5s']);
  await cluster().stopGateway();
  t.after(() => cluster().startGateway().catch(() => undefined));
  await must('dd', [`if=${data}`, `of=${short}`, 'bs=1M', 'count=1', 'seek=20', 'oflag=direct', 'status=none']);
  const t0 = Date.now();
  const flush = await sh('sync', [short]);
  assert.notEqual(flush.code, 0, 'a flush that cannot reach the store fails');
  assert.ok(Date.now() - t0 >= 4500, `after the request timeout (${Date.now() - t0} ms)`);
  await cluster().startGateway();
  assert.equal((await sh('sync', [short])).code, 0, 'and succeeds once it is back');
  await must('cmp', ['-n', String(MiB), data, short, '0', String(20 * MiB)]);
});

test('mistakes are clear errors at bdus run, and leave no device', async () => {
  const url = await volume();
  const cases: Array<[string[], NodeJS.ProcessEnv, RegExp]> = [
    [['s3', url], {}, /there is no volume at .*give --create and --size/],
    [['s3', url, '--create'], {}, /needs a size|--size/],
    [['s3', 's3://no-such-bucket-here/v', '--create', '--size', '64M'], {}, /there is no bucket 'no-such-bucket-here'/],
    [['s3', url, '--create', '--size', '64M'], { AWS_SECRET_ACCESS_KEY: 'wrong' }, /refused the credentials/],
    [['s3', url, '--create', '--size', '64M', '--endpoint', 'http://127.0.0.1:9'], {}, /did not succeed|ECONNREFUSED/],
    [['s3', 'http://bucket/x'], {}, /is not s3:\/\/BUCKET/],
    [['s3', url, '--create', '--size', '64M', '--chunk-size', '3000'], {}, /a power of two from 4K to 64M/],
    [['s3', `s3://${await versioned()}/v`, '--create', '--size', '64M'], {}, /bucket '.*' is versioned \(Enabled\): keep volumes in an unversioned bucket/],
  ];
  for (const [args, env, expected] of cases) {
    const r = await bdus(['run', ...args], { env: { ...process.env, ...env }, timeoutMs: 60_000 });
    assert.notEqual(r.code, 0, args.join(' '));
    assert.match(r.stderr, expected, args.join(' '));
  }
  const made = await bdus(['run', 's3', url, '--create', '--size', '64M']);
  assert.equal(made.code, 0, made.stderr);
  assert.equal((await bdus(['destroy', made.stdout.trim()])).code, 0);
  const wrongSize = await bdus(['run', 's3', url, '--size', '128M']);
  assert.match(wrongSize.stderr, /the volume at .* is 67108864 bytes; the device would be 134217728/);
  const list = JSON.parse((await bdus(['list', '--json'])).stdout) as unknown[];
  assert.equal(list.length, 0, 'no device left behind');
});
