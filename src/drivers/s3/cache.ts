/**
 * The s3 driver's chunk cache: a bounded write-back cache of whole chunks in memory, in front of
 * the volume's objects.
 *
 * A chunk in the cache is a slot: its bytes (or none, when it reads as zeros), which of its blocks
 * those bytes hold (a write to a chunk not read yet holds only what was written: the rest is
 * read from the store when it is needed, so partial writes coalesce in memory and a chunk is read
 * and rewritten once, not once per write), and how many writes it has had against how many the
 * store has. Writes are copied in and answered; the cache writes chunks back (a new object each,
 * named in the map: volume.ts) when 3/4 of it is dirty, when it needs room, and for flush, which
 * answers once a commit names every chunk written before it. Reads of chunks not cached are read
 * whole (one GET, straight into the slot) and kept; reading on in order reads `readahead` bytes
 * of chunks ahead. Zeroing a whole chunk (discard, write-zeroes) drops its slot and names no
 * object for it in the map at once.
 *
 * A chunk written in part writes back as a patch (patch.ts: its known blocks, in an object of
 * their own, over the chunk's object) while the patch stays small: a PUT of those blocks instead
 * of a GET and a PUT of the whole chunk. Past PATCH_SHARE of the chunk it is written back whole.
 *
 * The slots live in a CacheMemory (cache-memory.ts): on a recoverable device, a file the next
 * driver instance adopts if this one dies, so no acknowledged write is lost with it.
 */
import { DriverError } from '../../driver/errors.js';
import { DIRTY, Spares, WHOLE, type CacheMemory } from './cache-memory.js';
import { layOver, PatchCache, patchLimit, patchRoom, writePatch, type Patch } from './patch.js';
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

/** A cached chunk: its place in the cache's memory, and what is under way on it. */
class Slot {
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

export class ChunkCache {
  private readonly chunk: number;
  private readonly slots = new Map<number, Slot>();
  /** The dirty slots, the longest dirty first. */
  private readonly dirty = new Set<Slot>();
  /** Positions in the memory that hold no chunk. */
  private readonly free: number[] = [];
  private readonly capacity: number;
  /** Buffers for write-backs (a copy taken as the upload starts) and merges; their number bounds those at once. */
  private readonly spares: Spares;
  /** Buffers for patches read (their number bounds those reads at once). */
  private readonly patchSpares: Spares;
  private readonly patchCache: PatchCache;
  /** The most blocks a patch holds (0: no patches in this geometry). */
  private readonly patchLimit: number;
  private readonly roomWaiters: Array<() => void> = [];
  private readonly zero: Buffer;
  private writingBack = 0;
  /** Where the last reads ended, to tell reads in order. */
  private readonly recentEnds: number[] = new Array(16).fill(-1);
  private recentAt = 0;

  constructor(
    private readonly store: ObjectStore,
    private readonly volume: Volume,
    private readonly memory: CacheMemory,
    private readonly settings: CacheSettings,
  ) {
    this.chunk = volume.chunkSize;
    this.capacity = memory.geometry.capacity;
    this.spares = new Spares(settings.connections, this.chunk);
    this.patchSpares = new Spares(settings.connections, patchRoom(this.chunk));
    this.patchLimit = patchLimit(this.chunk, settings.blockSize);
    this.patchCache = new PatchCache((this.capacity * this.chunk) / 8);
    this.zero = Buffer.alloc(this.chunk);
    for (let pos = this.capacity - 1; pos >= 0; pos--) {
      const index = memory.index[pos]!;
      // A dead driver's dirty chunks are adopted, to be written back; its clean ones are let go.
      if (index >= 0 && memory.flags[pos]! & DIRTY) {
        const slot = new Slot(index, pos, memory.data(pos), memory.flags[pos]! & WHOLE ? null : memory.knownOf(pos));
        slot.version = 1;
        this.slots.set(index, slot);
        this.dirty.add(slot);
      } else {
        memory.index[pos] = -1;
        this.free.push(pos);
      }
    }
  }

  /** The dead driver's chunks this cache took on, to be written back. */
  get adopted(): number {
    return this.dirty.size;
  }

  async read(buffer: Buffer, offset: number): Promise<void> {
    // In order: it starts where a recent read ended (reads in flight at once end in any order).
    const inOrder = this.recentEnds.includes(offset);
    this.recentEnds[this.recentAt++ % this.recentEnds.length] = offset + buffer.length;
    await this.each(offset, buffer.length, (index, from, at, length) => this.readChunk(index, from, buffer.subarray(at, at + length), inOrder));
    if (inOrder && this.settings.readahead > 0) this.readAhead(offset + buffer.length);
  }

