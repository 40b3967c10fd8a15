/**
 * How the s3 driver's cached chunks move to and from the store: a slot's chunk read (whole,
 * straight into the slot; or the range a read asks, with the chunk's patch laid over it), and
 * written back (a patch of its known blocks, or the whole chunk: patch.ts says when). The cache
 * (cache.ts) decides which chunks move and when; these say how, and keep the buffers and the
 * patches lately written or read that the moves need.
 */
import { DriverError } from '../../driver/errors.js';
import { Spares, type CacheMemory } from './cache-memory.js';
import { layOver, PatchCache, patchLimit, patchRoom, writePatch, type Patch } from './patch.js';
import { blocksIn, knownZeros, wholeNow, type Slot } from './slot.js';
import type { ObjectStore } from './store.js';
import { chunkName, patchName, type Volume } from './volume.js';

export interface CacheSettings {
  /** Bytes of chunks read ahead of reads in order. */
  readahead: number;
  /** Store operations at once that need a buffer of their own (write-backs, merges). */
  connections: number;
  /** The logical block size: the unit in which a partly written chunk knows its bytes. */
  blockSize: number;
  timeoutMs: number;
  log: (line: string) => void;
}

/** What the cache hears from the transfers. */
export interface TransferHooks {
  /** The store has the slot's writes up to `version`. */
  saved(slot: Slot, version: number): void;
  /** A slot's load or upload ended: it may be evicted now. */
  changed(): void;
}

export class ChunkTransfers {
  /** A chunk of zeros. */
  readonly zero: Buffer;
  private readonly chunk: number;
  /** Buffers for write-backs (a copy taken as the upload starts) and merges; their number bounds those at once. */
  private readonly spares: Spares;
  /** Buffers for patches read (their number bounds those reads at once). */
  private readonly patchSpares: Spares;
  private readonly patchCache: PatchCache;
  /** The most blocks a patch holds (0: no patches in this geometry). */
  private readonly patchLimit: number;

  constructor(
    private readonly store: ObjectStore,
    private readonly volume: Volume,
    private readonly memory: CacheMemory,
    private readonly settings: CacheSettings,
    private readonly hooks: TransferHooks,
  ) {
    this.chunk = volume.chunkSize;
    this.zero = Buffer.alloc(this.chunk);
    this.spares = new Spares(settings.connections, this.chunk);
    this.patchSpares = new Spares(settings.connections, patchRoom(this.chunk));
    this.patchLimit = patchLimit(this.chunk, settings.blockSize);
    this.patchCache = new PatchCache((memory.geometry.capacity * this.chunk) / 8);
  }

  /** Chunk `index` has no patch any more (zeroed whole). */
  forget(index: number): void {
    this.patchCache.delete(index);
  }

  /** Writes the slot's chunk back: a patch of its known blocks while the patch stays small, else the whole chunk. */
  async upload(slot: Slot): Promise<void> {
    if (slot.known && this.patchLimit > 0) {
      while (slot.loading) await slot.loading.catch(() => undefined); // a range read lands in the slot itself
      if (slot.known && !slot.patchIn) await this.absorbPatch(slot);
      if (slot.known && slot.patchIn && blocksIn(slot.known) <= this.patchLimit) return this.uploadPatch(slot);
    }
    while (slot.known) await this.load(slot); // the rest of a partly written chunk, from the store (after a range read under way)
    const deadline = Date.now() + this.settings.timeoutMs;
    const body = await this.spares.take();
    try {
      if (slot.dropped) return;
      // What this upload saves is what the slot holds now: later writes make it dirty again.
      const version = slot.version;
      let entry = 0;
      if (!slot.data.equals(this.zero)) {
        slot.data.copy(body);
        entry = this.volume.nextEntry();
        await this.store.put(chunkName(slot.index, entry), body, deadline);
      }
      // Zeroed whole meanwhile: the map says zeros now, and this object is nobody's.
      if (slot.dropped) {
        if (entry !== 0) void this.store.delete(chunkName(slot.index, entry), deadline).catch(() => undefined);
        return;
      }
      this.volume.setChunk(slot.index, entry);
      this.patchCache.delete(slot.index);
      slot.patchIn = true; // it has none now
      this.hooks.saved(slot, version);
    } finally {
      this.spares.give(body);
    }
  }

  /** Writes back a chunk known in part as a patch of its known blocks (they hold its last patch's). */
  private async uploadPatch(slot: Slot): Promise<void> {
    const deadline = Date.now() + this.settings.timeoutMs;
    const body = await this.spares.take();
    try {
      // Zeroed whole; or read whole, or written past a patch's bound, while this waited: the next upload writes it whole.
      if (slot.dropped || !slot.known || blocksIn(slot.known) > this.patchLimit) return;
      const version = slot.version;
      if (this.volume.map[slot.index] === 0 && knownZeros(slot.data, slot.known, this.settings.blockSize, this.zero)) {
        // No object, and zeros over it (the patch's blocks among them): the chunk reads as zeros, with no object at all.
        this.volume.setChunk(slot.index, 0);
        this.patchCache.delete(slot.index);
        return this.hooks.saved(slot, version);
      }
      const length = writePatch(body, slot.data, slot.known, this.settings.blockSize);
      const entry = this.volume.nextEntry();
      await this.store.put(patchName(slot.index, entry), body.subarray(0, length), deadline);
      if (slot.dropped) {
        void this.store.delete(patchName(slot.index, entry), deadline).catch(() => undefined);
        return;
      }
      this.volume.setPatch(slot.index, entry);
      this.patchCache.set(slot.index, entry, body.subarray(0, length), this.chunk, patchName(slot.index, entry));
      this.hooks.saved(slot, version);
    } finally {
      this.spares.give(body);
    }
  }

