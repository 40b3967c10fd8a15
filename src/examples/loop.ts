/**
 * loop: mirrors a regular file or a block device, like the kernel's loop driver.
 *
 *   bdus run loop PATH
 *
 * Write-zeroes and discard go through fallocate(2) on PATH. Safely recoverable: every byte of the
 * device lives in PATH, and each operation is idempotent.
 */
import { closeSync, constants, fstatSync, fsync, ftruncate, openSync, read, write } from 'node:fs';
import { promisify } from 'node:util';
import type { Driver } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import { fallocate, native } from '../native.js';

const readAsync = promisify(read);
const writeAsync = promisify(write);
const fsyncAsync = promisify(fsync);
const ftruncateAsync = promisify(ftruncate);

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

export const usage = 'PATH';
export const description = 'mirrors PATH, a regular file or a block device, like the kernel\'s loop driver (recoverable)';

interface LoopState {
  fd: number;
}

export default function loop(args: readonly string[]): Driver<LoopState> {
  const path = args[0];
  if (!path) throw new DriverError('EINVAL', 'usage: bdus run loop PATH (a regular file or a block device)');
  const fd = openSync(path, constants.O_RDWR);
  const stat = fstatSync(fd);
  const size = stat.isBlockDevice() ? Number(native.blockDeviceSize(fd)) : stat.size;
  closeSync(fd);

  return {
    attributes: { size: size - (size % 4096), maxConcurrentCallbacks: 16 },

    initialize(ctx) {
      ctx.state = { fd: openSync(path, constants.O_RDWR) };
    },

    terminate(ctx) {
      closeSync(ctx.state.fd);
    },

    async read(buffer, offset, ctx) {
      for (let done = 0; done < buffer.length; ) {
        const { bytesRead: n } = await readAsync(ctx.state.fd, buffer, done, buffer.length - done, offset + done);
        if (n === 0) throw new DriverError('EIO', `${path} is shorter than the device`);
        done += n;
      }
    },

    async write(data, offset, ctx) {
      for (let done = 0; done < data.length; ) {
        done += (await writeAsync(ctx.state.fd, data, done, data.length - done, offset + done)).bytesWritten;
      }
    },

    async flush(ctx) {
      await fsyncAsync(ctx.state.fd);
    },

    async writeZeros(offset, size, mayUnmap, ctx) {
      if (mayUnmap) return fallocate(ctx.state.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, size);
      try {
        await fallocate(ctx.state.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, size);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') throw error;
        // tmpfs has no ZERO_RANGE: punch, then allocate again so later writes cannot hit ENOSPC.
        await fallocate(ctx.state.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, size);
        await fallocate(ctx.state.fd, FALLOC_FL_KEEP_SIZE, offset, size);
      }
    },

    // A file grows or shrinks with the device (the new range reads as zeros); a block device cannot.
    async resize(size, ctx) {
      if (fstatSync(ctx.state.fd).isBlockDevice()) throw new DriverError('EOPNOTSUPP', `${path} is a block device: its size is its own`);
      await ftruncateAsync(ctx.state.fd, size);
    },

    async discard(offset, size, ctx) {
      await fallocate(ctx.state.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, size);
    },
  };
}
