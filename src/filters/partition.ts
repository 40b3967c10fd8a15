/**
 * partition: exposes one partition of a partitioned driver below (MBR primary partitions 1-4, or
 * GPT), as a device of its own.
 *
 *   bdus run file disk.img --filter partition:number=2
 *
 * The partition's place and size come from the table, which only the driver below can read, and
 * the device's size must be known before the device exists: so this filter reads the table
 * itself, before the device is created, through a short life of the driver below of its own
 * (validate, initialize, two or three reads, terminate), then serves the partition's window as
 * the offset filter does. It is asynchronous: `await partition({ number })(driver)`, or
 * `composeAsync`; on the command line `--filter partition:number=N` awaits it.
 *
 * The driver below must declare its size (file, chunked, nbd, http do) and keep its data across
 * instances (the short life must see what the real one will). Sectors are 512 bytes as tables
 * count them. Recovery and hot swap: as offset: the window is read again by each new driver.
 */
import { adjustAttributes } from '../driver/attributes.js';
import type { Context, Driver } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { Parameters } from '../filter/parameters.js';
import offset from './offset.js';
import { readInto } from '../driver/read-data.js';

export const description = 'exposes one partition (MBR 1-4 or GPT) of the driver below';

export const parameters = {
  number: { type: 'number', description: 'the partition, from 1', required: true },
} as const satisfies Parameters;

export interface PartitionOptions {
  number: number;
}

const SECTOR = 512;

/** [start, size] in bytes of partition `number` in the table that `read` reads, or an error saying why not. */
export async function findPartition(read: (offset: number, length: number) => Promise<Buffer>, number: number): Promise<[number, number]> {
  const mbr = await read(0, SECTOR);
  if (mbr.readUInt16LE(510) !== 0xaa55) throw new DriverError('EINVAL', 'filter partition: the driver below has no partition table (no MBR signature)');
  const entry = (i: number) => ({ type: mbr[446 + 16 * i + 4]!, start: mbr.readUInt32LE(446 + 16 * i + 8), sectors: mbr.readUInt32LE(446 + 16 * i + 12) });
  if (entry(0).type !== 0xee) {
    if (number < 1 || number > 4) throw new DriverError('EINVAL', `filter partition: an MBR table has partitions 1 to 4 here, not ${number}`);
    const { type, start, sectors } = entry(number - 1);
    if (type === 0 || sectors === 0) throw new DriverError('EINVAL', `filter partition: MBR partition ${number} is empty`);
    return [start * SECTOR, sectors * SECTOR];
  }
  const header = await read(SECTOR, SECTOR);
  if (header.toString('latin1', 0, 8) !== 'EFI PART') throw new DriverError('EINVAL', 'filter partition: a protective MBR without a GPT header');
  const entries = Number(header.readBigUInt64LE(72));
  const count = header.readUInt32LE(80);
  const size = header.readUInt32LE(84);
  if (number < 1 || number > count || size < 128) throw new DriverError('EINVAL', `filter partition: the GPT has ${count} entries, not ${number}`);
  const at = entries * SECTOR + (number - 1) * size;
  const sector = await read(at - (at % SECTOR), SECTOR);
  const e = sector.subarray(at % SECTOR, (at % SECTOR) + size);
  if (e.subarray(0, 16).every((byte) => byte === 0)) throw new DriverError('EINVAL', `filter partition: GPT partition ${number} is empty`);
  const first = Number(e.readBigUInt64LE(32));
  const last = Number(e.readBigUInt64LE(40));
  return [first * SECTOR, (last - first + 1) * SECTOR];
}

export default function partition(options: PartitionOptions) {
  if (!Number.isInteger(options?.number) || options.number < 1) throw new DriverError('EINVAL', 'filter partition: needs number=N (from 1)');
  return async <State>(next: Driver<State>): Promise<Driver<State>> => {
    if (!next.read) throw new DriverError('EINVAL', 'filter partition: the driver below cannot be read');
    if (next.attributes?.size === undefined) throw new DriverError('EINVAL', 'filter partition: the driver below must declare its size');
    // The short life: a context like a test's, on attributes as bdus would adjust them.
    const ctx = {
      id: 0n,
      index: -1,
      path: '',
      kernelPath: '',
      major: 0,
      minor: 0,
      attributes: adjustAttributes({ ...next.attributes }, next),
      isRerun: false,
      readOnly: false,
      state: undefined as State,
    } satisfies Context<State>;
    await next.validate?.(ctx);
    await next.initialize?.(ctx);
    let place: [number, number];
    try {
      place = await findPartition(async (at, length) => {
        const buffer = Buffer.alloc(length);
        await readInto(next.read!(buffer, at, ctx), buffer);
        return buffer;
      }, options.number);
    } finally {
      await next.terminate?.(ctx);
    }
    return offset({ offset: place[0], size: place[1] })(next);
  };
}
