/**
 * The cow filter's overlay on disk (src/filters/cow.ts has the rules), and what `bdus cow` does
 * with one while no driver holds it: commit it into a base file or block device, or discard it.
 */
import { closeSync, constants, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { DriverError } from '../driver/errors.js';
import { native } from '../native.js';

/** What a map byte says about its block. */
export const Where = { BASE: 0, OVERLAY: 1, ZERO: 2 } as const;
export type Where = (typeof Where)[keyof typeof Where];

export const MAGIC = 'bdus-cow-overlay-1\n';
/** The map file: a header, then a byte per block. */
export const MAP_HEADER = 64;

export interface OverlayHeader {
  readonly block: number;
  readonly size: number;
}

export function mapPath(overlay: string): string {
  return `${overlay}.map`;
}

export function encodeHeader(header: OverlayHeader): Buffer {
  const buffer = Buffer.alloc(MAP_HEADER);
  buffer.write(MAGIC, 0, 'latin1');
  buffer.writeUInt32LE(header.block, 32);
  buffer.writeBigUInt64LE(BigInt(header.size), 40);
  return buffer;
}

export function decodeHeader(buffer: Buffer, path: string): OverlayHeader {
  if (buffer.length < MAP_HEADER || buffer.toString('latin1', 0, MAGIC.length) !== MAGIC) {
    throw new DriverError('EINVAL', `${path} is not a bdus cow overlay map`);
  }
  return { block: buffer.readUInt32LE(32), size: Number(buffer.readBigUInt64LE(40)) };
}

export interface Overlay {
  data: number;
  map: number;
  /** A byte per block, as in the map file. */
  where: Uint8Array;
}

/** Opens (or creates) an overlay for a device of `size` bytes, locked for this process. */
export function openOverlay(path: string, size: number, block: number): Overlay {
  const data = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
  if (!native.tryLock(data)) {
    closeSync(data);
    throw new DriverError('EBUSY', `cow: the overlay ${path} is in use by another driver (or bdus cow)`);
  }
  const map = openSync(mapPath(path), constants.O_RDWR | constants.O_CREAT, 0o600);
  const blocks = Math.ceil(size / block);
  const header = Buffer.alloc(MAP_HEADER);
  if (fstatSync(map).size === 0) {
    ftruncateSync(data, size);
    ftruncateSync(map, MAP_HEADER + blocks);
    writeSync(map, encodeHeader({ block, size }), 0, MAP_HEADER, 0);
  } else {
    readSync(map, header, 0, MAP_HEADER, 0);
    const found = decodeHeader(header, mapPath(path));
    if (found.block !== block || found.size !== size) {
      closeSync(map);
      closeSync(data);
      throw new DriverError(
        'EINVAL',
        `cow: the overlay ${path} was made for a ${found.size}-byte device in ${found.block}-byte blocks, not ${size} in ${block}`,
      );
    }
  }
  const where = new Uint8Array(blocks);
  readSync(map, where, 0, blocks, MAP_HEADER);
  return { data, map, where };
}

/** Takes an existing overlay for `bdus cow`: locked, or an error saying who has it. */
function takeOverlay(path: string): { data: number; map: number; header: OverlayHeader } {
  let data: number;
  try {
    data = openSync(path, constants.O_RDWR);
  } catch (error) {
    throw new DriverError((error as NodeJS.ErrnoException).code ?? 'EIO', `no cow overlay at ${path}: ${(error as Error).message}`);
  }
  if (!native.tryLock(data)) {
    closeSync(data);
    throw new DriverError('EBUSY', `the overlay ${path} is in use by a driver: destroy its device (or let it finish) first`);
  }
  const map = openSync(mapPath(path), constants.O_RDONLY);
  const buffer = Buffer.alloc(MAP_HEADER);
  readSync(map, buffer, 0, MAP_HEADER, 0);
  return { data, map, header: decodeHeader(buffer, mapPath(path)) };
}

/**
 * Writes the overlay's blocks into `base` (a file or block device of the device's size), then
 * removes the overlay: the base then holds what the device held. Blocks the overlay zeroed are
 * written as zeros. Safe to run again if interrupted (the overlay is removed only at the end).
 * Returns the blocks written.
 */
export function commitOverlay(path: string, base: string): number {
  const { data, map, header } = takeOverlay(path);
  let written = 0;
  try {
    const target = openSync(base, constants.O_RDWR);
    try {
      const stat = fstatSync(target);
      const size = stat.isBlockDevice() ? Number(native.blockDeviceSize(target)) : stat.size;
      if (size < header.size) throw new DriverError('EINVAL', `${base} has ${size} bytes; the overlay is of a ${header.size}-byte device`);
      const blocks = Math.ceil(header.size / header.block);
      const where = Buffer.alloc(blocks);
      readSync(map, where, 0, blocks, MAP_HEADER);
      const buffer = Buffer.alloc(header.block);
      for (let b = 0; b < blocks; b++) {
        if (where[b] === Where.BASE) continue;
        const length = Math.min(header.block, header.size - b * header.block);
        if (where[b] === Where.OVERLAY) readFully(data, buffer, length, b * header.block);
        else buffer.fill(0);
        for (let done = 0; done < length; ) done += writeSync(target, buffer, done, length - done, b * header.block + done);
        written++;
      }
      fsyncSync(target);
    } finally {
      closeSync(target);
    }
  } finally {
    closeSync(map);
    closeSync(data);
  }
  removeOverlayFiles(path);
  return written;
}

/** Throws the overlay's changes away (refused while a driver holds it). */
export function discardOverlay(path: string): void {
  const { data, map } = takeOverlay(path);
  closeSync(map);
  closeSync(data);
  removeOverlayFiles(path);
}

function removeOverlayFiles(path: string): void {
  rmSync(mapPath(path), { force: true });
  rmSync(path, { force: true });
}

function readFully(fd: number, buffer: Buffer, length: number, position: number): void {
  for (let done = 0; done < length; ) {
    const n = readSync(fd, buffer, done, length - done, position + done);
    if (n === 0) throw new DriverError('EIO', 'the overlay is shorter than its device');
    done += n;
  }
}
