/**
 * http: a read-only device whose bytes are a file on an HTTP(S) server, read with range requests
 * (Node's own fetch), through a cache in memory.
 *
 *   bdus run http https://example.com/images/disk.img [--cache 256M] [--block 256K]
 *   import { http } from 'bdus/drivers';  run(await http('https://...'))
 *
 * The server must answer range requests (`Accept-Ranges: bytes`, 206 Partial Content); the
 * device's size is the file's. Reads are cut into blocks; a block not in the cache is fetched,
 * runs of missing blocks in one request, and a block that several requests want at once is
 * fetched once. The cache keeps the blocks used most recently, up to `--cache` bytes.
 *
 * Recoverable: the data is the server's; a new driver instance starts with an empty cache.
 * A failed fetch fails the request with EIO (the request layer tries a read again, up to
 * transferTries); put the retry filter in front for longer outages.
 */
import type { Driver } from '../driver/driver.js';
import { DriverError } from '../driver/errors.js';
import type { DriverFactory, DriverOptions } from '../driver/module.js';
import { parseSize } from '../util/units.js';

export const usage = 'URL';
export const description = 'a read-only device from a file on an HTTP(S) server, by range requests, cached (recoverable)';
export const options = {
  cache: { type: 'string', description: 'bytes of blocks kept in memory (default 64M)' },
  block: { type: 'string', description: 'bytes fetched at least per request (default 256K)' },
} as const satisfies DriverOptions;

export interface HttpOptions {
  /** Bytes kept in memory (default 64 MiB). */
  cache?: number;
  /** The unit fetched and cached (default 256 KiB), a multiple of 4096. */
  block?: number;
  /** Extra request headers (authorization, say). */
  headers?: Record<string, string>;
}

/** The blocks in memory, least recently used first (a Map keeps insertion order). */
class BlockCache {
  private readonly blocks = new Map<number, Buffer>();
  private readonly fetching = new Map<number, Promise<Buffer>>();

  constructor(private readonly capacity: number) {}

  get(index: number): Buffer | Promise<Buffer> | undefined {
    const block = this.blocks.get(index);
    if (block) {
      this.blocks.delete(index);
      this.blocks.set(index, block);
      return block;
    }
    return this.fetching.get(index);
  }

  /** Fetches blocks [first, last] with `fetchRun`, sharing the fetch with whoever asks meanwhile. */
  load(first: number, last: number, fetchRun: () => Promise<Buffer[]>): void {
    const run = fetchRun();
    run.catch(() => undefined);
    for (let i = first; i <= last; i++) {
      const one = run.then((blocks) => blocks[i - first]!);
      one.catch(() => undefined);
      this.fetching.set(i, one);
    }
    void run.then(
      (blocks) => {
        for (let i = first; i <= last; i++) {
          this.fetching.delete(i);
          this.blocks.set(i, blocks[i - first]!);
        }
        while (this.blocks.size > this.capacity) this.blocks.delete(this.blocks.keys().next().value!);
      },
      () => {
        for (let i = first; i <= last; i++) this.fetching.delete(i);
      },
    );
  }
}

/** Asks the server for the file's size and whether it serves ranges; returns the driver. */
export async function http(url: string, options: HttpOptions = {}): Promise<Driver> {
  const block = options.block ?? 256 << 10;
  if (block < 4096 || block % 4096 !== 0) throw new DriverError('EINVAL', `http: block ${block} must be a multiple of 4096`);
  const headers = options.headers ?? {};
  let probe: Response;
  try {
    probe = await fetch(url, { headers: { ...headers, Range: 'bytes=0-0' } });
  } catch (error) {
    throw new DriverError('ENOLINK', `http: cannot reach ${url}: ${(error as Error).cause instanceof Error ? ((error as Error).cause as Error).message : (error as Error).message}`);
  }
  await probe.body?.cancel();
  if (probe.status !== 206) {
    throw new DriverError('EINVAL', `http: ${url} answered ${probe.status} ${probe.statusText} to a range request (the server must serve byte ranges)`);
  }
  const total = Number(/\/(\d+)$/.exec(probe.headers.get('content-range') ?? '')?.[1]);
  if (!Number.isSafeInteger(total) || total < 4096) throw new DriverError('EINVAL', `http: ${url} gave no usable size (Content-Range: ${probe.headers.get('content-range')})`);
  const size = total - (total % 4096);
  const cache = new BlockCache(Math.max(1, Math.floor((options.cache ?? 64 << 20) / block)));

  async function fetchRun(first: number, last: number): Promise<Buffer[]> {
    const start = first * block;
    const end = Math.min(size, (last + 1) * block) - 1;
    const response = await fetch(url, { headers: { ...headers, Range: `bytes=${start}-${end}` } });
    if (response.status !== 206) {
      await response.body?.cancel();
      throw new DriverError('EIO', `http: bytes ${start}-${end} of ${url}: ${response.status} ${response.statusText}`);
    }
    const body = Buffer.from(await response.arrayBuffer());
    if (body.length !== end - start + 1) throw new DriverError('EIO', `http: bytes ${start}-${end} of ${url}: ${body.length} bytes came`);
    const blocks: Buffer[] = [];
    for (let at = 0; at < body.length; at += block) blocks.push(body.subarray(at, at + block));
    return blocks;
  }

  return {
    attributes: { size, maxConcurrentCallbacks: 32 },
    async read(buffer, offset) {
      const first = Math.floor(offset / block);
      const last = Math.floor((offset + buffer.length - 1) / block);
      // Runs of blocks neither cached nor coming are fetched with one request each.
      for (let i = first; i <= last; ) {
        if (cache.get(i) !== undefined) {
          i++;
          continue;
        }
        let j = i;
        while (j < last && cache.get(j + 1) === undefined) j++;
        const [from, to] = [i, j];
        cache.load(from, to, () => fetchRun(from, to));
        i = j + 1;
      }
      for (let i = first; i <= last; i++) {
        // A block may have left the cache while this read waited for another.
        if (cache.get(i) === undefined) cache.load(i, i, () => fetchRun(i, i));
        const data = await cache.get(i)!;
        const blockStart = i * block;
        const from = Math.max(offset, blockStart);
        const to = Math.min(offset + buffer.length, blockStart + data.length);
        data.copy(buffer, from - offset, from - blockStart, to - blockStart);
      }
    },
  };
}

const factory: DriverFactory = (args, values) => {
  if (args.length !== 1) throw new DriverError('EINVAL', 'usage: bdus run http URL [--cache SIZE] [--block SIZE]');
  return http(args[0]!, {
    cache: values.cache === undefined ? undefined : parseSize(String(values.cache), '--cache'),
    block: values.block === undefined ? undefined : parseSize(String(values.block), '--block'),
  });
};
export default factory;
