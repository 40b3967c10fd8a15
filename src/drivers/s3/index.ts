/**
 * s3: a device whose bytes live in an S3-compatible object store (AWS S3, Ceph's RADOS Gateway,
 * MinIO, Garage, R2), in fixed-size chunk objects, with a write-back cache in memory.
 *
 *   bdus run s3 s3://bucket/volume --create --size 100G [--chunk-size 1M]   # make it, and serve it
 *   bdus run s3 s3://bucket/volume --recoverable                            # serve it again
 *   bdus export s3 s3://bucket/volume
 *   import { s3 } from 'bdus/drivers/s3';  run(await s3('s3://bucket/volume'))
 *
 * Credentials, region and endpoint come from the usual AWS environment and files
 * (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, or
 * --endpoint). The layout, the one-writer rule and its fencing are in volume.ts; the cache in
 * cache.ts; docs/object-store.md says it all for users.
 *
 * Guarantees: a flush (and a FUA write) answers once a commit in the store names everything
 * written before it: it survives the driver, the machine and the gateway. A chunk that reads as
 * zeros (never written, discarded, zeroed whole) has no object. Requests wait and retry while
 * the store is unreachable, and fail with ETIMEDOUT after the device's request timeout.
 * Recoverable: all that is durable is in the store, and on a recoverable device the cache lives
 * in a file of the device's (tmpfs) that the next driver instance adopts, so a driver killed
 * loses no acknowledged write either; a hot swap writes everything back before it hands over.
 */
import type { Driver } from '../../driver/driver.js';
import { DriverError } from '../../driver/errors.js';
import type { DriverFactory, DriverOptions } from '../../driver/module.js';
import { parseDuration, parseSize } from '../../util/units.js';
import { deviceRunDir } from '../../util/paths.js';
import { ChunkCache } from './cache.js';
import { CacheMemory } from './cache-memory.js';
import { ObjectStore, parseS3Url, type StoreOptions } from './store.js';
import { mapLength, tagOf, takenBy, Volume } from './volume.js';

export const usage = 's3://BUCKET[/PREFIX]';
export const description = 'a device in an S3-compatible object store: chunk objects, a write-back cache, one writer (recoverable)';
export const options = {
  create: { type: 'boolean', description: 'create the volume if there is none (give --size)' },
  'chunk-size': { type: 'string', description: 'bytes per chunk object, for --create (default 1M)' },
  'cache-size': { type: 'string', description: 'bytes of chunks cached in memory (default 256M)' },
  readahead: { type: 'string', description: 'bytes read ahead of reads in order (default 4M)' },
  connections: { type: 'string', description: 'connections to the store at most (default 32)' },
  endpoint: { type: 'string', description: 'the store\'s URL (default AWS_ENDPOINT_URL, else AWS S3)' },
  lease: { type: 'string', description: 'how long the volume stays this driver\'s without renewal (default 15s)' },
} as const satisfies DriverOptions;

export interface S3Options extends StoreOptions {
  /** Create the volume if there is none, of the device's size. */
  create?: boolean;
  chunkSize?: number;
  cacheSize?: number;
  readahead?: number;
  leaseMs?: number;
}

interface S3State {
  store: ObjectStore;
  volume: Volume;
  cache: ChunkCache;
  memory: CacheMemory;
}

/** How long `bdus run` waits for the store before it says it cannot reach it. */
const STARTUP_MS = 10_000;

const log = (line: string) => process.stderr.write(`bdus: ${line}\n`);

