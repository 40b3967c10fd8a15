/**
 * cow: copy-on-write. Writes go to an overlay file; the driver below (the base) is only read, so
 * it stays untouched and may be read-only (a golden image, a file opened --read-only).
 *
 *   bdus run file base.img --read-only --filter cow:overlay=/var/tmp/o
 *   bdus cow commit /var/tmp/o base.img     # later, with the device gone: into the base
 *   bdus cow discard /var/tmp/o             # or throw the changes away
 *
 * The device is cut into blocks (`block`, default 64 KiB). The overlay is two files: OVERLAY, a
 * sparse file of the device's size holding the blocks written, and OVERLAY.map, a header and one
 * byte per block: 0 the block is the base's, 1 it is in OVERLAY, 2 it reads as zeros (discarded
 * or write-zeroed whole). The first write to a block copies it up: the base's block is read,
 * the new data laid over it, the whole block written to OVERLAY, and only then does the map say
 * 1. Concurrent first writes to one block take turns; later writes go straight to OVERLAY.
 * Flush is fdatasync of OVERLAY, then of the map.
 *
 * Recoverable: everything it knows is in the two files, written before a request is answered, so
 * a driver killed at any point leaves what a new one needs (a write it had not answered is done
 * again by the next driver, and redoing a copy-up is harmless). Hot swap: the next driver opens
 * the same overlay. Only one driver holds it at a time (an flock, released by the kernel when a
 * driver dies). Power loss: a flush makes every earlier write durable; a block first written
 * since the last flush may read as zeros after a crash of the machine, not only as old or new
 * data (the map may reach the disk before the block). Journaling filesystems never rely on
 * unflushed blocks, but a raw user of the device should flush.
 */
import { closeSync } from 'node:fs';
import type { Context, Driver, Extent } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { Filter } from '../filter/filter.js';
import { layer } from '../filter/filter.js';
import { BlockTurns } from '../filter/turns.js';
import type { Parameters } from '../filter/parameters.js';
import { fallocate } from '../native.js';
import { MAP_HEADER, openOverlay, Where, type Overlay } from './cow-overlay.js';
import { readInto } from '../driver/read-data.js';
import { FileIo } from '../drivers/file-io.js';

export const description = 'copy-on-write: writes go to an overlay file, the driver below is only read (recoverable)';

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

export const parameters = {
  overlay: { type: 'string', description: 'the overlay file (OVERLAY and OVERLAY.map; created if absent)', required: true },
  block: { type: 'size', description: 'the copy-up unit, a power of two from 4K (default 64K; fixed at creation)' },
} as const satisfies Parameters;

export interface CowOptions {
  overlay: string;
  block?: number;
}

