/**
 * What `bdus check` knows of the device it checks: what each block may hold, and what a block
 * read back says. Every block it writes carries its own identity (a header with the check run,
 * the block's index and the write's version, and a pattern derived from them), so a block read
 * back tells which write it comes from, or that no write of this run ever put it there.
 *
 * Per block, the model keeps the versions that may be there now (the last acknowledged write,
 * plus any write that failed since: it may or may not have landed), the last version a
 * completed flush covers, and the block's history since it was last verified: the smallest
 * failing case is the shortest such history.
 */
export const BLOCK = 4096;
const MAGIC = 0x4244_5553; // "BDUS"
/** The version of a block of zeros: the device's content before the check wrote it. */
export const ZEROS = -1;
/** A block that no write of this run put there (another block's data, a torn write, garbage). */
export const FOREIGN = -2;

/** What the block read back holds: a version, ZEROS or FOREIGN. */
export function decode(buffer: Buffer, at: number, run: number, block: number): number {
  if (buffer.readUInt32LE(at) !== MAGIC) return isZero(buffer, at) ? ZEROS : FOREIGN;
  if (buffer.readUInt32LE(at + 4) !== run || buffer.readUInt32LE(at + 8) !== block) return FOREIGN;
  const version = buffer.readUInt32LE(at + 12);
  let x = seed(run, block, version);
  for (let i = 16; i < BLOCK; i += 4) {
    x = next(x);
    if (buffer.readUInt32LE(at + i) !== x) return FOREIGN;
  }
  return version;
}

/** Fills a block with the content of write `version` of `block`. */
export function encode(buffer: Buffer, at: number, run: number, block: number, version: number): void {
  buffer.writeUInt32LE(MAGIC, at);
  buffer.writeUInt32LE(run, at + 4);
  buffer.writeUInt32LE(block, at + 8);
  buffer.writeUInt32LE(version, at + 12);
  let x = seed(run, block, version);
  for (let i = 16; i < BLOCK; i += 4) {
    x = next(x);
    buffer.writeUInt32LE(x, at + i);
  }
}

function seed(run: number, block: number, version: number): number {
  return (Math.imul(run ^ 0x9e37_79b9, 31) ^ Math.imul(block + 1, 0x85eb_ca6b) ^ Math.imul(version + 1, 0xc2b2_ae35)) >>> 0 || 1;
}

/** xorshift32. */
function next(x: number): number {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

function isZero(buffer: Buffer, at: number): boolean {
  for (let i = 0; i < BLOCK; i += 4) if (buffer.readUInt32LE(at + i) !== 0) return false;
  return true;
}

export function describeVersion(version: number): string {
  return version === ZEROS ? 'zeros' : version === FOREIGN ? 'data never written there' : `write #${version}`;
}

/**
 * One block's state. Versions are the check's global sequence numbers (every write and every
 * write-zeroes takes the next one), so they also order events in time.
 */
export interface BlockState {
  /** The last acknowledged write or write-zeroes, and whether it was zeros. */
  acked: number;
  ackedZeros: boolean;
  /** What failed writes since may have left (versions, ZEROS): they may or may not have landed. */
  uncertain: number[];
  /** The last acknowledged write or write-zeroes a completed flush covers (-1: none), and whether it was zeros. */
  durable: number;
  durableZeros: boolean;
  /** A driver change was going on while its last write was in flight: the kernel re-sent it. */
  resent: boolean;
  /** What happened to the block since it was last verified, for the report. */
  history: string[];
}

export function freshBlock(): BlockState {
  return { acked: -1, ackedZeros: true, uncertain: [], durable: -1, durableZeros: true, resent: false, history: [] };
}

/** The properties bdus check holds a driver to. */
export const PROPERTIES = {
  'read-back': 'a read returns the last write acknowledged before it',
  'acknowledged-writes': 'every write acknowledged before a hot swap or a crash reads back after it: to clients the device never failed (seed 001)',
  'flushed-writes': 'every write acknowledged before a flush that completed reads back after any crash',
  'resent-writes': 'a write in flight when its driver ended, re-sent to the next driver, lands once and harmlessly (idempotence)',
  'never-written': 'no read returns data that was never written to that block',
  zeroes: 'a range given write-zeroes reads back as zeros',
} as const;
export type Property = keyof typeof PROPERTIES;

/** What the block should read as now. */
export function expected(state: BlockState): number {
  return state.ackedZeros ? ZEROS : state.acked;
}

/**
 * What is wrong with a block read back as `found` (undefined: nothing). `changed`: a driver
 * change (swap or crash) happened since the block's last write was acknowledged.
 */
export function judge(state: BlockState, found: number, changed: boolean): Property | undefined {
  if (found === expected(state) || state.uncertain.includes(found)) return undefined;
  if (found === FOREIGN || found > state.acked) return 'never-written';
  // Re-sent, and acknowledged since the last driver change: the re-sent write is what went wrong.
  if (!changed) return state.resent ? 'resent-writes' : state.ackedZeros ? 'zeroes' : 'read-back';
  // Writes were lost, at least acknowledged ones. Flushed ones too, if the flushed state is newer than what is there.
  const flushedLost = found === ZEROS ? state.durable >= 0 && !state.durableZeros : state.durable > found;
  return flushedLost ? 'flushed-writes' : 'acknowledged-writes';
}