  write(data: Buffer, offset: number): Promise<void> {
    return this.each(offset, data.length, (index, from, at, length) => this.writeChunk(index, from, data.subarray(at, at + length)));
  }

  /** Zeros a range: whole chunks lose their slots and their objects (at the next commit). */
  zeroRange(offset: number, length: number): Promise<void> {
    return this.each(offset, length, (index, from, _at, size) => (size === this.chunk ? this.zeroChunk(index) : this.writeChunk(index, from, this.zero.subarray(0, size))));
  }

  /** Writes back every chunk written before this call, then commits: they are the volume's. */
  async flush(): Promise<void> {
    await Promise.all([...this.dirty].map((slot) => this.save(slot)));
    await this.volume.settle();
  }

  /** Writes back the chunks of one range (a FUA write), then commits. */
  async flushRange(offset: number, length: number): Promise<void> {
    const saves: Promise<void>[] = [];
    for (let index = Math.floor(offset / this.chunk); index * this.chunk < offset + length; index++) {
      const slot = this.slots.get(index);
      if (slot && slot.saved < slot.version) saves.push(this.save(slot));
    }
    await Promise.all(saves);
    await this.volume.settle();
  }

  /** Extents for NBD block status: chunks that read as zeros are holes. */
  extents(offset: number, length: number): Array<{ length: number; hole?: boolean; zero?: boolean }> {
    const extents: Array<{ length: number; hole?: boolean; zero?: boolean }> = [];
    for (let at = offset; at < offset + length && extents.length < 256; ) {
      const index = Math.floor(at / this.chunk);
      const end = Math.min(offset + length, (index + 1) * this.chunk);
      const zero = !this.slots.has(index) && this.readsAsZeros(index);
      const last = extents.at(-1);
      if (last && (last.hole === true) === zero) last.length += end - at;
      else extents.push(zero ? { length: end - at, hole: true, zero: true } : { length: end - at });
      at = end;
    }
    return extents;
  }

  /** Calls `fn` for each chunk's part of [offset, offset+length): chunk, offset in it, offset in the request, bytes. */
  private async each(offset: number, length: number, fn: (index: number, from: number, at: number, length: number) => Promise<void> | void): Promise<void> {
    const first = Math.floor(offset / this.chunk);
    const from = offset - first * this.chunk;
    if (from + length <= this.chunk) return fn(first, from, 0, length); // the common case: one chunk
    const parts: Array<Promise<void> | void> = [];
    for (let at = 0; at < length; ) {
      const index = Math.floor((offset + at) / this.chunk);
      const inChunk = offset + at - index * this.chunk;
      const size = Math.min(length - at, this.chunk - inChunk);
      parts.push(fn(index, inChunk, at, size));
      at += size;
    }
    await Promise.all(parts);
  }

  private async readChunk(index: number, from: number, into: Buffer, inOrder: boolean): Promise<void> {
    for (;;) {
      let slot = this.slots.get(index);
      let range = false;
      if (slot) {
        this.touch(slot);
        if (slot.known === null || this.holds(slot.known, from, into.length)) return void slot.data.copy(into, 0, from, from + into.length);
      } else {
        if (this.readsAsZeros(index)) return void into.fill(0);
        const pos = await this.takePosition();
        if (this.slots.has(index)) {
          this.giveBack(pos);
          continue;
        }
        slot = this.newSlot(index, pos);
        // A read out of order reads what it asks (a range request), not the chunk: a 4 KiB read
        // of a 1 MiB chunk would otherwise move 256 times the bytes. In order, the whole chunk.
        range = !inOrder;
      }
      slot.readers++;
      try {
        await (range ? this.loadRange(slot, from, into.length) : this.load(slot));
      } finally {
        if (--slot.readers === 0) this.wakeRoomWaiters(); // it may be evicted now
      }
    }
  }

  private async writeChunk(index: number, from: number, data: Buffer): Promise<void> {
    for (;;) {
      const slot = this.slots.get(index);
      // A read straight into the slot would overwrite what a write puts there now: wait for it.
      if (slot?.loading && slot.direct) {
        await slot.loading.catch(() => undefined);
        continue;
      }
      if (slot) {
        this.apply(slot, from, data);
        return this.afterWrite(slot, from + data.length);
      }
      const pos = await this.takePosition();
      if (this.slots.has(index)) {
        this.giveBack(pos);
        continue;
      }
      // A chunk in the store is read later, if ever needed.
      const fresh = this.newSlot(index, pos);
      this.apply(fresh, from, data);
      return this.afterWrite(fresh, from + data.length);
    }
  }

