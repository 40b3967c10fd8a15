/**
 * file: a device stored in a regular file or a block device, sparse-aware.
 *
 *   bdus run file PATH [--read-only] [--direct]
 *   import { file } from 'bdus/drivers';  run(file('/var/lib/disk.img'))
 *
 * Write-zeroes and discard go through fallocate(2) (a hole is punched where the device may
 * unmap, zeros allocated where it must not), and NBD block-status queries are answered from the
 * file's holes (SEEK_DATA/SEEK_HOLE), so `nbdcopy` and `qemu-img convert` skip what was never
 * written. A regular file grows or shrinks with `bdus resize`; a block device cannot.
 *
 * --direct opens PATH with O_DIRECT: reads and writes bypass the page cache, through a pool of
 * aligned buffers (one copy each way), and the logical block size is 4096 so every request is
 * aligned for any disk. --read-only opens PATH read-only and offers no write callback: the
 * device is read-only (for a base image below the cow filter, say).
 *
 * Reads, writes and flushes go through io_uring, or at once for a file in memory (file-io.ts).
 *
 * Recoverable: every byte lives in PATH and each operation is idempotent. Flush is fdatasync.
 */
import { closeSync, constants, fstatSync, ftruncate, openSync } from 'node:fs';
import { promisify } from 'node:util';
import type { Driver, Extent } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { DriverOptions, DriverOptionValues } from '../driver/module.js';
import { fallocate, native } from '../native.js';
import { FileIo } from './file-io.js';

const ftruncateAsync = promisify(ftruncate);

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
const ENXIO = 6;
/** Extents answered per query at most: a client asks again from where the answer ended. */
const MAX_EXTENTS = 256;

export const usage = 'PATH';
export const description = 'a file or block device: sparse-aware, write-zeroes and discard by fallocate (recoverable)';
export const options = {
  'read-only': { type: 'boolean', description: 'open PATH read-only: a read-only device' },
  direct: { type: 'boolean', description: 'O_DIRECT: bypass the page cache (4096-byte logical blocks)' },
} as const satisfies DriverOptions;

export interface FileOptions {
  readOnly?: boolean;
  direct?: boolean;
  /** Callbacks in progress at once (default 16). */
  concurrency?: number;
}

interface FileState {
  fd: number;
  /** Reads, writes and fdatasyncs, through io_uring where the kernel offers it. */
  io: FileIo;
  /** --direct: aligned buffers for the transfers in progress. */
  bounce: Buffer[];
}

