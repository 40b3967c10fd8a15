/**
 * What a page costs the first time user space, then the kernel, touches it (or the other way
 * round): 4 KiB accesses to random pages of 1 GiB of anonymous memory (native.mapAnonymous, as
 * the `ram` driver's store) that was filled either by user space (Buffer.fill) or by the kernel
 * (read(2) from /dev/zero into it). Each access pattern runs twice over the same pages: the first
 * pass pays for the first touch, the second shows the steady state.
 *
 *   node dist/bench/first-touch.js [--accesses 50000]
 *
 * The accesses: a user-space write (Buffer.copy), a kernel write (read(2) of /dev/zero into the
 * page) and a kernel read (write(2) of the page to a file in /dev/shm); the kernel's include a
 * system call each. Why it matters: a server that copies once (bdus's read replies gathered from
 * the driver's memory, writes received into it: docs/performance.md) has the kernel and user
 * space touch the same pages, where a server that copies twice keeps the kernel off them. On
 * the paravirtualized guests these benchmarks run on, a page's first touch from the other side
 * costs microseconds (docs/performance.md, "The first touch from the other side").
 */
import { closeSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { native } from '../src/native.js';

const SIZE = 1 << 30;
const PAGE = 4096;

const { values } = parseArgs({ options: { accesses: { type: 'string', default: '50000' } } });
const accesses = Number(values.accesses);

const zero = openSync('/dev/zero', 'r');
const sinkPath = `/dev/shm/bdus-first-touch-${process.pid}`;
const sink = openSync(sinkPath, 'w');
unlinkSync(sinkPath);
const source = Buffer.alloc(PAGE, 2);

function filled(by: 'user' | 'kernel'): Buffer {
  const memory = native.mapAnonymous(SIZE);
  if (by === 'user') memory.fill(1);
  else for (let at = 0; at < SIZE; at += 1 << 20) readSync(zero, memory, at, 1 << 20, null);
  return memory;
}

const ACCESSES: Record<string, (memory: Buffer, at: number) => void> = {
  'user-space write': (memory, at) => source.copy(memory, at),
  'kernel write': (memory, at) => readSync(zero, memory, at, PAGE, null),
  'kernel read': (memory, at) => writeSync(sink, memory, at, PAGE, 0),
};

/** Mean microseconds per access over `accesses` random pages (the same pages for the same seed). */
function time(memory: Buffer, access: (memory: Buffer, at: number) => void, seed: number): number {
  let r = seed;
  const start = process.hrtime.bigint();
  for (let i = 0; i < accesses; i++) {
    r = (Math.imul(r, 1103515245) + 12345) >>> 0;
    access(memory, ((r >>> 8) % (SIZE / PAGE)) * PAGE);
  }
  return Number(process.hrtime.bigint() - start) / accesses / 1000;
}

const rows = ['| memory filled by | access | first touch (us) | again (us) |', '|---|---|---:|---:|'];
// A warm-up round first (the JIT, the page cache of /dev/shm), not shown.
for (const round of [0, 1]) {
  for (const by of ['user', 'kernel'] as const) {
    for (const [name, access] of Object.entries(ACCESSES)) {
      const memory = filled(by);
      const first = time(memory, access, 7 + round);
      const again = time(memory, access, 7 + round);
      if (round === 1) rows.push(`| ${by === 'user' ? 'user space' : 'the kernel'} | ${name} | ${first.toFixed(2)} | ${again.toFixed(2)} |`);
      native.dropPages(memory, 0, SIZE, false);
    }
  }
}
closeSync(zero);
closeSync(sink);
console.log(rows.join('\n'));
