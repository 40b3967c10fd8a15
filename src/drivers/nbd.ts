/**
 * nbd: a device in front of any NBD server (nbdkit, qemu-nbd, nbd-server, a bdus export), through
 * any bdus frontend, with bdus's recovery in front of it.
 *
 *   bdus run nbd nbd://server.example/disk --recoverable
 *   bdus run nbd 'nbd+unix:///?socket=/tmp/nbd.sock'
 *   bdus run nbd 'nbds://server/disk?tls-certificates=/etc/pki/bdus'     # or ?tls-psk-file=FILE
 *   import { nbd } from 'bdus/drivers';  run(await nbd('nbd://server/disk'))
 *
 * The device has the export's size and offers what the server offers: writes unless it is
 * read-only, flush, FUA, trim (discard), write-zeroes, and block status (extents) when it has
 * structured replies. With a server that allows several connections (multi-conn), requests are
 * spread over `--connections` of them (default 4; 1 otherwise).
 *
 * A lost connection is made again: the requests it carried are sent again on the new one (every
 * request is idempotent), and requests wait, retrying with a growing pause, while the server is
 * away, until the device's request timeout (default 30 s) runs out. So a server restart is a
 * pause, not an error. Recoverable: the data is the server's; a new driver instance (hot swap,
 * recovery after a crash) connects again.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Context, Driver } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { DriverFactory, DriverOptions } from '../driver/module.js';
import { NbdClient, parseNbdUri, type NbdClientOptions, type NbdTarget } from '../nbd/client.js';
import { Flag } from '../nbd/protocol.js';

export const usage = 'URI';
export const description = 'a device in front of an NBD server (nbd://, nbds://, nbd+unix:// URIs; recoverable)';
export const options = {
  connections: { type: 'string', description: 'connections to a multi-conn server (default 4; 1 if it is not)' },
} as const satisfies DriverOptions;

export interface NbdDriverOptions {
  /** Connections to a server that allows several (default 4). */
  connections?: number;
}

/** The connections of one driver instance: made as needed, made again when lost. */
class Connections {
  private readonly clients: Array<NbdClient | undefined>;
  private readonly connecting: Array<Promise<NbdClient> | undefined>;
  private turn = 0;

  constructor(
    private readonly target: NbdTarget,
    private readonly settings: NbdClientOptions,
    count: number,
  ) {
    this.clients = new Array(count).fill(undefined);
    this.connecting = new Array(count).fill(undefined);
  }

  /** The next connection in turn, connecting if it is not up. */
  take(): NbdClient | Promise<NbdClient> {
    const i = this.turn;
    this.turn = (i + 1) % this.clients.length;
    const client = this.clients[i];
    if (client && !client.closed) return client;
    return (this.connecting[i] ??= NbdClient.connect(this.target, this.settings).then(
      (made) => {
        this.clients[i] = made;
        this.connecting[i] = undefined;
        return made;
      },
      (error: unknown) => {
        this.connecting[i] = undefined;
        throw error;
      },
    ));
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.clients.map((c) => c?.close()));
  }
}

/** Connects once to learn the export (its size and what it offers) and returns the driver for it. */
export async function nbd(uri: string, driverOptions: NbdDriverOptions = {}): Promise<Driver<Connections>> {
  const target = parseNbdUri(uri);
  const settings: NbdClientOptions = {
    tlsCertificates: target.query.get('tls-certificates') ?? undefined,
    tlsPsk: target.query.get('tls-psk-file') ?? undefined,
    tlsUsername: target.user || undefined,
  };
  const probe = await NbdClient.connect(target, settings);
  const { size, blockSize, blockStatus } = probe;
  const has = (flag: number) => probe.has(flag);
  const readOnly = probe.readOnly;
  await probe.close();
  const count = has(Flag.CAN_MULTI_CONN) ? (driverOptions.connections ?? 4) : 1;
  const logical = Math.min(4096, Math.max(512, blockSize.minimum));

  /** Runs `call` on a connection; a lost connection is made again and the call repeated, until the request timeout. */
  async function carried<T>(ctx: Context<Connections>, call: (client: NbdClient) => Promise<T>): Promise<T> {
    const deadline = Date.now() + ctx.attributes.requestTimeout;
    for (let pause = 50; ; pause = Math.min(pause * 2, 1000)) {
      try {
        return await call(await ctx.state.take());
      } catch (error) {
        if ((error as { code?: string }).code !== 'ENOLINK' || Date.now() + pause >= deadline) throw error;
        process.stderr.write(`bdus: nbd: ${(error as Error).message}; trying again in ${pause} ms\n`);
        await sleep(pause);
      }
    }
  }

  const driver: Driver<Connections> = {
    attributes: { size: size - (size % logical), logicalBlockSize: logical, maxConcurrentCallbacks: 64, maxReadWriteSize: Math.min(blockSize.maximum, 1 << 20) },
    initialize(ctx) {
      ctx.state = new Connections(target, settings, count);
    },
    async terminate(ctx) {
      await ctx.state.close();
    },
    read: (buffer, offset, ctx) => carried(ctx, (c) => c.read(buffer, offset)),
  };
  if (blockStatus) driver.extents = (offset, length, ctx) => carried(ctx, (c) => c.extents(offset, length));
  if (has(Flag.SEND_FLUSH)) driver.flush = (ctx) => carried(ctx, (c) => c.flush());
  if (readOnly) return driver;
  driver.write = (data, offset, ctx) => carried(ctx, (c) => c.write(data, offset));
  if (has(Flag.SEND_FUA) && driver.flush) driver.fuaWrite = (data, offset, ctx) => carried(ctx, (c) => c.write(data, offset, true));
  if (has(Flag.SEND_TRIM)) driver.discard = (offset, length, ctx) => carried(ctx, (c) => c.trim(offset, length));
  if (has(Flag.SEND_WRITE_ZEROES)) driver.writeZeros = (offset, length, mayUnmap, ctx) => carried(ctx, (c) => c.writeZeroes(offset, length, mayUnmap));
  return driver;
}

const factory: DriverFactory<Connections> = (args, values) => {
  if (args.length !== 1) throw new DriverError('EINVAL', 'usage: bdus run nbd URI (nbd://HOST[:PORT]/[NAME], nbd+unix:///[NAME]?socket=PATH, nbds://...)');
  const connections = values.connections === undefined ? undefined : Number(values.connections);
  if (connections !== undefined && !(Number.isInteger(connections) && connections >= 1 && connections <= 64)) {
    throw new DriverError('EINVAL', `--connections ${String(values.connections)}: expected a whole number from 1 to 64`);
  }
  return nbd(args[0]!, { connections });
};
export default factory;
