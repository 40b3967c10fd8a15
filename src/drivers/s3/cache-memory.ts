/**
 * The memory of the s3 driver's cache: the chunk map and the cached chunks with what the driver
 * knows about each (which chunk, which of its blocks it holds, whether the store has it), all in
 * one mapping.
 *
 * On a recoverable device that mapping is a file in the device's run-time directory (tmpfs), so
 * a driver that dies (SIGKILL, a crash) leaves its cache to the next driver instance of the same
 * device, which adopts it: the writes it had acknowledged but not flushed are written back then,
 * not lost. A store of the process's memory lives in the page cache, which a killed process does
 * not take with it; the order of the stores below makes a half-done change harmless (a chunk's
 * bytes are in place before its slot names it, a slot stops naming a chunk before its bytes
 * change), and what a killed driver was doing when it died was not answered: the kernel sends
 * it again. Otherwise the mapping is anonymous memory.
 *
 * Layout (every part page-aligned): a header; the map (8 bytes per chunk for its object, then 8
 * for its patch); per slot, its chunk
 * (8 bytes; -1: free), flags (1 byte) and a byte per block (1: the slot holds it); the slots'
 * bytes.
 */
import { closeSync, ftruncateSync, mkdirSync, openSync, readSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { native } from '../../native.js';

export const DIRTY = 1;
/** The slot holds every block of its chunk (its per-block bytes say nothing then). */
export const WHOLE = 2;

const MAGIC = 'bdus-s3-cache-2';
const HEADER = 4096;
const PAGE = 4096;
/** Header fields (float64s after the magic and the volume's tag). */
const TAG_BYTES = 2048;
const F_EPOCH = 0;
const F_CHUNK = 1;
const F_CAPACITY = 2;
const F_BLOCKS = 3;
const F_MAP = 4;

export interface Geometry {
  /** What volume this is: a file made for another is not adopted. */
  tag: string;
  chunkSize: number;
  capacity: number;
  blocksPerChunk: number;
  mapLength: number;
}

const round = (n: number) => Math.ceil(n / PAGE) * PAGE;

function sizes(g: Geometry) {
  const map = HEADER;
  const index = map + round(g.mapLength * 16);
  const flags = index + round(g.capacity * 8);
  const known = flags + round(g.capacity);
  const data = known + round(g.capacity * g.blocksPerChunk);
  return { map, index, flags, known, data, total: data + g.capacity * g.chunkSize };
}

export class CacheMemory {
  /** The volume's map: each chunk's object, then each chunk's patch. */
  readonly map: Float64Array;
  readonly index: Float64Array;
  readonly flags: Uint8Array;
  readonly known: Uint8Array;
  private readonly fields: Float64Array;
  private readonly dataAt: number;

  private constructor(
    private readonly memory: Buffer,
    readonly geometry: Geometry,
    /** The file behind the memory, if any. */
    readonly path: string | undefined,
  ) {
    const at = sizes(geometry);
    const view = <T>(Type: new (b: ArrayBuffer, o: number, n: number) => T, offset: number, n: number) => new Type(memory.buffer as ArrayBuffer, memory.byteOffset + offset, n);
    this.fields = view(Float64Array, 1024, 16);
    this.map = view(Float64Array, at.map, 2 * geometry.mapLength);
    this.index = view(Float64Array, at.index, geometry.capacity);
    this.flags = view(Uint8Array, at.flags, geometry.capacity);
    this.known = view(Uint8Array, at.known, geometry.capacity * geometry.blocksPerChunk);
    this.dataAt = at.data;
  }

  /** Memory that dies with the process. */
  static anonymous(geometry: Geometry): CacheMemory {
    const memory = new CacheMemory(native.mapAnonymous(sizes(geometry).total), geometry, undefined);
    memory.index.fill(-1);
    return memory;
  }

  /**
   * Memory in `path`: the cache a dead driver left there, if it is this volume's and no other
   * writer took the volume since (it was the head's epoch's; or the one before, when the head
   * says this device took it last: a driver that died between taking the volume and marking its
   * cache), with its geometry; else a new one.
   */
  static file(path: string, geometry: Geometry, epoch: number, takenByThisDevice: boolean): { memory: CacheMemory; adopted: boolean } {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const fd = openSync(path, 'a+', 0o600);
    try {
      const left = CacheMemory.read(fd);
      const ours = left !== null && (left.epoch === epoch || (takenByThisDevice && left.epoch === epoch - 1));
      if (left && ours && left.tag === geometry.tag && left.geometry.mapLength === geometry.mapLength) {
        return { memory: new CacheMemory(native.mapShared(fd, sizes(left.geometry).total), left.geometry, path), adopted: true };
      }
      ftruncateSync(fd, 0);
      ftruncateSync(fd, sizes(geometry).total);
      const memory = new CacheMemory(native.mapShared(fd, sizes(geometry).total), geometry, path);
      memory.index.fill(-1);
      memory.memory.write(MAGIC, 0, 'latin1');
      memory.memory.write(geometry.tag.slice(0, TAG_BYTES - 64), 64, 'utf8');
      memory.fields.set([-1, geometry.chunkSize, geometry.capacity, geometry.blocksPerChunk, geometry.mapLength]);
      return { memory, adopted: false };
    } finally {
      closeSync(fd); // the mapping keeps the file's pages
    }
  }

  private static read(fd: number): { tag: string; epoch: number; geometry: Geometry } | null {
    const header = Buffer.alloc(HEADER);
    const n = readSync(fd, header, 0, HEADER, 0);
    if (n < HEADER || header.toString('latin1', 0, MAGIC.length) !== MAGIC) return null;
    const tag = header.toString('utf8', 64, TAG_BYTES).replace(/\0.*$/s, '');
    const f = new Float64Array(header.buffer, header.byteOffset + 1024, 16);
    const geometry = { tag, chunkSize: f[F_CHUNK]!, capacity: f[F_CAPACITY]!, blocksPerChunk: f[F_BLOCKS]!, mapLength: f[F_MAP]! };
    return { tag, epoch: f[F_EPOCH]!, geometry };
  }

  /** The epoch of the writer using this memory now (a later adopter checks it). */
  set epoch(epoch: number) {
    this.fields[F_EPOCH] = epoch;
  }

  data(pos: number): Buffer {
    const size = this.geometry.chunkSize;
    return this.memory.subarray(this.dataAt + pos * size, this.dataAt + (pos + 1) * size);
  }

  knownOf(pos: number): Uint8Array {
    const b = this.geometry.blocksPerChunk;
    return this.known.subarray(pos * b, (pos + 1) * b);
  }

  /** A clean end: nothing is left to adopt. */
  remove(): void {
    if (this.path) rmSync(this.path, { force: true });
  }
}

/** A fixed number of chunk-sized buffers, handed out in turn: their number bounds what uses them at once. */
export class Spares {
  private readonly free: Buffer[] = [];
  private readonly waiters: Array<(buffer: Buffer) => void> = [];

  constructor(count: number, size: number) {
    const memory = native.mapAnonymous(count * size);
    for (let i = 0; i < count; i++) this.free.push(memory.subarray(i * size, (i + 1) * size));
  }

  take(): Promise<Buffer> | Buffer {
    return this.free.pop() ?? new Promise((resolve) => this.waiters.push(resolve));
  }

  give(buffer: Buffer): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(buffer);
    else this.free.push(buffer);
  }
}