  /**
   * A slot for chunk `index` at `pos`, knowing none of its blocks yet. A chunk that reads as
   * zeros is no different: its unknown blocks are zeros when a read needs them (no store
   * access), and a chunk written whole, or in part as a patch, never fills a megabyte of zeros.
   */
  private newSlot(index: number, pos: number): Slot {
    const m = this.memory;
    const known = m.knownOf(pos);
    // What it knows is in place before the slot names the chunk (an adopter trusts it).
    known.fill(0);
    m.flags[pos] = 0;
    m.index[pos] = index;
    const slot = new Slot(index, pos, m.data(pos), known);
    this.slots.set(index, slot);
    return slot;
  }

  private async zeroChunk(index: number): Promise<void> {
    for (let slot = this.slots.get(index); slot?.loading; slot = this.slots.get(index)) await slot.loading.catch(() => undefined);
    const slot = this.slots.get(index);
    if (slot) {
      slot.dropped = true;
      this.slots.delete(index);
      this.dirty.delete(slot);
      this.memory.index[slot.pos] = -1;
      this.giveBack(slot.pos);
    }
    this.volume.setChunk(index, 0);
    this.patchCache.delete(index);
  }

  private apply(slot: Slot, from: number, data: Buffer): void {
    data.copy(slot.data, from);
    if (slot.known) {
      const bs = this.settings.blockSize;
      slot.known.fill(1, from / bs, (from + data.length) / bs);
      if (slot.known.indexOf(0) < 0) this.wholeNow(slot);
    }
    slot.version++;
    this.memory.flags[slot.pos]! |= DIRTY;
    this.dirty.add(slot);
    this.touch(slot);
  }

  private wholeNow(slot: Slot): void {
    this.memory.flags[slot.pos]! |= WHOLE;
    slot.known = null;
  }

  /**
   * A write that ends at the end of a chunk the slot holds whole (a stream of writes passing
   * through it: a file written, a journal, `sync` of a tree) starts that chunk's write-back now,
   * beside the writes that follow, instead of at the flush that will want it.
   */
  private afterWrite(slot: Slot, end: number): void {
    if (end === this.chunk && slot.known === null && !slot.saving && this.writingBack < this.settings.connections) this.startSave(slot);
    if (this.dirty.size > (this.capacity * 3) / 4) this.writeBack();
  }

  /**
   * Starts writing back the longest-dirty chunks, `connections` at a time, until 5/8 of the cache
   * is dirty. The more chunks stay dirty, the more writes land in a chunk already dirty and share
   * its write-back (a GET and a PUT of the whole chunk if it was written in part); a quarter of
   * the cache stays clean, for reads.
   */
  private writeBack(): void {
    for (const slot of this.dirty) {
      if (this.writingBack >= this.settings.connections || this.dirty.size - this.writingBack <= (this.capacity * 5) / 8) return;
      if (!slot.saving) this.startSave(slot);
    }
  }

  private startSave(slot: Slot): void {
    this.writingBack++;
    this.save(slot)
      .catch((error: unknown) => this.settings.log(`s3: writing back chunk ${slot.index} failed (${(error as Error).message}); it stays in the cache`))
      .finally(() => this.writingBack--);
  }

  /** Makes the store hold at least the writes `slot` had when this was called. */
  private async save(slot: Slot): Promise<void> {
    const target = slot.version;
    while (slot.saved < target && !slot.dropped) { // a slot zeroed whole has nothing left to save
      if (slot.saving) {
        await slot.saving;
        continue;
      }
      slot.saving = this.upload(slot).finally(() => {
        slot.saving = null;
        this.wakeRoomWaiters();
      });
      await slot.saving;
    }
  }

  private async upload(slot: Slot): Promise<void> {
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
      this.saved(slot, version);
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
        return this.saved(slot, version);
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
      this.saved(slot, version);
    } finally {
      this.spares.give(body);
    }
  }

