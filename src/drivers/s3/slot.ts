/**
 * A cached chunk of the s3 driver, and what both the cache (cache.ts: which chunks, when) and
 * the transfers (transfer.ts: how they move to and from the store) ask of one.
 */
import { WHOLE, type CacheMemory } from './cache-memory.js';

/** A cached chunk: its place in the cache's memory, and what is under way on it. */
export class Slot {
  /** Writes so far, and how many of them the store has. Dirty while saved < version. */
  version = 0;
  saved = 0;
  /** A read of the chunk from the store, under way; `direct` if it reads into the slot itself. */
  loading: Promise<void> | null = null;
  direct = false;
  saving: Promise<void> | null = null;
  /** Zeroed whole while an upload of it was under way: that upload must not name its object. */
  dropped = false;
  /** Reads waiting for the slot's load, to copy from it: it is not evicted under them. */
  readers = 0;
  /** Every block of the chunk's patch is known here (or it has none): a patch made of the known blocks holds it. */
  patchIn = false;

  constructor(
    readonly index: number,
    readonly pos: number,
    readonly data: Buffer,
    /** Per block, 1 where the slot holds the chunk's bytes; null: all of them. */
    public known: Uint8Array | null,
  ) {}
}

/** The slot holds every block of its chunk now (in the memory too: an adopter trusts it). */
export function wholeNow(slot: Slot, memory: CacheMemory): void {
  memory.flags[slot.pos]! |= WHOLE;
  slot.known = null;
}

/** How many blocks `known` marks. */
export function blocksIn(known: Uint8Array): number {
  let n = 0;
  for (let b = known.indexOf(1); b >= 0; b = known.indexOf(1, b + 1)) n++;
  return n;
}

/** Whether every block `known` marks holds zeros (`zero`: a buffer of zeros, a block or longer). */
export function knownZeros(data: Buffer, known: Uint8Array, blockSize: number, zero: Buffer): boolean {
  const zeros = zero.subarray(0, blockSize);
  for (let b = known.indexOf(1); b >= 0; b = known.indexOf(1, b + 1)) if (!data.subarray(b * blockSize, (b + 1) * blockSize).equals(zeros)) return false;
  return true;
}
