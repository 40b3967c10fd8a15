/**
 * A RAM driver that appends one JSON line per callback to the file named by its first argument,
 * so tests can see exactly which callbacks the kernel's requests became. With a second argument
 * "no-zeros" it has no writeZeros (discards then reach discard); with "slow-terminate" its
 * terminate takes a second; with "fua" it has fuaWrite; with "extents" it reports 4 KiB blocks
 * of zeros as holes that read as zeros; with "resizable" it has resize. Life-cycle records carry the process id, so that the records of a
 * driver and of its replacement (same file) tell which instance did what.
 */
import { appendFileSync } from 'node:fs';
import type { Driver } from '../../src/index.js';

export default function recorder(args: readonly string[]): Driver<Buffer> {
  const file = args[0]!;
  const record = (entry: object) => appendFileSync(file, `${JSON.stringify(entry)}\n`);
  const driver: Driver<Buffer> = {
    attributes: { size: 64 << 20, maxConcurrentCallbacks: 8 },
    initialize(ctx) {
      ctx.state = Buffer.alloc(ctx.attributes.size);
      record({ op: 'initialize', pid: process.pid, isRerun: ctx.isRerun, attributes: ctx.attributes });
    },
    onDeviceAvailable(ctx) {
      record({ op: 'onDeviceAvailable', pid: process.pid });
      process.stdout.write(`${ctx.path}\n`);
    },
    read(buffer, offset, ctx) {
      record({ op: 'read', offset, size: buffer.length });
      ctx.state.copy(buffer, 0, offset, offset + buffer.length);
    },
    write(data, offset, ctx) {
      record({ op: 'write', offset, size: data.length });
      data.copy(ctx.state, offset);
    },
    flush() {
      record({ op: 'flush', pid: process.pid });
    },
    discard(offset, size) {
      record({ op: 'discard', offset, size });
    },
    writeZeros(offset, size, mayUnmap, ctx) {
      record({ op: 'writeZeros', offset, size, mayUnmap });
      ctx.state.fill(0, offset, offset + size);
    },
    async terminate() {
      record({ op: 'terminate', pid: process.pid });
      if (args.includes('slow-terminate')) await new Promise((resolve) => setTimeout(resolve, 1000));
    },
  };
  if (args.includes('no-zeros')) delete driver.writeZeros;
  if (args.includes('fua')) {
    driver.fuaWrite = (data, offset, ctx) => {
      record({ op: 'fuaWrite', offset, size: data.length });
      data.copy(ctx.state, offset);
    };
  }
  if (args.includes('resizable')) {
    driver.resize = (size, ctx) => {
      record({ op: 'resize', size });
      const grown = Buffer.alloc(size);
      ctx.state.copy(grown, 0, 0, Math.min(size, ctx.state.length));
      ctx.state = grown;
    };
  }
  if (args.includes('extents')) {
    driver.extents = (offset, size, ctx) => {
      record({ op: 'extents', offset, size });
      const extents: Array<{ length: number; hole: boolean; zero: boolean }> = [];
      for (let at = offset; at < offset + size; at += 4096) {
        const zero = ctx.state.subarray(at, at + 4096).every((b) => b === 0);
        const last = extents[extents.length - 1];
        if (last && last.zero === zero) last.length += 4096;
        else extents.push({ length: 4096, hole: zero, zero });
      }
      return extents;
    };
  }
  return driver;
}
