/**
 * The s3 driver's chunk cache: a bounded write-back cache of whole chunks in memory, in front of
 * the volume's objects.
 *
 * A chunk in the cache is a slot: its bytes (or none, when it reads as zeros), which of its blocks
 * those bytes hold (a write to a chunk not read yet holds only what was written: the rest is
 * read from the store when it is needed, so partial writes coalesce in memory and a chunk is read
 * and rewritten once, not once per write), and how many writes it has had against how many the
 * store has. Writes are copied in and answered; the cache writes chunks back (a new object each,
 * named in the map: volume.ts) when half of it is dirty, when it needs room, and for flush, which
 * answers once a commit names every chunk written before it. Reads of chunks not cached are read
 * whole (one GET, straight into the slot) and kept; reading on in order reads `readahead` bytes
 * of chunks ahead.
 */
import { DriverError } from '../../driver/errors.js';
import { native } from '../../native.js';
import type { ObjectStore } from './store.js';
import { chunkName, type Volume } from './volume.js';

export interface CacheSettings {
  /** Bytes of chunks held at most. */
  bytes: number;
  /** Bytes of chunks read ahead of reads in order. */
  readahead: number;
  /** Store operations at once that need a buffer of their own (write-backs, merges). */
  connections: number;
  /** The logical block size: the unit in which a partly written chunk knows its bytes. */
  blockSize: number;
  timeoutMs: number;
  log: (line: string) => void;
}

class Slot {
  /** The chunk's bytes; null: it reads as zeros (no buffer held). */
  data: Buffer | null;
  /** Per block, 1 where `data` holds the chunk's bytes; null: it holds all of them. */
  known: Uint8Array | null;
  /** Writes so far, and how many of them the store has. Dirty while saved < version. */
  version = 0;
  saved = 0;
  /** A read of the chunk from the store, under way; `direct` if it reads into `data` itself. */
  loading: Promise<void> | null = null;
  direct = false;
  saving: Promise<void> | null = null;

  constructor(
    readonly index: number,
    data: Buffer | null,
    known: Uint8Array | null,
  ) {
    this.data = data;
    this.known = known;
  }
}

export class ChunkCache {
  private readonly chunk: number;
  private readonly slots = new Map<number, Slot>();
  /** The dirty slots, the longest dirty first. */
  private readonly dirty = new Set<Slot>();
  private readonly free: Buffer[] = [];
  private readonly memory: Buffer;
  private allocated = 0;
  private readonly capacity: number;
  /** Buffers for write-backs (a copy taken as the upload starts) and merges; their number bounds those at once. */
  private readonly spare: Buffer[] = [];
  private readonly spareWaiters: Array<(b: Buffer) => void> = [];
  private readonly roomWaiters: Array<() => void> = [];
  private readonly zero: Buffer;
  private writingBack = 0;
  private lastReadEnd = -1;

  constructor(
    private readonly store: ObjectStore,
    private readonly volume: Volume,
    private readonly settings: CacheSettings,
  ) {
    this.chunk = volume.chunkSize;
    this.capacity = Math.max(4, Math.floor(settings.bytes / this.chunk));
    // One mapping, touched as slots are first used: memory is taken as the cache fills.
    this.memory = native.mapAnonymous((this.capacity + settings.connections) * this.chunk);
    for (let i = 0; i < settings.connections; i++) this.spare.push(this.memory.subarray((this.capacity + i) * this.chunk, (this.capacity + i + 1) * this.chunk));
    this.zero = Buffer.alloc(this.chunk);
  }

  async read(buffer: Buffer, offset: number): Promise<void> {
    await this.each(offset, buffer.length, (index, from, at, length) => this.readChunk(index, from, buffer.subarray(at, at + length)));
    if (offset === this.lastReadEnd && this.settings.readahead > 0) this.readAhead(offset + buffer.length);
    this.lastReadEnd = offset + buffer.length;
  }

  write(data: Buffer, offset: number): Promise<void> {
    return this.each(offset, data.length, (index, from, at, length) => this.writeChunk(index, from, data.subarray(at, at + length)));
  }

  /** Zeros a range: whole chunks become zero slots (their objects go at the next commit). */
  zeroRange(offset: number, length: number): Promise<void> {
    return this.each(offset, length, (index, from, _at, size) => (size === this.chunk ? this.zeroChunk(index) : this.writeChunk(index, from, this.zero.subarray(0, size))));
  }

  /** Writes back every chunk written before this call, then commits: they are the volume's. */
  async flush(): Promise<void> {
    await Promise.all([...this.dirty].map((slot) => this.save(slot)));
    await this.volume.commit();
  }

  /** Writes back the chunks of one range (a FUA write), then commits. */
  async flushRange(offset: number, length: number): Promise<void> {
    const saves: Promise<void>[] = [];
    for (let index = Math.floor(offset / this.chunk); index * this.chunk < offset + length; index++) {
      const slot = this.slots.get(index);
      if (slot && slot.saved < slot.version) saves.push(this.save(slot));
    }
    await Promise.all(saves);
    await this.volume.commit();
  }

