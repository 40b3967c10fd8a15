/**
 * The object store under an s3 volume: get, put (conditional too), delete and list of keys under
 * the volume's prefix, through the AWS SDK, with bdus's retry rule: a transient failure (a 5xx,
 * a 429, a connection reset or refused, a timeout) is tried again after a growing pause until the
 * operation's deadline, then fails with ETIMEDOUT; anything else (403, 404 where it matters, a
 * missing bucket) fails at once with a clear message.
 *
 * Gets, puts and deletes, the driver's every chunk and commit, are single signed requests
 * (wire.ts: the SDK's commands cost more CPU than the gateway's work); listing and bucket
 * queries use the SDK's client, whose own retries are off (one attempt per call): ours keep to
 * the device's request timeout, the SDK's would not.
 */
import { GetBucketVersioningCommand, ListObjectsV2Command, S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import { setTimeout as sleep } from 'node:timers/promises';
import { DriverError } from '../../driver/errors.js';
import { Wire } from './wire.js';

// The SDK is pinned (package.json); its warning is about later releases needing Node 22.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Where a volume lives: `s3://bucket/prefix`. */
export interface VolumeUrl {
  readonly bucket: string;
  /** '' or ends with '/'. */
  readonly prefix: string;
}

export function parseS3Url(url: string): VolumeUrl {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url);
  if (!m) throw new DriverError('EINVAL', `s3: '${url}' is not s3://BUCKET[/PREFIX] (a bucket name is 3-63 of a-z, 0-9, '.', '-')`);
  const prefix = (m[2] ?? '').replace(/\/+$/, '');
  if (prefix.split('/').some((part) => part === '' || part === '.' || part === '..') && prefix !== '') {
    throw new DriverError('EINVAL', `s3: '${url}': the prefix has an empty, '.' or '..' part`);
  }
  return { bucket: m[1]!, prefix: prefix === '' ? '' : `${prefix}/` };
}

export interface StoreOptions {
  /** The endpoint (default: AWS_ENDPOINT_URL, else AWS S3 for the region). */
  endpoint?: string;
  /** Connections to the store at most (default 32). */
  connections?: number;
  /** Path-style URLs (default: with an endpoint given, as Ceph, MinIO and Garage want). */
  pathStyle?: boolean;
}

/** The outcome of a conditional put that lost: someone else changed the object. */
export class PreconditionFailed extends Error {
  constructor(key: string) {
    super(`${key} changed under us`);
    this.name = 'PreconditionFailed';
  }
}

/** An object as read: its bytes were copied into the buffer given; its ETag, unquoted. */
export interface Got {
  readonly length: number;
  readonly etag: string;
}

const TRANSIENT_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED', 'UND_ERR_SOCKET']);

export class ObjectStore {
  readonly client: S3Client;
  private readonly wire: Wire;

