/** A RAM driver whose flush takes the number of milliseconds given as its first argument. */
import type { Driver } from '../../src/index.js';

export default function slowFlush(args: readonly string[]): Driver<Buffer> {
  return {
    attributes: { size: 16 << 20, maxConcurrentCallbacks: 4, disablePartitionScanning: true },
    initialize(ctx) {
      ctx.state = Buffer.alloc(ctx.attributes.size);
    },
    read(buffer, offset, ctx) {
      ctx.state.copy(buffer, 0, offset, offset + buffer.length);
    },
    write(data, offset, ctx) {
      data.copy(ctx.state, offset);
    },
    flush: () => new Promise((resolve) => setTimeout(resolve, Number(args[0]))),
  };
}