/** Reads the volume's head (if any) to learn its size, and returns the driver for it. */
export async function s3(url: string, options: S3Options = {}): Promise<Driver<S3State>> {
  const where = parseS3Url(url);
  const chunkSize = options.chunkSize ?? 1 << 20;
  if (chunkSize < 4096 || chunkSize > 64 << 20 || (chunkSize & (chunkSize - 1)) !== 0) {
    throw new DriverError('EINVAL', `s3: a chunk size of ${chunkSize} bytes: a power of two from 4K to 64M`);
  }
  const probe = new ObjectStore(where, options, log);
  let found: Awaited<ReturnType<typeof Volume.inspect>>;
  try {
    found = await Volume.inspect(probe, undefined, Date.now() + STARTUP_MS);
    // Ceph's gateway ignores If-Match and If-None-Match in versioned buckets: no fencing there.
    const versioning = await probe.versioning(Date.now() + STARTUP_MS);
    if (versioning) throw new DriverError('EINVAL', `s3: bucket '${where.bucket}' is versioned (${versioning}): keep volumes in an unversioned bucket (conditional puts, which keep one writer per volume, are not atomic in versioned ones)`);
  } finally {
    probe.destroy();
  }
  if (!found && !options.create) throw new DriverError('ENOENT', `s3: there is no volume at ${url} (give --create and --size to make one)`);
  const size = found?.head.size;

  const settings = (ctx: { id: bigint; attributes: { requestTimeout: number } }) => ({
    device: String(ctx.id),
    leaseMs: options.leaseMs ?? 15_000,
    timeoutMs: ctx.attributes.requestTimeout,
    log,
  });

  return {
    attributes: { ...(size === undefined ? {} : { size }), maxConcurrentCallbacks: 64 },

    async validate(ctx) {
      if (size !== undefined && ctx.attributes.size !== size) {
        throw new DriverError('EINVAL', `s3: the volume at ${url} is ${size} bytes; the device would be ${ctx.attributes.size}`);
      }
      // Refuses a volume another device holds, without taking it (the current driver may hold it: a rerun).
      const store = new ObjectStore(where, options, log);
      try {
        await Volume.inspect(store, String(ctx.id), Date.now() + STARTUP_MS);
      } finally {
        store.destroy();
      }
    },

    async initialize(ctx) {
      const store = new ObjectStore(where, options, log);
      try {
        if (size === undefined) await Volume.create(store, ctx.attributes.size, chunkSize, Date.now() + STARTUP_MS);
        let memory: CacheMemory | undefined;
        const volume = await Volume.take(store, settings(ctx), (head) => {
          const geometry = {
            tag: tagOf(store, head),
            chunkSize: head.chunkSize,
            capacity: Math.max(4, Math.floor((options.cacheSize ?? 256 << 20) / head.chunkSize)),
            blocksPerChunk: head.chunkSize / ctx.attributes.logicalBlockSize,
            mapLength: mapLength(head),
          };
          // A recoverable device's cache outlives its driver: the next one adopts what it had not written back.
          if (!ctx.attributes.recoverable) memory = CacheMemory.anonymous(geometry);
          else {
            const made = CacheMemory.file(`${deviceRunDir(ctx.id)}/s3-cache`, geometry, head.epoch, takenBy(head, String(ctx.id)));
            memory = made.memory;
            return { map: memory.map, adopted: made.adopted };
          }
          return { map: memory.map, adopted: false };
        });
        memory!.epoch = volume.epoch;
        const cache = new ChunkCache(store, volume, memory!, {
          readahead: options.readahead ?? 4 << 20,
          connections: options.connections ?? 32,
          blockSize: ctx.attributes.logicalBlockSize,
          timeoutMs: ctx.attributes.requestTimeout,
          log,
        });
        ctx.state = { store, volume, cache, memory: memory! };
        // What the last driver left is written back now, not at the next flush.
        if (cache.adopted > 0) void cache.flush().catch((error: unknown) => log(`s3: writing back the adopted cache: ${(error as Error).message}`));
      } catch (error) {
        store.destroy();
        throw error;
      }
    },

    async terminate(ctx) {
      const { store, volume, cache, memory } = ctx.state;
      try {
        if (!volume.fenced) await cache.flush();
        await volume.release();
        memory.remove(); // all written back: nothing for a next driver to adopt
      } finally {
        store.destroy();
      }
    },

    read: (buffer, offset, ctx) => ctx.state.cache.read(buffer, offset),

    write(data, offset, ctx) {
      refuseIfFenced(ctx.state);
      return ctx.state.cache.write(data, offset);
    },

    async fuaWrite(data, offset, ctx) {
      refuseIfFenced(ctx.state);
      await ctx.state.cache.write(data, offset);
      await ctx.state.cache.flushRange(offset, data.length);
    },

    flush: (ctx) => ctx.state.cache.flush(),

    // An object store allocates nothing: zeros are no object, whether the range may unmap or not.
    writeZeros: (offset, length, _mayUnmap, ctx) => ctx.state.cache.zeroRange(offset, length),

    discard: (offset, length, ctx) => ctx.state.cache.zeroRange(offset, length),

    extents: (offset, length, ctx) => ctx.state.cache.extents(offset, length),
  };
}

/** A fenced writer stops taking writes: another driver owns the volume now. */
function refuseIfFenced(state: S3State): void {
  if (state.volume.fenced) throw new DriverError('EIO', 's3: another writer took the volume: this driver writes no more');
}

function sizeOption(name: string, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  return parseSize(String(value), `--${name}`);
}

const factory: DriverFactory<S3State> = (args, values) => {
  if (args.length !== 1) throw new DriverError('EINVAL', `usage: bdus run s3 ${usage} [--create --size SIZE] [--chunk-size SIZE] [--cache-size SIZE] ...`);
  const connections = values.connections === undefined ? undefined : Number(values.connections);
  if (connections !== undefined && !(Number.isInteger(connections) && connections >= 1 && connections <= 256)) {
    throw new DriverError('EINVAL', `--connections ${String(values.connections)}: expected a whole number from 1 to 256`);
  }
  return s3(args[0]!, {
    create: values.create === true,
    chunkSize: sizeOption('chunk-size', values['chunk-size']),
    cacheSize: sizeOption('cache-size', values['cache-size']),
    readahead: sizeOption('readahead', values.readahead),
    connections,
    endpoint: values.endpoint === undefined ? undefined : String(values.endpoint),
    leaseMs: values.lease === undefined ? undefined : parseDuration(String(values.lease), '--lease'),
  });
};
export default factory;
