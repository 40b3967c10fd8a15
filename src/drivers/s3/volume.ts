/**
 * An s3 volume's layout in the store, its one writer, and its commits.
 *
 * Keys under the volume's prefix:
 *
 *   bdus-volume                  the head: JSON (format, size, chunk size, the writer's epoch and
 *                                lease, the map's pages); changed only by conditional puts
 *   map/PAGE.EPOCH.SEQ           a page of the chunk map: for PAGE_ENTRIES chunks, which object
 *                                holds each (0: none, zeros), then which patch (0: none)
 *   chunks/INDEX.EPOCH.SEQ       a chunk's bytes, chunkSize of them; never overwritten
 *   patches/INDEX.EPOCH.SEQ      blocks of a chunk written since its object (patch.ts): a chunk
 *                                reads as its object (or zeros) with its patch over it
 *
 * Objects are written once under new names and become the volume's only when a commit puts a
 * head that names them (through its map pages) in place of the one the writer last saw
 * (If-Match): a flush is durable when its commit is. A writer takes the volume by a commit that
 * raises the epoch; a writer that was paused (SIGSTOP, a long GC, a partition) while another took
 * it finds its next commit refused, and stops: what it wrote after is in objects no head names.
 * That is the fencing: the store's atomic conditional put on one object, the head.
 *
 * The lease: the head names its writer and a time until which it is theirs (renewed every third
 * of it). Another `bdus run` on the volume is refused while it lasts; a new driver instance of the
 * same device (hot swap, recovery: the same machine's boot and the same device id) takes it at
 * once. After a writer's lease ran out anyone may take the volume (the clocks of the machines are
 * assumed to agree within a second or so).
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { DriverAbort, DriverError } from '../../driver/errors.js';
import { PreconditionFailed, type ObjectStore } from './store.js';

export const HEAD = 'bdus-volume';
const FORMAT = 'bdus-s3-volume';
/** 2: map pages name a patch per chunk too. A version 1 volume is served, and becomes version 2 at its first commit. */
const VERSION = 2;
/** Chunks per map page: a page is 128 KiB (8 bytes per chunk for its object, 8 for its patch; version 1: 64 KiB, objects only). */
export const PAGE_ENTRIES = 8192;
/** Entries are EPOCH * 2^32 + SEQ: exact in a double while EPOCH < 2^21. */
const SEQ_SPAN = 2 ** 32;
const MAX_HEAD = 1 << 20;

export interface Owner {
  readonly host: string;
  readonly boot: string;
  readonly device: string;
  readonly pid: number;
  readonly since: string;
}

export interface Head {
  readonly format: string;
  readonly version: number;
  readonly size: number;
  readonly chunkSize: number;
  readonly pageEntries: number;
  readonly created: string;
  readonly epoch: number;
  readonly commit: number;
  /** The map's pages that exist: page number -> its object's EPOCH.SEQ. */
  readonly pages: Record<string, string>;
  readonly owner: Owner | null;
  /** Until when (ms since the epoch) the owner holds the volume. */
  readonly leaseUntil: number;
}

/** Chunk `index`'s object named `entry`. */
export const chunkName = (index: number, entry: number) => `chunks/${index.toString(16).padStart(12, '0')}.${version(entry)}`;
/** Chunk `index`'s patch named `entry`. */
export const patchName = (index: number, entry: number) => `patches/${index.toString(16).padStart(12, '0')}.${version(entry)}`;

const pageName = (page: number, entry: number) => `map/${page.toString(16).padStart(8, '0')}.${version(entry)}`;
const version = (entry: number) => `${Math.floor(entry / SEQ_SPAN).toString(16)}.${(entry % SEQ_SPAN).toString(16)}`;

