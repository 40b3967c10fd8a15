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
 * How chunks and patches move to and from the store is transfer.ts's; this decides which, when.
 *
 * The slots live in a CacheMemory (cache-memory.ts): on a recoverable device, a file the next
 * driver instance adopts if this one dies, so no acknowledged write is lost with it.
 */
import { DIRTY, WHOLE, type CacheMemory } from './cache-memory.js';
import { Slot, wholeNow } from './slot.js';
import type { ObjectStore } from './store.js';
import { ChunkTransfers, type CacheSettings } from './transfer.js';
import type { Volume } from './volume.js';

export type { CacheSettings } from './transfer.js';

export class ChunkCache {
  private readonly chunk: number;
  private readonly slots = new Map<number, Slot>();
  /** The dirty slots, the longest dirty first. */
  private readonly dirty = new Set<Slot>();
  /** Positions in the memory that hold no chunk. */
  private readonly free: number[] = [];
  private readonly capacity: number;
  /** How chunks move to and from the store. */
  private readonly transfers: ChunkTransfers;
  private readonly roomWaiters: Array<() => void> = [];
  private writingBack = 0;
  /** Where the last reads ended, to tell reads in order. */
  private readonly recentEnds: number[] = new Array(16).fill(-1);
  private recentAt = 0;

  constructor(
    store: ObjectStore,
    private readonly volume: Volume,
    private readonly memory: CacheMemory,
    private readonly settings: CacheSettings,
  ) {
    this.chunk = volume.chunkSize;
    this.capacity = memory.geometry.capacity;
    this.transfers = new ChunkTransfers(store, volume, memory, settings, {
      saved: (slot, version) => this.saved(slot, version),
      changed: () => this.wakeRoomWaiters(),
    });
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
    return this.each(offset, length, (index, from, _at, size) => (size === this.chunk ? this.zeroChunk(index) : this.writeChunk(index, from, this.transfers.zero.subarray(0, size))));
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
        await (range ? this.transfers.loadRange(slot, from, into.length) : this.transfers.load(slot));
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
    this.transfers.forget(index);
  }

  private apply(slot: Slot, from: number, data: Buffer): void {
    data.copy(slot.data, from);
    if (slot.known) {
      const bs = this.settings.blockSize;
      slot.known.fill(1, from / bs, (from + data.length) / bs);
      if (slot.known.indexOf(0) < 0) wholeNow(slot, this.memory);
    }
    slot.version++;
    this.memory.flags[slot.pos]! |= DIRTY;
    this.dirty.add(slot);
    this.touch(slot);
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
   * its write-back (a patch's PUT, or the whole chunk's); a quarter of the cache stays clean, for
   * reads.
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
      slot.saving = this.transfers.upload(slot).finally(() => {
        slot.saving = null;
        this.wakeRoomWaiters();
      });
      await slot.saving;
    }
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

  private readAhead(from: number): void {
    const last = Math.floor((from + this.settings.readahead - 1) / this.chunk);
    for (let index = Math.floor(from / this.chunk); index <= last && index < this.volume.map.length; index++) {
      if (this.slots.has(index) || this.readsAsZeros(index)) continue;
      const pos = this.free.pop() ?? this.evictClean();
      if (pos === undefined) return; // no room without waiting: read-ahead never waits
      this.transfers.load(this.newSlot(index, pos)).catch(() => undefined);
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

