/**
 * An export's lanes (`bdus export --lanes N`): NBD multi-conn served by several threads, each
 * accepted connection by one lane in turn. fio verify over four connections with every lane
 * serving; nbdcopy's multi-conn round trip, in the clear and over TLS; the connection limit
 * counting every lane's connections; a lane whose driver aborts ends the export; what it refuses.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bdus, DRIVERS, image, laneMarks, lanesSeen, scratch, sh } from './helpers.js';
import { assertConnectionLimit, assertRoundTrip, certificates, exportDriver } from './nbd-helpers.js';
import { ABORT_AT } from './drivers/lanes.js';

const MiB = 1 << 20;
const DRIVER = `${DRIVERS}/lanes.js`;

async function fioVerify(uri: string, jobs: number): Promise<void> {
  const r = await sh('fio', [
    '--name=nbd', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', `--numjobs=${jobs}`,
    '--size=16M', '--offset_increment=16M', '--verify=crc32c', '--verify_fatal=1', '--group_reporting', '--output-format=terse',
  ], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stderr);
  const fields = r.stdout.trim().split('\n').at(-1)!.split(';');
  assert.equal(fields[4], '0', 'no fio errors');
  assert.equal(Number(fields[5]), jobs * 16 * 1024, 'every block written was read back and verified');
}

test('export lanes: fio verify over four connections, every lane serving; nbdcopy multi-conn round trip; SIGTERM ends it cleanly', async (t) => {
  const img = image(t, 64 * MiB);
  const seen = laneMarks(t);
  const exported = await exportDriver(t, [DRIVER, 'serve', img, seen, '--lanes', '2']);
  await fioVerify(exported.uri, 4);
  assert.deepEqual(lanesSeen(seen), ['0', '1'], 'both lanes served connections');
  await assertRoundTrip(t, exported.uri, 64 * MiB);
  assert.equal(await exported.stop(), 0, `a normal stop: ${exported.log()}`);
  assert.doesNotMatch(exported.log(), /error|failed/i);
});

test('export lanes: the connection limit counts every lane\'s connections; TLS connections are served by lanes too', async (t) => {
  const limited = await exportDriver(t, ['ram', '--size', '16M', '--lanes', '2', '--max-connections', '2']);
  // The first connection goes to the main thread, the second to lane 1: both count, and the
  // second one's end (a lane's) makes room.
  await assertConnectionLimit(limited);

  const { server, client } = await certificates(t);
  const secure = await exportDriver(t, ['ram', '--size', '16M', '--lanes', '2', '--tls', 'require', '--tls-certificates', server]);
  const uri = `${secure.uri.replace(/^nbd\+unix:/, 'nbds+unix:')}&tls-certificates=${client}`;
  // nbdcopy opens four connections to a multi-conn export: two of them go to lane 1.
  await assertRoundTrip(t, uri, 16 * MiB);
});

test('export lanes: a lane whose driver aborts ends the export (exit 1, said why); refused with --filter and with a driver that is not lane-safe', async (t) => {
  const img = image(t, 16 * MiB);
  const seen = laneMarks(t);
  const exported = await exportDriver(t, [DRIVER, 'abort', img, seen, '--lanes', '2']);
  // Two connections, one per lane; lane 1's reads where it aborts.
  const r = await sh('fio', ['--name=r', '--ioengine=nbd', `--uri=${exported.uri}`, '--rw=read', '--bs=4k', '--numjobs=2', `--offset=${ABORT_AT}`, '--size=1M', '--output-format=terse'], { timeoutMs: 60_000 });
  assert.notEqual(r.code, 0, 'the reads of the aborting lane fail');
  // The export ends by itself; a SIGTERM sent while it is ending could be what ends it.
  const code = await Promise.race([exported.exited, new Promise((resolve) => setTimeout(resolve, 30_000, 'still running').unref())]);
  assert.equal(code, 1, exported.log());
  assert.match(exported.log(), /lane 1 gives up/);

  const filtered = await bdus(['export', 'ram', '--size', '16M', '--lanes', '2', '--filter', 'delay', '--listen', `unix:${scratch('x')}.sock`]);
  assert.equal(filtered.code, 2, filtered.stderr);
  assert.match(filtered.stderr, /--lanes cannot be combined with --filter yet/);
  const unsafe = await bdus(['export', 'memory', '--size', '16M', '--lanes', '2', '--listen', `unix:${scratch('x')}.sock`]);
  assert.equal(unsafe.code, 1);
  assert.match(unsafe.stderr, /lane-safe/);
});