  /** Reads the chunk's patch and lays it over what the slot does not know yet (one load at a time). */
  private absorbPatch(slot: Slot): Promise<void> {
    slot.loading = (async () => {
      const patch = await this.patchOf(slot.index);
      slot.patchIn = patch === null || !slot.known || layOver(patch, slot.data, slot.known, this.settings.blockSize);
      if (slot.known && slot.known.indexOf(0) < 0) this.wholeNow(slot);
    })().finally(() => {
      slot.loading = null;
      this.wakeRoomWaiters();
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

  private readsAsZeros(index: number): boolean {
    return this.volume.map[index] === 0 && this.volume.patches[index] === 0;
  }

  /** The store has the slot's writes up to `version`. */
  private saved(slot: Slot, version: number): void {
    slot.saved = version;
    if (slot.saved === slot.version) {
      this.memory.flags[slot.pos]! &= ~DIRTY;
      this.dirty.delete(slot);
    }
  }

  /** Reads the chunk's bytes from the store into what the slot does not hold yet. */
  private load(slot: Slot): Promise<void> {
    if (slot.loading) return slot.loading;
    const fresh = slot.known !== null && slot.known.indexOf(1) < 0;
    slot.direct = fresh;
    slot.loading = (fresh ? this.loadDirect(slot) : this.loadMerge(slot)).finally(() => {
      slot.loading = null;
      slot.direct = false;
      this.wakeRoomWaiters(); // a slot that was loading may be evicted now
    });
    return slot.loading;
  }

  /** Reads part of a chunk not read yet straight into its slot (a range request), and its patch over it. */
  private loadRange(slot: Slot, from: number, length: number): Promise<void> {
    slot.direct = true; // a write waits: the read lands in the slot itself
    slot.loading = (async () => {
      await this.withPatch(slot, this.getBase(slot.index, slot.data.subarray(from, from + length), from));
      const bs = this.settings.blockSize;
      slot.known?.fill(1, from / bs, (from + length) / bs);
      if (slot.known && slot.known.indexOf(0) < 0) this.wholeNow(slot);
    })().finally(() => {
      slot.loading = null;
      slot.direct = false;
      this.wakeRoomWaiters();
    });
    return slot.loading;
  }

  private async loadDirect(slot: Slot): Promise<void> {
    await this.withPatch(slot, this.getBase(slot.index, slot.data));
    this.wholeNow(slot);
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
      if (slot.known) this.wholeNow(slot);
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

  private readAhead(from: number): void {
    const last = Math.floor((from + this.settings.readahead - 1) / this.chunk);
    for (let index = Math.floor(from / this.chunk); index <= last && index < this.volume.map.length; index++) {
      if (this.slots.has(index) || this.readsAsZeros(index)) continue;
      const pos = this.free.pop() ?? this.evictClean();
      if (pos === undefined) return; // no room without waiting: read-ahead never waits
      this.load(this.newSlot(index, pos)).catch(() => undefined);
    }
  }

  private touch(slot: Slot): void {
    this.slots.delete(slot.index);
    this.slots.set(slot.index, slot);
  }

  private holds(known: Uint8Array, from: number, length: number): boolean {
    const bs = this.settings.blockSize;
    for (let b = from / bs; b < (from + length) / bs; b++) if (known[b] === 0) return false;
    return true;
  }

  /** The least recently used chunk that the store has and nothing is using: its position. */
  private evictClean(): number | undefined {
    for (const slot of this.slots.values()) {
      if (slot.saved === slot.version && !slot.loading && !slot.saving && slot.readers === 0) {
        this.slots.delete(slot.index);
        this.memory.index[slot.pos] = -1; // before its bytes change
        return slot.pos;
      }
    }
    return undefined;
  }

  /** A free position, or a clean chunk's; else waits for a write-back. */
  private async takePosition(): Promise<number> {
    for (;;) {
      const pos = this.free.pop() ?? this.evictClean();
      if (pos !== undefined) return pos;
      this.writeBack();
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
  }

  private giveBack(pos: number): void {
    this.free.push(pos);
    this.wakeRoomWaiters();
  }

  private wakeRoomWaiters(): void {
    for (const wake of this.roomWaiters.splice(0)) wake();
  }
}

function blocksIn(known: Uint8Array): number {
  let n = 0;
  for (let b = known.indexOf(1); b >= 0; b = known.indexOf(1, b + 1)) n++;
  return n;
}

/** Whether every block `known` marks holds zeros (`zero`: a buffer of zeros, a block or longer). */
function knownZeros(data: Buffer, known: Uint8Array, blockSize: number, zero: Buffer): boolean {
  const zeros = zero.subarray(0, blockSize);
  for (let b = known.indexOf(1); b >= 0; b = known.indexOf(1, b + 1)) if (!data.subarray(b * blockSize, (b + 1) * blockSize).equals(zeros)) return false;
  return true;
}