  /** Extents for NBD block status: chunks that read as zeros are holes. */
  extents(offset: number, length: number): Array<{ length: number; hole?: boolean; zero?: boolean }> {
    const extents: Array<{ length: number; hole?: boolean; zero?: boolean }> = [];
    for (let at = offset; at < offset + length && extents.length < 256; ) {
      const index = Math.floor(at / this.chunk);
      const end = Math.min(offset + length, (index + 1) * this.chunk);
      const slot = this.slots.get(index);
      const zero = slot ? slot.data === null : this.volume.map[index] === 0;
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

  private async readChunk(index: number, from: number, into: Buffer): Promise<void> {
    for (;;) {
      const slot = this.slots.get(index);
      if (slot) {
        this.touch(slot);
        if (slot.data === null) return void into.fill(0);
        if (slot.known === null || this.holds(slot.known, from, into.length)) return void slot.data.copy(into, 0, from, from + into.length);
        await this.load(slot);
        continue;
      }
      if (this.volume.map[index] === 0) return void into.fill(0);
      const buffer = await this.takeBuffer();
      if (this.slots.has(index)) {
        this.free.push(buffer);
        continue;
      }
      const fresh = new Slot(index, buffer, new Uint8Array(this.chunk / this.settings.blockSize));
      this.slots.set(index, fresh);
      await this.load(fresh);
    }
  }

  private async writeChunk(index: number, from: number, data: Buffer): Promise<void> {
    for (;;) {
      const slot = this.slots.get(index);
      // A read straight into the slot's buffer would overwrite what a write puts there now: wait.
      if (slot?.loading && slot.direct) {
        await slot.loading.catch(() => undefined);
        continue;
      }
      if (slot?.data) {
        this.apply(slot, from, data);
        return this.afterWrite();
      }
      const buffer = await this.takeBuffer();
      const again = this.slots.get(index);
      if (again !== slot || again?.data || again?.loading) {
        this.giveBack(buffer);
        continue;
      }
      let target = again;
      if (target) {
        buffer.fill(0); // a zero slot gets bytes: zeros, all known
        target.data = buffer;
      } else {
        // A chunk never written reads as zeros; one in the store is read later, if ever needed.
        const stored = this.volume.map[index] !== 0;
        if (!stored) buffer.fill(0);
        target = new Slot(index, buffer, stored ? new Uint8Array(this.chunk / this.settings.blockSize) : null);
        this.slots.set(index, target);
      }
      this.apply(target, from, data);
      return this.afterWrite();
    }
  }

  private async zeroChunk(index: number): Promise<void> {
    for (;;) {
      const slot = this.slots.get(index);
      if (slot?.loading) {
        await slot.loading.catch(() => undefined);
        continue;
      }
      if (!slot) {
        if (this.volume.map[index] === 0) return;
        const fresh = new Slot(index, null, null);
        fresh.version = 1;
        this.slots.set(index, fresh);
        this.dirty.add(fresh);
        return;
      }
      if (slot.data) this.giveBack(slot.data);
      slot.data = null;
      slot.known = null;
      slot.version++;
      this.dirty.add(slot);
      this.touch(slot);
      return;
    }
  }

  private apply(slot: Slot, from: number, data: Buffer): void {
    data.copy(slot.data!, from);
    if (slot.known) {
      const bs = this.settings.blockSize;
      slot.known.fill(1, from / bs, (from + data.length) / bs);
      if (slot.known.indexOf(0) < 0) slot.known = null;
    }
    slot.version++;
    this.dirty.add(slot);
    this.touch(slot);
  }

  private afterWrite(): void {
    if (this.dirty.size > this.capacity / 2) this.writeBack();
  }

  /** Starts writing back the longest-dirty chunks, `connections` at a time, until a quarter of the cache is dirty. */
  private writeBack(): void {
    for (const slot of this.dirty) {
      if (this.writingBack >= this.settings.connections || this.dirty.size - this.writingBack <= this.capacity / 4) return;
      if (slot.saving) continue;
      this.writingBack++;
      this.save(slot)
        .catch((error: unknown) => this.settings.log(`s3: writing back chunk ${slot.index} failed (${(error as Error).message}); it stays in the cache`))
        .finally(() => this.writingBack--);
    }
  }

  /** Makes the store hold at least the writes `slot` had when this was called. */
  private async save(slot: Slot): Promise<void> {
    const target = slot.version;
    while (slot.saved < target) {
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
    if (slot.known) await this.load(slot); // the rest of a partly written chunk, from the store
    const deadline = Date.now() + this.settings.timeoutMs;
    const body = await this.takeSpare();
    try {
      // What this upload saves is what the slot holds now: later writes make it dirty again.
      const version = slot.version;
      const zero = slot.data === null || slot.data.equals(this.zero);
      if (zero) this.volume.setChunk(slot.index, 0);
      else {
        slot.data!.copy(body);
        const entry = this.volume.nextEntry();
        await this.store.put(chunkName(slot.index, entry), body, deadline);
        this.volume.setChunk(slot.index, entry);
      }
      slot.saved = version;
      if (slot.saved === slot.version) this.dirty.delete(slot);
    } finally {
      this.giveSpare(body);
    }
  }

  /** Reads the chunk's bytes from the store into what the slot does not hold yet. */
  private load(slot: Slot): Promise<void> {
    if (slot.loading) return slot.loading;
    const fresh = slot.known !== null && slot.known.indexOf(1) < 0 && slot.data !== null;
    slot.direct = fresh;
    slot.loading = (fresh ? this.loadDirect(slot) : this.loadMerge(slot)).finally(() => {
      slot.loading = null;
      slot.direct = false;
      this.wakeRoomWaiters(); // a slot that was loading may be evicted now
    });
    return slot.loading;
  }

  private async loadDirect(slot: Slot): Promise<void> {
    const entry = this.volume.map[slot.index]!;
    if (entry === 0) slot.data!.fill(0);
    else {
      const got = await this.store.get(chunkName(slot.index, entry), slot.data!, Date.now() + this.settings.timeoutMs);
      this.checkGot(slot.index, got?.length);
    }
    slot.known = null;
  }

  private async loadMerge(slot: Slot): Promise<void> {
    const entry = this.volume.map[slot.index]!;
    const scratch = await this.takeSpare();
    try {
      if (entry === 0) scratch.fill(0);
      else this.checkGot(slot.index, (await this.store.get(chunkName(slot.index, entry), scratch, Date.now() + this.settings.timeoutMs))?.length);
      // Writes that landed while the chunk was read win: only the blocks still unknown take the store's bytes.
      const known = slot.known;
      if (slot.data && known) {
        const bs = this.settings.blockSize;
        for (let b = known.indexOf(0); b >= 0; b = known.indexOf(0, b + 1)) scratch.copy(slot.data, b * bs, b * bs, (b + 1) * bs);
      }
      slot.known = null;
    } finally {
      this.giveSpare(scratch);
    }
  }

  private checkGot(index: number, length: number | undefined): void {
    if (length !== this.chunk) throw new DriverError('EIO', `s3: chunk ${index}'s object is ${length === undefined ? 'missing' : `${length} bytes, not ${this.chunk}`}: the volume is damaged`);
  }

  private readAhead(from: number): void {
    const last = Math.floor((from + this.settings.readahead - 1) / this.chunk);
    for (let index = Math.floor(from / this.chunk); index <= last && index < this.volume.map.length; index++) {
      if (this.slots.has(index) || this.volume.map[index] === 0) continue;
      const buffer = this.free.pop() ?? (this.allocated < this.capacity ? this.newBuffer() : this.evictClean());
      if (!buffer) return; // no room without waiting: read-ahead never waits
      const slot = new Slot(index, buffer, new Uint8Array(this.chunk / this.settings.blockSize));
      this.slots.set(index, slot);
      this.load(slot).catch(() => undefined);
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

  private newBuffer(): Buffer {
    const i = this.allocated++;
    return this.memory.subarray(i * this.chunk, (i + 1) * this.chunk);
  }

  /** The least recently used chunk that the store has and nothing is using: its buffer. */
  private evictClean(): Buffer | null {
    for (const slot of this.slots.values()) {
      if (slot.data && slot.saved === slot.version && !slot.loading && !slot.saving) {
        this.slots.delete(slot.index);
        return slot.data;
      }
    }
    return null;
  }

  /** A buffer for a chunk: a free one, a new one while under the budget, or a clean chunk's; else waits for a write-back. */
  private async takeBuffer(): Promise<Buffer> {
    for (;;) {
      const buffer = this.free.pop() ?? (this.allocated < this.capacity ? this.newBuffer() : this.evictClean());
      if (buffer) return buffer;
      this.writeBack();
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
  }

  private giveBack(buffer: Buffer): void {
    this.free.push(buffer);
    this.wakeRoomWaiters();
  }

  private wakeRoomWaiters(): void {
    for (const wake of this.roomWaiters.splice(0)) wake();
  }

  private takeSpare(): Promise<Buffer> | Buffer {
    const buffer = this.spare.pop();
    return buffer ?? new Promise((resolve) => this.spareWaiters.push(resolve));
  }

  private giveSpare(buffer: Buffer): void {
    const waiter = this.spareWaiters.shift();
    if (waiter) waiter(buffer);
    else this.spare.push(buffer);
  }

  /** Dirty chunks now (for logs and tests). */
  get dirtyChunks(): number {
    return this.dirty.size;
  }
}
