/**
 * A device in memory that offers writeTarget (a view of its store), for the tests of writes
 * received straight into a driver's memory:
 *
 *   target.js COUNTS [wrong-size | throws]
 *
 * Its terminate writes "IN_PLACE COPIED" to COUNTS: how many write calls found their data in
 * the store already (received there) and how many had it elsewhere (bdus's buffer), copied.
 *   wrong-size   writeTarget answers one block less than asked (bdus must not use it)
 *   throws       writeTarget throws (bdus must carry on without it)
 */
import { writeFileSync } from 'node:fs';
import type { Driver } from '../../src/index.js';

interface State {
  store: Buffer;
  inPlace: number;
  copied: number;
}

export default function target(args: readonly string[]): Driver<State> {
  const [counts, behaviour] = args;
  return {
    attributes: { size: 64 << 20, maxConcurrentCallbacks: 16 },

    initialize(ctx) {
      ctx.state = { store: Buffer.alloc(ctx.attributes.size), inPlace: 0, copied: 0 };
    },

    writeTarget(offset, size, ctx) {
      if (behaviour === 'throws') throw new Error('no memory to offer');
      const end = behaviour === 'wrong-size' ? offset + size - 512 : offset + size;
      return ctx.state.store.subarray(offset, end);
    },

    read(buffer, offset, ctx) {
      ctx.state.store.copy(buffer, 0, offset, offset + buffer.length);
    },

    write(data, offset, ctx) {
      const { store } = ctx.state;
      if (data.buffer === store.buffer && data.byteOffset === store.byteOffset + offset) ctx.state.inPlace++;
      else {
        data.copy(store, offset);
        ctx.state.copied++;
      }
    },

    terminate(ctx) {
      writeFileSync(counts!, `${ctx.state.inPlace} ${ctx.state.copied}`);
    },
  };
}