export default function cow(options: CowOptions): Filter {
  if (!options?.overlay) throw new DriverError('EINVAL', 'filter cow: needs overlay=PATH');
  const block = options.block ?? 64 << 10;
  if (block < 4096 || (block & (block - 1)) !== 0) throw new DriverError('EINVAL', `filter cow: block=${block} must be a power of two from 4096`);

  return <State>(next: Driver<State>): Driver<State> => {
    if (!next.read) throw new DriverError('EINVAL', 'filter cow: the driver below cannot be read');
    let o: Overlay | undefined;
    /** The overlay's transfers and fdatasyncs, as the file driver makes them (io_uring, or at once in memory). */
    let io: FileIo | undefined;

    const turns = new BlockTurns();
    const turn = (b: number, fn: () => Promise<void>) => turns.run(b, fn);

    /** The block's byte in the map; its turn (BlockTurns) keeps two of one block from crossing. */
    async function setWhere(b: number, value: Where): Promise<void> {
      o!.where[b] = value;
      await io!.write(o!.map, o!.where.subarray(b, b + 1), MAP_HEADER + b);
    }

    function transfer(fd: number, buffer: Buffer, offset: number, writing: boolean): Promise<void> | void {
      return writing ? io!.write(fd, buffer, offset) : io!.read(fd, buffer, offset);
    }

    /** Writes `data` at `offset` within block `b`, copying the block up first if it is not in the overlay. */
    async function writeInBlock(data: Buffer, offset: number, b: number, ctx: Context<State>): Promise<void> {
      if (o!.where[b] === Where.OVERLAY && !turns.has(b)) return transfer(o!.data, data, offset, true);
      await turn(b, async () => {
        if (o!.where[b] === Where.OVERLAY) return transfer(o!.data, data, offset, true);
        const start = b * block;
        const length = Math.min(block, ctx.attributes.size - start);
        if (data.length < length) {
          const whole = Buffer.alloc(length);
          if (o!.where[b] === Where.BASE) await readInto(next.read!(whole, start, ctx), whole);
          data.copy(whole, offset - start);
          await transfer(o!.data, whole, start, true);
        } else {
          await transfer(o!.data, data, offset, true);
        }
        await setWhere(b, Where.OVERLAY);
      });
    }

    /** Zeros [offset, offset + size): whole blocks become ZERO (their space freed), partial ones are written. */
    async function zero(offset: number, size: number, ctx: Context<State>): Promise<void> {
      for (let at = offset; at < offset + size; ) {
        const b = Math.floor(at / block);
        const end = Math.min(offset + size, (b + 1) * block, ctx.attributes.size);
        if (at === b * block && (end === (b + 1) * block || end === ctx.attributes.size)) {
          await turn(b, async () => {
            const was = o!.where[b];
            if (was === Where.ZERO) return;
            await setWhere(b, Where.ZERO);
            // The map says zeros first: a driver killed before the punch leaves data nobody reads.
            if (was === Where.OVERLAY) await fallocate(o!.data, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, end - at);
          });
        } else {
          await writeInBlock(Buffer.alloc(end - at), at, b, ctx);
        }
        at = end;
      }
    }

    return layer(
      next,
      {
        async initialize(ctx) {
          await next.initialize?.(ctx);
          try {
            o = openOverlay(options.overlay, ctx.attributes.size, block);
            io = new FileIo(options.overlay, 'cow: the overlay is shorter than the device');
          } catch (error) {
            await next.terminate?.(ctx);
            throw error;
          }
        },
        async terminate(ctx) {
          try {
            await io!.datasync(o!.data);
            await io!.datasync(o!.map);
          } finally {
            io!.close();
            closeSync(o!.map);
            closeSync(o!.data);
            await next.terminate?.(ctx);
          }
        },
        async read(buffer, offset, ctx) {
          // Runs of blocks in one place are read with one call.
          for (let at = offset; at < offset + buffer.length; ) {
            const b = Math.floor(at / block);
            const here = o!.where[b]!;
            let end = Math.min(offset + buffer.length, (b + 1) * block);
            while (end < offset + buffer.length && o!.where[Math.floor(end / block)] === here) end = Math.min(offset + buffer.length, end + block);
            const piece = buffer.subarray(at - offset, end - offset);
            if (here === Where.OVERLAY) await transfer(o!.data, piece, at, false);
            else if (here === Where.ZERO) piece.fill(0);
            else await readInto(next.read!(piece, at, ctx), piece);
            at = end;
          }
        },
        async write(data, offset, ctx) {
          for (let at = offset; at < offset + data.length; ) {
            const b = Math.floor(at / block);
            const end = Math.min(offset + data.length, (b + 1) * block);
            await writeInBlock(data.subarray(at - offset, end - offset), at, b, ctx);
            at = end;
          }
        },
        writeZeros: (offset, size, _mayUnmap, ctx) => zero(offset, size, ctx),
        discard: (offset, size, ctx) => zero(offset, size, ctx),
        async flush() {
          await io!.datasync(o!.data);
          await io!.datasync(o!.map);
        },
        extents(offset, size) {
          const extents: Extent[] = [];
          for (let at = offset; at < offset + size; ) {
            const b = Math.floor(at / block);
            const end = Math.min(offset + size, (b + 1) * block);
            const zeroed = o!.where[b] === Where.ZERO;
            const last = extents[extents.length - 1];
            if (last && (last.zero ?? false) === zeroed) extents[extents.length - 1] = { ...last, length: last.length + end - at };
            else extents.push(zeroed ? { length: end - at, hole: true, zero: true } : { length: end - at });
            at = end;
          }
          return extents;
        },
      },
      // The base's writes, FUA writes and write-sames would bypass the overlay: the filter's own
      // write stands for all of them (bdus emulates FUA as write and flush, write-same as writes).
      { provides: ['write', 'writeZeros', 'discard', 'flush', 'extents'], removes: ['fuaWrite', 'writeSame', 'secureErase', 'resize'] },
    );
  };
}