  constructor(
    readonly url: VolumeUrl,
    options: StoreOptions = {},
    /** Where retries are told (one line per failure kind until it succeeds). */
    private readonly log: (line: string) => void = () => undefined,
  ) {
    const endpoint = options.endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL;
    const sockets = options.connections ?? 32;
    const region = process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
    const pathStyle = options.pathStyle ?? endpoint !== undefined;
    this.client = new S3Client({
      ...(endpoint ? { endpoint } : {}),
      region,
      forcePathStyle: pathStyle,
      maxAttempts: 1,
      // Ceph's gateway (Pacific) has no aws-chunked trailers: checksums only where S3 requires them.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        httpAgent: { keepAlive: true, maxSockets: sockets },
        httpsAgent: { keepAlive: true, maxSockets: sockets },
        connectionTimeout: 5000,
      },
    });
    this.wire = new Wire(this.client, url.bucket, region, endpoint, pathStyle, sockets);
  }

  key(name: string): string {
    return this.url.prefix + name;
  }

  /**
   * Reads an object into `into` (from its start), or returns null if there is none. An object
   * longer than `into` is an error (not this volume's). With `from`, only `into.length` bytes
   * from there (a range request).
   */
  get(name: string, into: Buffer, deadline: number, from?: number): Promise<Got | null> {
    const range = from === undefined ? undefined : `bytes=${from}-${from + into.length - 1}`;
    return this.retry(`GET ${name}`, deadline, async (signal) => {
      try {
        return await this.wire.send({ method: 'GET', key: this.key(name), into, signal, ...(range ? { headers: { range } } : {}) });
      } catch (error) {
        if (status(error) === 404 && (error as { name?: string }).name !== 'NoSuchBucket') return null;
        throw error;
      }
    });
  }

  /** Writes an object; with `ifMatch` (an ETag) or `ifNoneMatch` only if it is still that, or absent. */
  put(name: string, body: Buffer, deadline: number, condition: { ifMatch?: string; ifNoneMatch?: boolean } = {}): Promise<string> {
    return this.retry(`PUT ${name}`, deadline, async (signal) => {
      try {
        const headers: Record<string, string> = {};
        // RGW compares If-Match with the stored ETag unquoted (ceph-facts.md, section 5).
        if (condition.ifMatch !== undefined) headers['if-match'] = condition.ifMatch;
        if (condition.ifNoneMatch) headers['if-none-match'] = '*';
        return (await this.wire.send({ method: 'PUT', key: this.key(name), body, headers, signal })).etag;
      } catch (error) {
        const conditional = condition.ifMatch !== undefined || condition.ifNoneMatch === true;
        // RGW answers a conditional put that lost a race with 412, or 500 from its guard (ECANCELED).
        if (conditional && (status(error) === 412 || status(error) === 409 || status(error) === 500)) throw new PreconditionFailed(name);
        throw error;
      }
    });
  }

  delete(name: string, deadline: number): Promise<void> {
    return this.retry(`DELETE ${name}`, deadline, async (signal) => {
      await this.wire.send({ method: 'DELETE', key: this.key(name), signal });
    });
  }

  /** The names (without the volume's prefix) under `under`, in order. */
  async list(under: string, deadline: number): Promise<string[]> {
    const names: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.retry(`LIST ${under}`, deadline, (signal) =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.url.bucket, Prefix: this.key(under), ContinuationToken: token }), { abortSignal: signal }),
      );
      for (const o of page.Contents ?? []) if (o.Key) names.push(o.Key.slice(this.url.prefix.length));
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return names;
  }

  /** The bucket's versioning ('Enabled', 'Suspended'), or undefined if it never had any (or we may not ask). */
  async versioning(deadline: number): Promise<string | undefined> {
    try {
      return await this.retry('GET versioning', deadline, async (signal) => (await this.client.send(new GetBucketVersioningCommand({ Bucket: this.url.bucket }), { abortSignal: signal })).Status);
    } catch (error) {
      if ((error as { code?: string }).code === 'EACCES') return undefined; // not allowed to ask: the user's call
      throw error;
    }
  }

  destroy(): void {
    this.wire.destroy();
    this.client.destroy();
  }

  /**
   * Calls `call` until it succeeds, fails for good, or `deadline` (ms since the epoch) passes:
   * then ETIMEDOUT. Each call is abandoned at the deadline too.
   */
  private async retry<T>(what: string, deadline: number, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
    let told = '';
    for (let pause = 50; ; pause = Math.min(pause * 2, 2000)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new DriverError('ETIMEDOUT', `s3: ${what} did not succeed before the request timeout${told ? ` (last: ${told})` : ''}`);
      try {
        const result = await call(AbortSignal.timeout(left));
        if (told) this.log(`s3: ${what} succeeded again`);
        return result;
      } catch (error) {
        if (error instanceof PreconditionFailed || error instanceof DriverError) throw error;
        if (!transient(error)) throw fatal(error, this.url, what);
        const why = describe(error);
        if (why !== told) this.log(`s3: ${what} failed (${why}); trying again until the request timeout`);
        told = why;
        await sleep(Math.min(pause, Math.max(0, deadline - Date.now())));
      }
    }
  }
}

function status(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

function transient(error: unknown): boolean {
  const s = status(error);
  if (s !== undefined) return s >= 500 || s === 429 || s === 408;
  const e = error as { code?: string; name?: string; cause?: { code?: string } };
  return TRANSIENT_CODES.has(e.code ?? '') || TRANSIENT_CODES.has(e.cause?.code ?? '') || e.name === 'TimeoutError' || e.name === 'AbortError';
}

function describe(error: unknown): string {
  const s = status(error);
  const e = error as { code?: string; name?: string; message?: string };
  return s !== undefined ? `${s} ${e.name ?? ''}`.trim() : (e.code ?? e.name ?? String(error));
}

/** A failure no retry mends, said as the user can act on it. */
function fatal(error: unknown, url: VolumeUrl, what: string): DriverError {
  const e = error as { name?: string; message?: string };
  const where = `s3://${url.bucket}/${url.prefix}`;
  const s = status(error);
  if (e.name === 'NoSuchBucket') return new DriverError('ENOENT', `s3: there is no bucket '${url.bucket}' (${where})`);
  if (s === 403 || e.name === 'InvalidAccessKeyId' || e.name === 'SignatureDoesNotMatch' || e.name === 'AccessDenied') {
    return new DriverError('EACCES', `s3: the store refused the credentials for ${where} (${e.name ?? s}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the profile`);
  }
  if (error instanceof S3ServiceException) return new DriverError('EIO', `s3: ${what} failed: ${s ?? ''} ${e.name}: ${e.message}`);
  return new DriverError('EIO', `s3: ${what} failed: ${e.message ?? String(error)}`);
}