function parseVersion(text: string): number {
  const [epoch, seq] = text.split('.').map((part) => parseInt(part, 16));
  return epoch! * SEQ_SPAN + seq!;
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

export interface VolumeSettings {
  /** The device's id (a string of ctx.id): a successor with the same id on this boot takes over at once. */
  device: string;
  leaseMs: number;
  /** What a request may take: each store operation's deadline. */
  timeoutMs: number;
  log: (line: string) => void;
}

/** The volume as one writer holds it: the head it last put, and the chunk map. */
export class Volume {
  /** The chunk map: the object holding each chunk (0: none). Changed only as objects land. */
  readonly map: Float64Array;
  /** Each chunk's patch (0: none). */
  readonly patches: Float64Array;

  private head: Head;
  private etag: string;
  private seq = 0;
  private readonly dirtyPages = new Set<number>();
  /** Objects no longer named by the map, to delete once a commit no longer names them either. */
  private superseded: string[] = [];
  private committing: Promise<void> | null = null;
  private queued: Promise<void> | null = null;
  private renewal: NodeJS.Timeout | undefined;
  private fencedBy: Owner | null = null;

  private constructor(
    private readonly store: ObjectStore,
    private readonly settings: VolumeSettings,
    head: Head,
    etag: string,
    map: Float64Array,
  ) {
    this.head = head;
    this.etag = etag;
    this.map = map.subarray(0, map.length / 2);
    this.patches = map.subarray(map.length / 2);
  }

  get chunkSize(): number {
    return this.head.chunkSize;
  }

  /** Reads the head, or null if there is no volume; with `device`, refuses one another writer holds. */
  static async inspect(store: ObjectStore, device: string | undefined, deadline: number): Promise<{ head: Head; etag: string } | null> {
    const buffer = Buffer.allocUnsafe(MAX_HEAD);
    const got = await store.get(HEAD, buffer, deadline);
    if (!got) return null;
    const head = parseHead(buffer.subarray(0, got.length), store);
    const held = device === undefined ? null : heldByAnother(head, device);
    if (held) throw held;
    return { head, etag: got.etag };
  }

  /** Creates a volume where there is none (a race with another creator: one of them creates it). */
  static async create(store: ObjectStore, size: number, chunkSize: number, deadline: number): Promise<void> {
    const head: Head = {
      format: FORMAT,
      version: VERSION,
      size,
      chunkSize,
      pageEntries: PAGE_ENTRIES,
      created: new Date().toISOString(),
      epoch: 0,
      commit: 0,
      pages: {},
      owner: null,
      leaseUntil: 0,
    };
    try {
      await store.put(HEAD, Buffer.from(JSON.stringify(head)), deadline, { ifNoneMatch: true });
    } catch (error) {
      if (!(error instanceof PreconditionFailed)) throw error;
    }
  }

  /**
   * Takes the volume for this writer: a commit that raises the epoch and names it the owner.
   * Refused while another writer's lease lasts. `prepare` gives the map to fill for the head
   * found (its geometry: the objects' entries, then the patches'), or says that a dead driver's
   * map it adopted is newer than the store's.
   */
  static async take(store: ObjectStore, settings: VolumeSettings, prepare: (head: Head) => { map: Float64Array; adopted: boolean }): Promise<Volume> {
    for (;;) {
      const deadline = Date.now() + settings.timeoutMs;
      const found = await Volume.inspect(store, settings.device, deadline);
      if (!found) throw new DriverError('ENOENT', `s3: there is no volume at s3://${store.url.bucket}/${store.url.prefix} (give --create and --size to make one)`);
      const { map, adopted } = prepare(found.head);
      if (map.length !== 2 * mapLength(found.head)) throw new Error(`s3: a map of ${map.length} entries for ${mapLength(found.head)} chunks`);
      const owner: Owner = { host: hostname(), boot: bootId(), device: settings.device, pid: process.pid, since: new Date().toISOString() };
      const head: Head = { ...found.head, epoch: found.head.epoch + 1, owner, leaseUntil: Date.now() + settings.leaseMs };
      let etag: string;
      try {
        etag = await store.put(HEAD, Buffer.from(JSON.stringify(head)), deadline, { ifMatch: found.etag });
      } catch (error) {
        if (error instanceof PreconditionFailed) continue; // another writer moved first: look again
        throw error;
      }
      const volume = new Volume(store, settings, head, etag, map);
      // A version 1 head: the next commit writes every page anew, in version 2's form, and says so.
      if (head.version === 1) for (const page of Object.keys(head.pages)) volume.dirtyPages.add(Number(page));
      if (adopted) {
        // The dead driver's map is the store's and what it wrote since: the next commit names it all.
        for (let page = 0; page < volume.map.length / PAGE_ENTRIES; page++) volume.dirtyPages.add(page);
        settings.log(`s3: adopted the cache of this device's last driver (epoch ${found.head.epoch}): writing back what it had not flushed`);
      } else {
        map.fill(0);
        const half = PAGE_ENTRIES * 8;
        await Promise.all(
          Object.entries(head.pages).map(async ([page, at]) => {
            if (!(Number(page) >= 0 && Number(page) < volume.map.length / PAGE_ENTRIES)) throw new DriverError('EIO', `s3: the volume's head names map page '${page}', past its size: the volume is damaged`);
            const bytes = Buffer.allocUnsafe(head.version === 1 ? half : 2 * half);
            const got = await store.get(pageName(Number(page), parseVersion(at)), bytes, deadline);
            if (!got || got.length !== bytes.length) throw new DriverError('EIO', `s3: the volume's map page ${page} is ${got ? 'short' : 'missing'}: the volume is damaged`);
            volume.pageView(volume.map, Number(page)).set(bytes.subarray(0, half));
            if (head.version !== 1) volume.pageView(volume.patches, Number(page)).set(bytes.subarray(half));
          }),
        );
      }
      volume.renewal = setInterval(() => void volume.commit().catch(() => undefined), Math.max(1000, settings.leaseMs / 3));
      volume.renewal.unref();
      return volume;
    }
  }

  get epoch(): number {
    return this.head.epoch;
  }

  /** A new name for an object of this writer's: never used before by anyone (the epoch is this writer's alone). */
  nextEntry(): number {
    return this.head.epoch * SEQ_SPAN + ++this.seq;
  }

  /**
   * Names `entry` as chunk `index`'s object (its object is in the store), with no patch; the old
   * ones go at a later commit.
   */
  setChunk(index: number, entry: number): void {
    const old = this.map[index]!;
    this.setPatch(index, 0);
    if (old === entry) return;
    if (old !== 0) this.superseded.push(chunkName(index, old));
    this.map[index] = entry;
    this.dirtyPages.add(Math.floor(index / PAGE_ENTRIES));
  }

  /** Names `entry` as chunk `index`'s patch (in the store; 0: none); the old one goes at a later commit. */
  setPatch(index: number, entry: number): void {
    const old = this.patches[index]!;
    if (old === entry) return;
    if (old !== 0) this.superseded.push(patchName(index, old));
    this.patches[index] = entry;
    this.dirtyPages.add(Math.floor(index / PAGE_ENTRIES));
  }

  /** A page's bytes of one half of the map. */
  private pageView(half: Float64Array, page: number): Buffer {
    return Buffer.from(half.buffer, half.byteOffset + page * PAGE_ENTRIES * 8, PAGE_ENTRIES * 8);
  }

  /**
   * Makes everything set so far the volume's: a commit that starts after this call. Commits run
   * one at a time; calls while one runs share the next.
   */
  commit(): Promise<void> {
    if (this.queued) return this.queued;
    if (!this.committing) {
      this.committing = this.runCommit().finally(() => (this.committing = null));
      return this.committing;
    }
    this.queued = this.committing.catch(() => undefined).then(() => {
      this.queued = null;
      return this.commit();
    });
    return this.queued;
  }

  /**
   * What a flush needs: everything set so far is the volume's once this resolves. A commit only
   * if something changed since the last one started (a flush with nothing new written back costs
   * no round trip: a filesystem's sync sends several); a fenced writer's still fails.
   */
  settle(): Promise<void> {
    if (this.dirtyPages.size > 0 || this.queued || this.fencedBy) return this.commit();
    return this.committing ?? Promise.resolve();
  }

  private async runCommit(): Promise<void> {
    if (this.fencedBy) throw fenced(this.fencedBy);
    const deadline = Date.now() + this.settings.timeoutMs;
    // What this commit names is what the map holds now; later changes go to the next.
    const pages = [...this.dirtyPages];
    this.dirtyPages.clear();
    const superseded = this.superseded;
    this.superseded = [];
    const oldPages: string[] = [];
    try {
      const refs: Record<string, string> = { ...this.head.pages };
      await Promise.all(
        pages.map(async (page) => {
          const entry = this.nextEntry();
          await this.store.put(pageName(page, entry), Buffer.concat([this.pageView(this.map, page), this.pageView(this.patches, page)]), deadline);
          const old = refs[page];
          if (old !== undefined) oldPages.push(pageName(page, parseVersion(old)));
          refs[page] = version(entry);
        }),
      );
      // Every page was written anew when upgrading: the head says what its pages are.
      const head: Head = { ...this.head, version: VERSION, commit: this.head.commit + 1, pages: refs, leaseUntil: Date.now() + this.settings.leaseMs };
      // A lost condition need not be a lost race: a put whose answer was lost (the gateway went
      // away after storing it) fails its retry with 412 against our own new ETag. Only this
      // writer puts the head in its epoch, one commit at a time, so the head read back tells:
      // our commit there (it landed), or the previous one (put again, against its ETag).
      for (;;) {
        try {
          this.etag = await this.store.put(HEAD, Buffer.from(JSON.stringify(head)), deadline, { ifMatch: this.etag });
          break;
        } catch (error) {
          if (!(error instanceof PreconditionFailed)) throw error;
          await this.checkFenced(deadline); // throws if another writer took the volume
          if (this.head.commit >= head.commit) break;
        }
      }
      this.head = head;
    } catch (error) {
      for (const page of pages) this.dirtyPages.add(page);
      this.superseded = superseded.concat(this.superseded);
      throw error;
    }
    // The old objects are nobody's now: delete them, best effort (a later sweep can find any left).
    for (const name of [...superseded, ...oldPages]) void this.store.delete(name, deadline).catch(() => undefined);
  }

  /**
   * A conditional put of the head lost: either the store answered 500 for a put that in fact
   * landed or raced nothing (then the head is still ours: adopt its ETag), or another writer took
   * the volume (then this writer is fenced, for good).
   */
  private async checkFenced(deadline: number): Promise<void> {
    const buffer = Buffer.allocUnsafe(MAX_HEAD);
    const got = await this.store.get(HEAD, buffer, deadline);
    const now = got ? parseHead(buffer.subarray(0, got.length), this.store) : null;
    if (now && now.epoch === this.head.epoch) {
      this.etag = got!.etag;
      if (now.commit > this.head.commit) this.head = now;
      return;
    }
    this.fencedBy = now?.owner ?? { host: '?', boot: '?', device: '?', pid: 0, since: '?' };
    clearInterval(this.renewal);
    throw fenced(this.fencedBy);
  }

  /** Stops renewing the lease and gives it up (a hot swap's successor takes it at once anyway). */
  async release(): Promise<void> {
    clearInterval(this.renewal);
    if (this.fencedBy) return;
    const deadline = Date.now() + this.settings.timeoutMs;
    await this.commit();
    const head: Head = { ...this.head, owner: null, leaseUntil: 0 };
    try {
      this.etag = await this.store.put(HEAD, Buffer.from(JSON.stringify(head)), deadline, { ifMatch: this.etag });
      this.head = head;
    } catch (error) {
      if (!(error instanceof PreconditionFailed)) throw error;
    }
  }

  get fenced(): boolean {
    return this.fencedBy !== null;
  }
}

/** Entries in a volume's map: whole pages. */
export function mapLength(head: Head): number {
  return Math.ceil(Math.ceil(head.size / head.chunkSize) / PAGE_ENTRIES) * PAGE_ENTRIES;
}

export function tagOf(store: ObjectStore, head: Head): string {
  return `s3://${store.url.bucket}/${store.url.prefix} created ${head.created}`;
}

function parseHead(bytes: Buffer, store: ObjectStore): Head {
  const where = `s3://${store.url.bucket}/${store.url.prefix}${HEAD}`;
  let head: Head;
  try {
    head = JSON.parse(bytes.toString('utf8')) as Head;
  } catch {
    throw new DriverError('EINVAL', `s3: ${where} is not a bdus volume's head (not JSON)`);
  }
  if (head.format !== FORMAT) throw new DriverError('EINVAL', `s3: ${where} is not a bdus volume's head`);
  if (head.version !== 1 && head.version !== VERSION) throw new DriverError('EINVAL', `s3: ${where} is format version ${head.version}; this bdus reads versions 1 to ${VERSION}`);
  if (!(head.size > 0) || !(head.chunkSize > 0) || head.pageEntries !== PAGE_ENTRIES) throw new DriverError('EINVAL', `s3: ${where} has a bad geometry`);
  return head;
}

/** Whether the head names this device, on this boot, as its writer (a driver of ours took it last). */
export function takenBy(head: Head, device: string): boolean {
  return head.owner !== null && head.owner.device === device && head.owner.boot === bootId();
}

/** Why this writer may not take the volume now, or null if it may. */
function heldByAnother(head: Head, device: string): DriverError | null {
  const owner = head.owner;
  if (!owner || head.leaseUntil <= Date.now()) return null;
  if (owner.boot === bootId() && owner.device === device) return null; // this device's next driver
  const left = Math.ceil((head.leaseUntil - Date.now()) / 1000);
  return new DriverError(
    'EBUSY',
    `s3: the volume is in use by device ${owner.device} on ${owner.host} (pid ${owner.pid}, since ${owner.since}); ` +
      `its lease runs for ${left} s more: stop that device, or wait for the lease to run out if its machine is gone`,
  );
}

function fenced(by: Owner): DriverAbort {
  return new DriverAbort(`s3: another writer took the volume (device ${by.device} on ${by.host}, pid ${by.pid}): this driver stops writing`);
}
