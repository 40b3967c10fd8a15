/**
 * A deliberately broken driver for `bdus check`: a log-structured device whose log has no
 * sequence numbers (and no checksums).
 *
 *   log-no-seq.js LOGFILE            (32 MiB; --size to change)
 *
 * The device's content is kept in memory and persisted by appending a record per write to
 * LOGFILE: a header (offset, length), then the data, each its own write (the driver's own steps).
 * Writes run concurrently, each at the place it reserved. initialize replays the log into memory.
 *
 * What is wrong: a crash between a record's header and its data leaves a torn record at the end
 * of the log, and the next driver appends after it. Without a sequence number and a checksum
 * per record, replay cannot tell a torn record from a whole one: it takes the next record's
 * bytes as the torn record's data (another block's data lands in the torn record's block), then
 * finds no record where it reads on and takes that for the end of the log, dropping every write
 * after it. After a second crash the device shows data never written there, and has lost
 * acknowledged (and flushed) writes.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import type { Driver } from '../../src/index.js';

const HEADER = 12;
const MAX_RECORD = 1 << 20;

interface State {
  image: Buffer;
  log: fsp.FileHandle;
  end: number;
}

export default function logNoSeq(args: readonly string[]): Driver<State> {
  const path = args[0]!;
  closeSync(openSync(path, 'a'));
  return {
    attributes: { size: 32 << 20, maxConcurrentCallbacks: 8 },
    async initialize(ctx) {
      const size = ctx.attributes.size;
      const image = Buffer.alloc(size);
      const fd = openSync(path, 'r');
      const record = Buffer.alloc(MAX_RECORD); // reused for every record: the bug's accomplice
      const header = Buffer.alloc(HEADER);
      let at = 0;
      try {
        while (readSync(fd, header, 0, HEADER, at) === HEADER) {
          const offset = Number(header.readBigUInt64LE(0));
          const length = header.readUInt32LE(8);
          if (length === 0 || length > MAX_RECORD || offset + length > size) break; // taken for the end of the log
          readSync(fd, record, 0, length, at + HEADER); // short at a torn end: the rest is the last record's
          record.copy(image, offset, 0, length);
          at += HEADER + length;
        }
      } finally {
        closeSync(fd);
      }
      const log = await fsp.open(path, 'r+');
      ctx.state = { image, log, end: (await log.stat()).size }; // appends go on at the end of the file
    },
    async terminate(ctx) {
      await ctx.state.log.close();
    },
    read(buffer, offset, ctx) {
      ctx.state.image.copy(buffer, 0, offset, offset + buffer.length);
    },
    async write(data, offset, ctx) {
      const at = ctx.state.end;
      ctx.state.end += HEADER + data.length;
      const header = Buffer.alloc(HEADER);
      header.writeBigUInt64LE(BigInt(offset), 0);
      header.writeUInt32LE(data.length, 8);
      // The header goes down at once, the data a moment later: any crash inside a write tears
      // its record (the window is made wide so that bdus check's kills land in it every time).
      writeSync(ctx.state.log.fd, header, 0, HEADER, at);
      await new Promise((resolve) => setTimeout(resolve, 2));
      await ctx.state.log.write(data, 0, data.length, at + HEADER);
      data.copy(ctx.state.image, offset);
    },
    async flush(ctx) {
      await ctx.state.log.datasync();
    },
  };
}
