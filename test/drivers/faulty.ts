/**
 * A RAM driver whose callbacks misbehave at chosen offsets (MiB):
 *   write at 1 MiB: fails with ENOSPC;   read at 2 MiB: throws a plain Error (EIO);
 *   read at 3 MiB: never answers;        write at 4 MiB: aborts the driver;
 *   write at 5 MiB: takes 3 s, then succeeds;
 *   read at 6 MiB: fails with ENOLINK;   read at 7 MiB: fails with ETIMEDOUT.
 * Every other request behaves.
 */
import { abort, DriverError, type Driver } from '../../src/index.js';

const MiB = 1 << 20;

const faulty: Driver<Buffer> = {
  attributes: { size: 16 * MiB, maxConcurrentCallbacks: 8, disablePartitionScanning: true },
  initialize(ctx) {
    ctx.state = Buffer.alloc(ctx.attributes.size);
  },
  async read(buffer, offset, ctx) {
    if (offset === 2 * MiB) throw new Error('a bug in the driver');
    if (offset === 3 * MiB) return new Promise<void>(() => undefined);
    if (offset === 6 * MiB) throw new DriverError('ENOLINK');
    if (offset === 7 * MiB) throw new DriverError('ETIMEDOUT');
    ctx.state.copy(buffer, 0, offset, offset + buffer.length);
  },
  async write(data, offset, ctx) {
    if (offset === 1 * MiB) throw new DriverError('ENOSPC');
    if (offset === 5 * MiB) await new Promise((resolve) => setTimeout(resolve, 3000));
    if (offset === 4 * MiB) abort('asked to abort');
    data.copy(ctx.state, offset);
  },
};

export default faulty;
