/**
 * A chunk's patch: the blocks of a chunk written since its object was, kept in an object of their
 * own so that a few small writes to a chunk the cache does not hold cost a PUT of those blocks,
 * not a GET and a PUT of the whole chunk. A chunk reads as its object (or zeros, without one)
 * with its patch over it. Patches are cumulative (a chunk has one: the next holds the last one's
 * blocks too) and bounded (PATCH_SHARE of the chunk): past that the chunk is written back whole
 * and its patch goes.
 *
 * Layout: 'bdusPTCH'; the block size (u32, little-endian); the blocks per chunk (u32); a byte per
 * block (1: in the patch); zeros to a multiple of 8 bytes; then the blocks in the patch, in order.
 * The block size is the device's logical block size when it was written: a later device with
 * another reads it all the same.
 */
import { DriverError } from '../../driver/errors.js';

const MAGIC = 'bdusPTCH';
const ALIGN = 8;
/** The most of a chunk a patch holds: beyond it, a write-back of the whole chunk costs less than patches that grow. */
export const PATCH_SHARE = 1 / 8;
/** Fewer blocks per chunk than this: no patches (a chunk of a few blocks is as cheap to write whole). */
const MIN_BLOCKS = 16;

function headerBytes(blocks: number): number {
  return Math.ceil((16 + blocks) / ALIGN) * ALIGN;
}

/** How many blocks a patch of a chunk holds at most (0: this geometry has no patches). */
export function patchLimit(chunkSize: number, blockSize: number): number {
  const blocks = chunkSize / blockSize;
  return blocks < MIN_BLOCKS ? 0 : Math.floor(blocks * PATCH_SHARE);
}

/** Room for any patch of a chunk, whatever block size it was written with. */
export function patchRoom(chunkSize: number): number {
  return headerBytes(chunkSize / 512) + Math.floor(chunkSize * PATCH_SHARE);
}

export interface Patch {
  readonly blockSize: number;
  /** Per block, 1 if the patch holds it. */
  readonly present: Uint8Array;
  /** The blocks it holds, in order. */
  readonly data: Buffer;
}

/** Reads a patch object of a chunk of `chunkSize` bytes. */
export function parsePatch(bytes: Buffer, chunkSize: number, name: string): Patch {
  const damaged = (why: string) => new DriverError('EIO', `s3: ${name} ${why}: the volume is damaged`);
  if (bytes.length < 16 || bytes.toString('latin1', 0, 8) !== MAGIC) throw damaged('is not a patch');
  const blockSize = bytes.readUInt32LE(8);
  const blocks = bytes.readUInt32LE(12);
  if (!(blockSize >= 512) || blockSize * blocks !== chunkSize) throw damaged(`has a bad geometry (${blocks} blocks of ${blockSize} bytes)`);
  const present = new Uint8Array(bytes.buffer, bytes.byteOffset + 16, blocks);
  let count = 0;
  for (let b = 0; b < blocks; b++) count += present[b]!;
  const data = bytes.subarray(headerBytes(blocks));
  if (data.length !== count * blockSize) throw damaged(`holds ${data.length} bytes for ${count} blocks`);
  return { blockSize, present, data };
}

/**
 * Writes into `into` a patch of the blocks `known` marks (1) from `chunk`; returns its length.
 * `into` has room for it: a chunk's bytes, when at most patchLimit blocks are marked.
 */
export function writePatch(into: Buffer, chunk: Buffer, known: Uint8Array, blockSize: number): number {
  const blocks = known.length;
  const header = headerBytes(blocks);
  into.write(MAGIC, 0, 'latin1');
  into.writeUInt32LE(blockSize, 8);
  into.writeUInt32LE(blocks, 12);
  into.fill(0, 16, header);
  into.set(known, 16);
  let at = header;
  for (let b = known.indexOf(1); b >= 0; b = known.indexOf(1, b + 1)) {
    chunk.copy(into, at, b * blockSize, (b + 1) * blockSize);
    at += blockSize;
  }
  return at;
}

/**
 * Lays a patch over a chunk's bytes where `known` says they are not known yet (what is known is
 * newer: written since, or already laid over), and marks the blocks it covers whole as known.
 * Returns whether every byte of the patch is in known blocks now (it is absorbed: a patch made
 * from the known blocks holds it).
 */
export function layOver(patch: Patch, chunk: Buffer, known: Uint8Array, blockSize: number): boolean {
  const pbs = patch.blockSize;
  let at = 0;
  let absorbed = true;
  for (let p = 0; p < patch.present.length; p++) {
    if (patch.present[p] === 0) continue;
    const start = p * pbs;
    const end = start + pbs;
    for (let b = Math.floor(start / blockSize); b * blockSize < end; b++) {
      if (known[b] === 1) continue;
      const from = Math.max(start, b * blockSize);
      const to = Math.min(end, (b + 1) * blockSize);
      patch.data.copy(chunk, from, at + (from - start), at + (to - start));
      if (from === b * blockSize && to === (b + 1) * blockSize) known[b] = 1;
      else absorbed = false;
    }
    at += pbs;
  }
  return absorbed;
}

/**
 * The patches this driver wrote or read lately, by chunk, up to a number of bytes: a read of a
 * chunk with a patch, or the next write-back of its patch, finds it here instead of in the store.
 */
export class PatchCache {
  private readonly patches = new Map<number, { entry: number; patch: Patch }>();
  private bytes = 0;

  constructor(private readonly budget: number) {}

  get(index: number, entry: number): Patch | undefined {
    const hit = this.patches.get(index);
    if (hit?.entry !== entry) return undefined;
    this.patches.delete(index); // most recent last
    this.patches.set(index, hit);
    return hit.patch;
  }

  /** Keeps a copy of a patch object's bytes, parsed. */
  set(index: number, entry: number, bytes: Buffer, chunkSize: number, name: string): Patch {
    const patch = parsePatch(Buffer.from(bytes), chunkSize, name);
    this.delete(index);
    this.patches.set(index, { entry, patch });
    this.bytes += patch.data.length + patch.present.length;
    for (const [old] of this.patches) {
      if (this.bytes <= this.budget) break;
      this.delete(old);
    }
    return patch;
  }

  delete(index: number): void {
    const old = this.patches.get(index);
    if (!old) return;
    this.patches.delete(index);
    this.bytes -= old.patch.data.length + old.patch.present.length;
  }
}
