/**
 * Per-request restart counts that survive the driver's death (seed 000's per-request limit).
 *
 * When a driver dies, the kernel keeps the requests it had received but not answered and sends
 * them again to the next reader, marked as re-sent (FUSE sets bit 63 of the request's unique
 * id; the id is otherwise the same). To know how many deaths a re-sent request has already been
 * through, each reader records the re-sent requests it holds in a small table in a shared file
 * (RUN_DIR/restarts/<device id>, mapped into the process): the record outlives the process that
 * wrote it, and the next reader looks its re-sent requests up there.
 *
 * Cost on the request path: a fresh request is never recorded (one bit test); only re-sent
 * requests, which come in bursts after a death, touch the table, with plain memory stores.
 *
 * Readers: a driver instance (a re-sent request it receives has been through one more death
 * than its record says, if a driver held it) or the daemon's keeper while no driver is attached
 * (it records every request it holds, re-sent or not, without counting a death: a held request
 * never reached a driver). Only one reader uses the table at a time.
 *
 * Entry layout (16 bytes): id low u32, id high u32 (bit 31 clear), restarts u16, holder u8.
 */
import { rmSync } from 'node:fs';
import { RUN_DIR } from '../../util/paths.js';
import { mapSharedFile } from '../../util/shared-file.js';

export const Holder = { NONE: 0, DRIVER: 1, KEEPER: 2 } as const;
export type Holder = (typeof Holder)[keyof typeof Holder];

const ENTRY = 16;
/** More than a device ever has in flight (loop's queue depth is 128). */
const ENTRIES = 1024;
const LOW = 0;
const HIGH = 4;
const RESTARTS = 8;
const HOLDER = 10;
const RESENT_BIT = 0x8000_0000;
const DIR = `${RUN_DIR}/restarts`;

function pathOf(deviceId: string): string {
  return `${DIR}/${deviceId}`;
}

export class RestartTable {
  /** How many driver deaths the request last passed to track() has been in flight across. */
  restarts = 0;
  private readonly history = new Map<number, number>();
  private readonly free: number[] = [];
  private forget: NodeJS.Timeout | undefined;

  constructor(private readonly table: Buffer) {}

  /** Maps the device's table, creating it if this is the device's first reader. */
  static open(deviceId: string): RestartTable {
    return new RestartTable(mapSharedFile(pathOf(deviceId), ENTRIES * ENTRY));
  }

  /** Removes a device's table (its record is gone). */
  static remove(deviceId: string): void {
    rmSync(pathOf(deviceId), { force: true });
  }

  /**
   * Takes over the table from the previous reader: what it recorded becomes the history that
   * re-sent requests are looked up in. Entries nobody claims within `forgetAfterMs` (their
   * requests ended some other way) are freed.
   */
  begin(forgetAfterMs: number): void {
    this.history.clear();
    this.free.length = 0;
    for (let entry = ENTRIES - 1; entry >= 0; entry--) {
      const at = entry * ENTRY;
      if (this.table[at + HOLDER] === Holder.NONE) this.free.push(entry);
      else this.history.set(keyOf(this.table.readUInt32LE(at + LOW), this.table.readUInt32LE(at + HIGH)), entry);
    }
    clearTimeout(this.forget);
    if (this.history.size > 0) {
      this.forget = setTimeout(() => {
        for (const entry of this.history.values()) this.clear(entry);
        this.history.clear();
      }, forgetAfterMs).unref();
    }
  }

  /**
   * Records the request whose 64-bit id is at `buffer[offset]` as held by `holder`, sets
   * `restarts`, and returns its entry (-1 if the table is full: the request is then not counted).
   */
  track(buffer: Buffer, offset: number, holder: Holder): number {
    const low = buffer.readUInt32LE(offset);
    const high = buffer.readUInt32LE(offset + 4);
    const key = keyOf(low, high);
    let entry = this.history.get(key);
    if (entry !== undefined) {
      this.history.delete(key);
      const before = this.table.readUInt16LE(entry * ENTRY + RESTARTS);
      this.restarts = before + (this.table[entry * ENTRY + HOLDER] === Holder.DRIVER ? 1 : 0);
    } else {
      // Not in the table: re-sent means a driver that kept no record died holding it.
      this.restarts = high & RESENT_BIT ? 1 : 0;
      entry = this.free.pop();
      if (entry === undefined) return -1;
    }
    const at = entry * ENTRY;
    this.table.writeUInt32LE(low, at + LOW);
    this.table.writeUInt32LE((high & ~RESENT_BIT) >>> 0, at + HIGH);
    this.table.writeUInt16LE(Math.min(this.restarts, 0xffff), at + RESTARTS);
    this.table[at + HOLDER] = holder;
    return entry;
  }

  /** The request of `entry` was answered. */
  clear(entry: number): void {
    if (entry < 0 || this.table[entry * ENTRY + HOLDER] === Holder.NONE) return;
    this.table[entry * ENTRY + HOLDER] = Holder.NONE;
    this.free.push(entry);
  }
}

/** Whether the request id at `buffer[offset]` says the kernel sent the request again. */
export function isResent(buffer: Buffer, offset: number): boolean {
  return (buffer[offset + 7]! & 0x80) !== 0;
}

function keyOf(low: number, high: number): number {
  return low + (high & ~RESENT_BIT & 0x1f_ffff) * 0x1_0000_0000;
}
