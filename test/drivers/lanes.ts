/**
 * The file driver for lanes tests, with a mark and a fault: `lanes.js MODE IMAGE MARKS`. Each
 * lane appends its number to MARKS at its first read or write. MODE 'serve' does nothing more;
 * 'fail-init': lane 1's initialize fails; 'abort': lane 1 aborts the driver at its first read in
 * [ABORT_AT, ABORT_AT + 1 MiB) (away from what a partition scan reads, which ublk's start does
 * even with disablePartitionScanning);
 * 'stuck': lane 1's event loop never returns from its first read.
 */
import { appendFileSync } from 'node:fs';
import { abort, type Driver } from '../../src/index.js';
import { file } from '../../src/drivers/index.js';

/** Where 'abort' mode aborts (lanes.test.ts and ublk.test.ts read there). */
export const ABORT_AT = 3 << 20;

export default function lanes(args: readonly string[]): Driver<any> {
  const [mode, path, marks] = args as [string, string, string];
  const inner = file(path);
  let marked = false;
  const mark = (lane: number | undefined) => {
    if (!marked) appendFileSync(marks, `${lane}\n`);
    marked = true;
  };
  return {
    ...inner,
    attributes: { ...inner.attributes, disablePartitionScanning: true },
    initialize(ctx) {
      if (mode === 'fail-init' && ctx.lane === 1) throw new Error('lane 1 cannot start');
      return inner.initialize!(ctx);
    },
    read(buffer, offset, ctx) {
      mark(ctx.lane);
      if (mode === 'abort' && ctx.lane === 1 && offset >= ABORT_AT && offset < ABORT_AT + (1 << 20)) abort('lane 1 gives up');
      if (mode === 'stuck' && ctx.lane === 1) for (;;);
      return inner.read!(buffer, offset, ctx);
    },
    write(data, offset, ctx) {
      mark(ctx.lane);
      return inner.write!(data, offset, ctx);
    },
  };
}