  /** Reads the chunk's patch and lays it over what the slot does not know yet (one load at a time). */
  private absorbPatch(slot: Slot): Promise<void> {
    slot.loading = (async () => {
      const patch = await this.patchOf(slot.index);
      slot.patchIn = patch === null || !slot.known || layOver(patch, slot.data, slot.known, this.settings.blockSize);
      if (slot.known && slot.known.indexOf(0) < 0) wholeNow(slot, this.memory);
    })().finally(() => {
      slot.loading = null;
      this.hooks.changed();
    });
    return slot.loading;
  }

  /** The chunk's patch (from the patch cache, else the store); null if it has none. */
  private async patchOf(index: number): Promise<Patch | null> {
    const entry = this.volume.patches[index]!;
    if (entry === 0) return null;
    const cached = this.patchCache.get(index, entry);
    if (cached) return cached;
    const name = patchName(index, entry);
    const buffer = await this.patchSpares.take();
    try {
      const got = await this.store.get(name, buffer, Date.now() + this.settings.timeoutMs);
      if (!got) throw new DriverError('EIO', `s3: chunk ${index}'s patch is missing: the volume is damaged`);
      return this.patchCache.set(index, entry, buffer.subarray(0, got.length), this.chunk, name);
    } finally {
      this.patchSpares.give(buffer);
    }
  }

  /**
   * Reads the chunk's patch (if it has one the slot does not hold) beside `load`, a read of its
   * object; once both are in, `then` (which puts the object's bytes in place), then the patch
   * over what the slot does not know.
   */
  private async withPatch(slot: Slot, load: Promise<void>, then?: () => void): Promise<void> {
    if (slot.patchIn || this.volume.patches[slot.index] === 0) {
      slot.patchIn = true;
      await load;
      return then?.();
    }
    // Both settle before anything goes on: the object's read may be landing in a buffer given back after.
    const [patch, base] = await Promise.allSettled([this.patchOf(slot.index), load]);
    if (base.status === 'rejected') throw base.reason;
    if (patch.status === 'rejected') throw patch.reason;
    then?.();
    slot.patchIn = patch.value === null || !slot.known || layOver(patch.value, slot.data, slot.known, this.settings.blockSize);
  }

  /** Reads the chunk's bytes from the store into what the slot does not hold yet. */
  load(slot: Slot): Promise<void> {
    if (slot.loading) return slot.loading;
    const fresh = slot.known !== null && slot.known.indexOf(1) < 0;
    slot.direct = fresh;
    slot.loading = (fresh ? this.loadDirect(slot) : this.loadMerge(slot)).finally(() => {
      slot.loading = null;
      slot.direct = false;
      this.hooks.changed(); // a slot that was loading may be evicted now
    });
    return slot.loading;
  }

  /** Reads part of a chunk not read yet straight into its slot (a range request), and its patch over it. */
  loadRange(slot: Slot, from: number, length: number): Promise<void> {
    slot.direct = true; // a write waits: the read lands in the slot itself
    slot.loading = (async () => {
      await this.withPatch(slot, this.getBase(slot.index, slot.data.subarray(from, from + length), from));
      const bs = this.settings.blockSize;
      slot.known?.fill(1, from / bs, (from + length) / bs);
      if (slot.known && slot.known.indexOf(0) < 0) wholeNow(slot, this.memory);
    })().finally(() => {
      slot.loading = null;
      slot.direct = false;
      this.hooks.changed();
    });
    return slot.loading;
  }

  private async loadDirect(slot: Slot): Promise<void> {
    await this.withPatch(slot, this.getBase(slot.index, slot.data));
    wholeNow(slot, this.memory);
  }

  private async loadMerge(slot: Slot): Promise<void> {
    const scratch = await this.spares.take();
    try {
      await this.withPatch(slot, this.getBase(slot.index, scratch), () => {
        // Writes that landed while the chunk was read win: only the blocks still unknown take the store's bytes (the patch's go over them).
        const known = slot.known;
        const bs = this.settings.blockSize;
        if (known) for (let b = known.indexOf(0); b >= 0; b = known.indexOf(0, b + 1)) scratch.copy(slot.data, b * bs, b * bs, (b + 1) * bs);
      });
      if (slot.known) wholeNow(slot, this.memory);
    } finally {
      this.spares.give(scratch);
    }
  }

  /** Reads `into.length` bytes of chunk `index`'s object from `from` (zeros if it has none). */
  private async getBase(index: number, into: Buffer, from?: number): Promise<void> {
    const entry = this.volume.map[index]!;
    if (entry === 0) return void into.fill(0);
    const got = await this.store.get(chunkName(index, entry), into, Date.now() + this.settings.timeoutMs, from);
    if (got?.length !== into.length) {
      throw new DriverError('EIO', `s3: chunk ${index}'s object is ${got === null ? 'missing' : `${got.length} bytes, not ${into.length}`}: the volume is damaged`);
    }
  }
}
