/**
 * Statistics on real devices (FUSE+loop here): what `bdus stats` counts, what survives hot swaps,
 * recoveries and daemon restarts, `bdus top` in a real terminal (tmux), the Prometheus
 * endpoint read by the official Python client's parser, and a daemon that cannot serve it (its
 * port taken) failing the command that started it at once.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { stopDaemon } from '../src/index.js';
import { BIN, DRIVERS, bdus, device, image, killDriver, must, mustRerun, readBlock, sh, sleep } from './helpers.js';

const MiB = 1 << 20;

interface Op {
  requests: number;
  bytes: number;
  errors: number;
  inFlight: number;
  errnos: Record<string, number>;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}
interface Stats {
  operations: Record<string, Op>;
  timeouts: number;
  swaps: { count: number; lastMs: number };
  recoveries: { count: number; lastMs: number };
}

async function stats(dev: string): Promise<Stats> {
  return JSON.parse(await must(process.execPath, [BIN, 'stats', dev, '--json'])) as Stats;
}

function dd(dev: string, args: string[]) {
  return sh('dd', [`of=${dev}`, 'bs=4096', 'oflag=direct', 'status=none', ...args], { timeoutMs: 60_000 });
}

test('bdus stats: requests, bytes, errors by errno, timeouts and latency percentiles per request type', async (t) => {
  const dev = await device(t, [`${DRIVERS}/faulty.js`, '--request-timeout', '1s']);
  assert.equal((await dd(dev, ['if=/dev/urandom', 'count=64', `seek=${(8 * MiB) / 4096}`])).code, 0);
  assert.notEqual((await dd(dev, ['if=/dev/zero', 'count=1', `seek=${MiB / 4096}`])).code, 0, 'the write at 1 MiB fails (ENOSPC)');
  assert.notEqual((await readBlock(dev, 3 * MiB)).code, 0, 'the read at 3 MiB never answers: ETIMEDOUT');
  const s = await stats(dev);
  const write = s.operations.write!;
  assert.ok(write.requests >= 65 && write.bytes >= 64 * 4096, JSON.stringify(write));
  assert.equal(write.errnos.ENOSPC, 1);
  assert.equal(s.operations.read!.errnos.ETIMEDOUT, 1);
  assert.equal(s.timeouts, 1);
  assert.equal(s.operations.read!.inFlight, 0, 'a timed-out request is answered, though its callback runs on');
  assert.ok(write.p50 > 0 && write.p50 <= write.p90 && write.p90 <= write.p99 && write.p99 <= write.max, JSON.stringify(write));

  const text = await must(process.execPath, [BIN, 'stats', dev]);
  assert.match(text, /^write +\d+/m);
  assert.match(text, /ENOSPC 1/);
  assert.match(text, /timeouts: 1 /);
});

test('bdus stats: latencies are what the driver takes; --interval prints rates per interval', async (t) => {
  const record = `/tmp/bdus-stats-${process.pid}`;
  t.after(() => sh('rm', ['-f', record]));
  const dev = await device(t, [`${DRIVERS}/slow.js`, record]); // reads take 50 ms (3 s at offset 0)
  for (let i = 1; i <= 5; i++) assert.equal((await readBlock(dev, i * MiB)).code, 0);
  const read = (await stats(dev)).operations.read!;
  assert.ok(read.p50 >= 50_000 && read.p50 < 200_000, `p50 ${read.p50} µs for 50 ms reads`);

  const reads = sh('sh', ['-c', `for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do dd if=${dev} of=/dev/null bs=4096 count=1 skip=$((i * 256)) iflag=direct status=none; done`]);
  const lines = (await must(process.execPath, [BIN, 'stats', dev, '--interval', '0.4', '--count', '2'])).trim().split('\n');
  await reads;
  assert.equal(lines.length, 4, lines.join('\n'));
  assert.match(lines[1]!, /R\/S +RMIB\/S +R P99/);
  const readsPerSecond = Number(lines[2]!.trim().split(/ +/)[1]);
  assert.ok(readsPerSecond > 5 && readsPerSecond < 40, `${readsPerSecond} reads/s for 50 ms reads one at a time`);

  const json = (await must(process.execPath, [BIN, 'stats', dev, '--json', '--interval', '0.2', '--count', '1'])).trim();
  assert.equal(typeof (JSON.parse(json) as { seconds: number }).seconds, 'number');
});

test('statistics outlive drivers: a hot swap and a recovery are counted with their durations, the counts go on', async (t) => {
  const img = image(t);
  const driver = [`${DRIVERS}/recoverable.js`, img];
  const dev = await device(t, [...driver, '--recoverable']);
  assert.equal((await dd(dev, ['if=/dev/zero', 'count=32'])).code, 0);
  const before = (await stats(dev)).operations.write!.requests;

  await mustRerun(dev, driver);
  assert.equal((await dd(dev, ['if=/dev/zero', 'count=32'])).code, 0);
  let s = await stats(dev);
  assert.equal(s.swaps.count, 1);
  assert.ok(s.swaps.lastMs > 0, JSON.stringify(s.swaps));
  assert.ok(s.operations.write!.requests >= before + 32, 'the new driver counts on');

  await killDriver(dev);
  await mustRerun(dev, driver);
  s = await stats(dev);
  assert.equal(s.recoveries.count, 1);
  assert.ok(s.recoveries.lastMs > 0, JSON.stringify(s.recoveries));
  assert.equal(s.swaps.count, 1);
});

test('bdus daemon stop leaves devices serving; the next daemon reads their statistics', async (t) => {
  const dev = await device(t, ['ram', '--size', '16M']);
  assert.equal((await dd(dev, ['if=/dev/zero', 'count=16'])).code, 0);
  await must(process.execPath, [BIN, 'daemon', 'stop']);
  assert.equal((await dd(dev, ['if=/dev/zero', 'count=16'])).code, 0, 'the device serves without a daemon');
  const s = await stats(dev); // starts a daemon
  assert.ok(s.operations.write!.requests >= 32);
});

test('bdus top draws every device in a terminal, refreshes, and gives the terminal back on q', async (t) => {
  const dev = await device(t, ['ram', '--size', '16M']);
  const session = `bdus-top-${process.pid}`;
  t.after(() => sh('tmux', ['kill-session', '-t', session]));
  await must('tmux', ['new-session', '-d', '-s', session, '-x', '150', '-y', '20', `${process.execPath} ${BIN} top --interval 0.3; echo "top exited $?"; sleep 60`]);
  const screen = async () => (await must('tmux', ['capture-pane', '-p', '-t', session])).trimEnd();
  const until = async (what: RegExp) => {
    for (let i = 0; i < 100; i++) {
      const text = await screen();
      if (what.test(text)) return text;
      await sleep(100);
    }
    assert.fail(`the terminal never showed ${what}:\n${await screen()}`);
  };
  const first = await until(new RegExp(`${dev} +fuse +available`));
  assert.match(first, /^bdus top - \d\d:\d\d:\d\d +\d+ devices? +every 0\.3 s +\(q quits\)/m);
  assert.match(first, /DEVICE +FRONTEND +STATE +PID +R\/S +RMIB\/S/);
  const writes = sh('dd', ['if=/dev/zero', `of=${dev}`, 'bs=4096', 'count=20000', 'oflag=direct', 'status=none']);
  await until(new RegExp(`${dev} +fuse +available +\\d+ +\\S+ +\\S+ +\\S+ +\\S+ +\\S+ +[1-9]`)); // writes per second appear
  await writes;
  await must('tmux', ['send-keys', '-t', session, 'q']);
  const after = await until(/top exited 0/);
  assert.doesNotMatch(after, /bdus top -/, 'the alternate screen is gone');
});

test('bdus top without a terminal prints frames one after another (batch)', async (t) => {
  const dev = await device(t, ['ram', '--size', '16M']);
  const r = await bdus(['top', '-n', '2', '--interval', '0.2']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.match(/^bdus top - /gm)?.length, 2);
  assert.ok(r.stdout.includes(dev));
  assert.doesNotMatch(r.stdout, /\x1b/, 'no escape sequences');
  assert.equal((await bdus(['top', '--iterations', '0'])).code, 2);
  assert.equal((await bdus(['top', '--interval', 'soon'])).code, 2);
});

const PARSE = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {"type": family.type, "samples": [[s.name, s.labels, s.value] for s in family.samples]}
print(json.dumps(out))
`;

test('bdus daemon --metrics serves Prometheus metrics that the Prometheus client parser reads', async (t) => {
  const port = 20000 + (process.pid % 20000);
  await stopDaemon();
  t.after(() => stopDaemon());
  await must(process.execPath, [BIN, 'daemon', 'start', '--metrics', `127.0.0.1:${port}`]);
  assert.match(await must(process.execPath, [BIN, 'daemon', 'status']), new RegExp(`metrics at 127\\.0\\.0\\.1:${port}`));
  const dev = await device(t, ['ram', '--size', '16M']);
  assert.equal((await dd(dev, ['if=/dev/zero', 'count=100'])).code, 0);
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const text = await response.text();
  const script = `/tmp/bdus-parse-${process.pid}.py`;
  const scraped = `/tmp/bdus-scrape-${process.pid}.txt`;
  t.after(() => sh('rm', ['-f', script, scraped]));
  writeFileSync(script, PARSE);
  writeFileSync(scraped, text);
  type Family = { type: string; samples: Array<[string, Record<string, string>, number]> };
  const families = JSON.parse(await must('sh', ['-c', `/usr/bin/python3 ${script} < ${scraped}`])) as Record<string, Family>;
  const name = dev.replace('/dev/', '');
  const sample = (family: string, labels: Record<string, string>, suffix = '') =>
    families[family]?.samples.find(([n, l]) => n === family + suffix && Object.entries(labels).every(([k, v]) => l[k] === v))?.[2];

  assert.equal(families.bdus_requests?.type, 'counter');
  assert.ok(sample('bdus_requests', { device: name, operation: 'write' }, '_total')! >= 100);
  assert.ok(sample('bdus_request_bytes', { device: name, operation: 'write' }, '_total')! >= 100 * 4096);
  assert.equal(sample('bdus_device_info', { device: name, frontend: 'fuse', state: 'available' }), 1);
  assert.equal(families.bdus_request_duration_seconds?.type, 'histogram');
  const all = sample('bdus_request_duration_seconds', { device: name, operation: 'write', le: '+Inf' }, '_bucket')!;
  assert.equal(sample('bdus_request_duration_seconds', { device: name, operation: 'write' }, '_count'), all);
  assert.ok(all >= 100);
  const buckets = families.bdus_request_duration_seconds!.samples.filter(([n, l]) => n.endsWith('_bucket') && l.device === name && l.operation === 'write');
  assert.ok(buckets.every(([, , v], i) => i === 0 || v >= buckets[i - 1]![2]), 'buckets are cumulative');
  assert.equal(families.bdus_driver_changes?.type, 'counter');
  assert.ok(families.process_cpu_seconds, 'the daemon process metrics come along');

  assert.equal((await fetch(`http://127.0.0.1:${port}/elsewhere`)).status, 404);
  const bad = await bdus(['daemon', 'start', '--metrics', 'localhost:99999']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /invalid metrics address 'localhost:99999'/);
});

test('a daemon that ends before it listens (its metrics port taken): the command that started it fails at once, naming the log', async (t) => {
  await stopDaemon();
  t.after(() => stopDaemon());
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  t.after(() => taken.close());
  const { port } = taken.address() as AddressInfo;
  const started = Date.now();
  const r = await bdus(['daemon', 'start', '--metrics', `127.0.0.1:${port}`]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /the bdus daemon ended \(exit status 1\) before it listened: cannot serve metrics at 127\.0\.0\.1:\d+: listen EADDRINUSE.* \(see \/run\/bdus\/log\/daemon\.log\)/);
  assert.ok(Date.now() - started < 10_000, `it took ${Date.now() - started} ms`);
  const status = await bdus(['daemon', 'status']);
  assert.match(status.stdout + status.stderr, /not running/);
});
