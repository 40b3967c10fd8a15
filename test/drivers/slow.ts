/**
 * A driver whose reads take a while, recording the most callbacks ever in progress at once to
 * the file named by its first argument. A read at offset 0 takes 3 s; others 50 ms.
 */
import { writeFileSync } from 'node:fs';
import type { Driver } from '../../src/index.js';

export default function slow(args: readonly string[]): Driver {
  let active = 0;
  let most = 0;
  return {
    attributes: { size: 16 << 20, maxConcurrentCallbacks: 4, disablePartitionScanning: true },
    async read(buffer, offset) {
      most = Math.max(most, ++active);
      writeFileSync(args[0]!, String(most));
      await new Promise((resolve) => setTimeout(resolve, offset === 0 ? 3000 : 50));
      buffer.fill(0);
      active--;
    },
  };
}
