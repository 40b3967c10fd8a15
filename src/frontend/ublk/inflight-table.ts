/**
 * The requests a recoverable ublk device's driver holds, in a small shared file that outlives
 * the driver (RUN_DIR/ublk/<device id>.inflight), so that the next driver can tell which of the
 * requests the kernel reissues to it the dead one had received, and how many deaths each has
 * been through (seed 000's per-request restart limit; `fail-received` is a limit of one).
 *
 * The kernel (created with USER_RECOVERY_REISSUE) requeues every request the dead driver had
 * received but not answered, and hands it out again on the same queue and tag, since bdus sets
 * the device's I/O scheduler to none (a scheduler would give it a new driver tag). A request on
 * (queue, tag) that the previous driver's table holds, with the same operation and range, is
 * therefore that request again: the table's tag cannot have been reused while it was pending.
 *
 * Cost on the request path: a fresh request writes its entry (a few plain stores into shared
 * memory) and its answer clears one byte; no system call. Devices that are not recoverable
 * have no table.
 *
 * Entry layout (16 bytes per queue and tag): start sector low u32, high u32, sectors u32,
 * operation u8, live u8, restarts u16.
 */
import { rmSync } from 'node:fs';
import { RUN_DIR } from '../../util/paths.js';
import { mapSharedFile } from '../../util/shared-file.js';

const ENTRY = 16;
const DIR = `${RUN_DIR}/ublk`;

export class InflightTable {
  private constructor(
    private readonly table: Buffer,
    /**
     * What the previous driver held when this one took the device over (empty for a new
     * device), in shared memory: the device's lanes each take their own queues' slots of it.
     */
    readonly previous: Buffer,
  ) {}

  static path(deviceId: string): string {
    return `${DIR}/${deviceId}.inflight`;
  }

  /** Maps the device's table (made if need be), taking what a previous driver left in it. */
  static open(deviceId: string, slots: number): InflightTable {
    const table = mapSharedFile(InflightTable.path(deviceId), slots * ENTRY);
    const previous = Buffer.from(new SharedArrayBuffer(table.length));
    table.copy(previous);
    table.fill(0);
    return new InflightTable(table, previous);
  }

  /**
   * Maps the table a lane's main thread opened (a lane's queues are its own slots), with what
   * the previous driver held as it found it: the buffer of `previous` of the main thread's table.
   */
  static join(deviceId: string, slots: number, previous: SharedArrayBuffer): InflightTable {
    return new InflightTable(mapSharedFile(InflightTable.path(deviceId), slots * ENTRY), Buffer.from(previous));
  }

  static remove(deviceId: string): void {
    rmSync(InflightTable.path(deviceId), { force: true });
  }

  /**
   * Records that this driver holds a request, and returns how many driver deaths it has already
   * been through: 0 for a fresh request, else one more than its previous holder's count.
   */
  hold(slot: number, op: number, low: number, high: number, sectors: number): number {
    const p = this.previous;
    const at = slot * ENTRY;
    let restarts = 0;
    if (p.length > at && p[at + 13] === 1 && p.readUInt32LE(at) === low && p.readUInt32LE(at + 4) === high && p.readUInt32LE(at + 8) === sectors && p[at + 12] === op) {
      restarts = p.readUInt16LE(at + 14) + 1;
      p[at + 13] = 0; // taken: a later request on this tag is a new one
    }
    const t = this.table;
    t.writeUInt32LE(low, at);
    t.writeUInt32LE(high, at + 4);
    t.writeUInt32LE(sectors, at + 8);
    t[at + 12] = op;
    t.writeUInt16LE(Math.min(restarts, 0xffff), at + 14);
    t[at + 13] = 1;
    return restarts;
  }

  /** The request is answered: a crash from now on does not count against it. */
  clear(slot: number): void {
    this.table[slot * ENTRY + 13] = 0;
  }
}