export function file(path: string, options: FileOptions = {}): Driver<FileState> {
  if (!path) throw new DriverError('EINVAL', 'usage: bdus run file PATH (a regular file or a block device)');
  const flags = (options.readOnly ? constants.O_RDONLY : constants.O_RDWR) | (options.direct ? constants.O_DIRECT : 0);
  let size: number;
  try {
    const fd = openSync(path, options.readOnly ? constants.O_RDONLY : constants.O_RDWR);
    const stat = fstatSync(fd);
    size = stat.isBlockDevice() ? Number(native.blockDeviceSize(fd)) : stat.size;
    closeSync(fd);
  } catch (error) {
    throw new DriverError((error as NodeJS.ErrnoException).code ?? 'EIO', `file: cannot open ${path}: ${(error as Error).message}`);
  }
  const concurrency = options.concurrency ?? 16;
  const blockSize = options.direct ? 4096 : 512;

  /** A transfer through an aligned buffer (O_DIRECT wants aligned memory; the request's may not be). */
  async function direct(state: FileState, buffer: Buffer, offset: number, writing: boolean): Promise<void> {
    const bounce = state.bounce.pop()!;
    try {
      const view = bounce.subarray(0, buffer.length);
      if (writing) buffer.copy(view);
      await (writing ? state.io.write(state.fd, view, offset) : state.io.read(state.fd, view, offset));
      if (!writing) view.copy(buffer);
    } finally {
      state.bounce.push(bounce);
    }
  }

  const driver: Driver<FileState> = {
    attributes: { size: size - (size % 4096), logicalBlockSize: blockSize, maxConcurrentCallbacks: concurrency },
    // Every instance opens the same file, and an fdatasync covers the writes of them all.
    laneSafe: true,

    initialize(ctx) {
      const fd = openSync(path, flags);
      const bounce: Buffer[] = [];
      if (options.direct) {
        const each = ctx.attributes.maxReadWriteSize;
        const pool = native.mapAnonymous(each * ctx.attributes.maxConcurrentCallbacks);
        for (let i = 0; i < ctx.attributes.maxConcurrentCallbacks; i++) bounce.push(pool.subarray(i * each, (i + 1) * each));
      }
      ctx.state = { fd, io: new FileIo(path), bounce };
    },

    terminate(ctx) {
      ctx.state.io.close();
      closeSync(ctx.state.fd);
    },

    read(buffer, offset, ctx) {
      return options.direct ? direct(ctx.state, buffer, offset, false) : ctx.state.io.read(ctx.state.fd, buffer, offset);
    },

    flush(ctx) {
      return ctx.state.io.datasync(ctx.state.fd);
    },

    extents(offset, length, ctx) {
      return holes(ctx.state.fd, offset, length, ctx.attributes.logicalBlockSize);
    },
  };
  if (options.readOnly) return driver;

  return {
    ...driver,

    write(data, offset, ctx) {
      return options.direct ? direct(ctx.state, data, offset, true) : ctx.state.io.write(ctx.state.fd, data, offset);
    },

    async writeZeros(offset, length, mayUnmap, ctx) {
      if (mayUnmap) return fallocate(ctx.state.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
      try {
        await fallocate(ctx.state.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') throw error;
        // tmpfs has no ZERO_RANGE: punch, then allocate again so later writes cannot hit ENOSPC.
        await fallocate(ctx.state.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
        await fallocate(ctx.state.fd, FALLOC_FL_KEEP_SIZE, offset, length);
      }
    },

    async discard(offset, length, ctx) {
      await fallocate(ctx.state.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    },

    // A file grows or shrinks with the device (the new range reads as zeros); a block device cannot.
    async resize(newSize, ctx) {
      if (fstatSync(ctx.state.fd).isBlockDevice()) throw new DriverError('EOPNOTSUPP', `${path} is a block device: its size is its own`);
      await ftruncateAsync(ctx.state.fd, newSize);
    },
  };
}

/**
 * [offset, offset + length) as data and holes, from SEEK_DATA/SEEK_HOLE. A hole's edges are
 * rounded inward to whole blocks (a block holding any data is data); where the file cannot say
 * (a block device, a filesystem without holes), everything is data.
 */
export function holes(fd: number, offset: number, length: number, block: number): Extent[] {
  const end = offset + length;
  const extents: Extent[] = [];
  let at = offset;
  while (at < end && extents.length < MAX_EXTENTS) {
    const data = native.seek(fd, at, false);
    if (data < 0 && data !== -ENXIO) return [{ length: end - offset }];
    const holeEnd = data < 0 ? end : Math.min(end, data);
    const holeLength = Math.floor((holeEnd - at) / block) * block;
    if (holeLength > 0) {
      extents.push({ length: holeLength, hole: true, zero: true });
      at += holeLength;
      continue;
    }
    const hole = native.seek(fd, at, true);
    const dataEnd = hole < 0 ? end : Math.min(end, Math.max(hole, at + block));
    const dataLength = Math.ceil((dataEnd - at) / block) * block;
    extents.push({ length: dataLength });
    at += dataLength;
  }
  return extents;
}

/** The command line's way in: `bdus run file PATH [--read-only] [--direct]` (and `bdus run loop PATH`). */
export default function fileFactory(args: readonly string[], values: DriverOptionValues = {}): Driver<FileState> {
  if (args.length !== 1) throw new DriverError('EINVAL', 'usage: bdus run file PATH [--read-only] [--direct]');
  return file(args[0]!, { readOnly: values['read-only'] === true, direct: values.direct === true });
}
