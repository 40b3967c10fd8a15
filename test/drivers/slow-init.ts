/** A RAM driver whose initialize takes the number of milliseconds given as its first argument. */
import type { Driver } from '../../src/index.js';

export default function slowInit(args: readonly string[]): Driver<Buffer> {
  return {
    attributes: { size: 16 << 20, disablePartitionScanning: true },
    async initialize(ctx) {
      await new Promise((resolve) => setTimeout(resolve, Number(args[0])));
      ctx.state = Buffer.alloc(ctx.attributes.size);
    },
    read(buffer, offset, ctx) {
      ctx.state.copy(buffer, 0, offset, offset + buffer.length);
    },
    write(data, offset, ctx) {
      data.copy(ctx.state, offset);
    },
  };
}
