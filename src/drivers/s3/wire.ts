/**
 * The s3 driver's object requests on the wire: GET, PUT and DELETE of one object as one signed
 * HTTP request over a kept connection (http.ts), the body read straight into the caller's buffer.
 *
 * Why not the SDK's commands for these: on this project's machines a GetObjectCommand costs
 * 1.9-3.7 ms of CPU in the driver's process for a 4 KiB range and 5-7 ms for 1 MiB (its
 * middleware stack, endpoint rules, schema (de)serialisation, a stream per body, and node:http's
 * copies); the same requests signed and sent here cost 0.5-0.9 ms and 1.3-1.6 ms
 * (docs/object-store.md, "Measured"). Every chunk read and write-back is one of these: this is
 * where the driver's CPU went, on a machine it shares with the gateway. What the SDK does well
 * is still the SDK's: the endpoint (its own resolver: AWS partitions, path or virtual-host style,
 * custom endpoints), the credentials (its provider chain: environment, profiles, config files,
 * SSO, instance roles, refreshed), and the signature (its SigV4 signer). Listing and bucket
 * queries, which need its XML parsing and run once, go through its client.
 *
 * Errors look like the SDK's (`name` is the store's error code, `$metadata.httpStatusCode` its
 * status), so one retry rule (store.ts) judges both.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { SignatureV4 } from '@smithy/signature-v4';
import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';
import { DriverError } from '../../driver/errors.js';
import { HttpClient } from './http.js';

/** The SHA-256 the signer asks for, from node:crypto (the SDK's own is this, in a package of its own). */
class Sha256 {
  private readonly hash: Hash | Hmac;
  constructor(secret?: Bytes) {
    this.hash = secret === undefined ? createHash('sha256') : createHmac('sha256', bytes(secret));
  }
  update(data: Bytes): void {
    this.hash.update(bytes(data));
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(this.hash.digest());
  }
}

type Bytes = string | ArrayBuffer | ArrayBufferView;
const bytes = (data: Bytes): string | Uint8Array =>
  typeof data === 'string' ? data : ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data);

const EMPTY_SHA256 = createHash('sha256').digest('hex');

/** A failure the store answered: shaped as the SDK's errors are. */
export class StoreResponseError extends Error {
  readonly $metadata: { httpStatusCode: number };
  constructor(status: number, code: string | undefined, message: string | undefined) {
    super(`${status} ${code ?? ''}${message ? `: ${message}` : ''}`.trim());
    this.name = code ?? `HTTP${status}`;
    this.$metadata = { httpStatusCode: status };
  }
}

export interface WireRequest {
  method: 'GET' | 'PUT' | 'DELETE';
  key: string;
  /** GET: where the body goes (from its start); longer bodies are an error. */
  into?: Buffer;
  /** PUT: the object's bytes. */
  body?: Buffer;
  headers?: Record<string, string>;
  signal: AbortSignal;
}

export interface WireResponse {
  /** Bytes read into `into`. */
  readonly length: number;
  /** Unquoted. */
  readonly etag: string;
}

export class Wire {
  private readonly signer: SignatureV4;
  private readonly http: HttpClient;
  private readonly base: URL;

  constructor(client: S3Client, bucket: string, region: string, endpoint: string | undefined, pathStyle: boolean, sockets: number) {
    const resolved = client.config.endpointProvider({ Bucket: bucket, Region: region, ForcePathStyle: pathStyle, UseFIPS: false, UseDualStack: false, Accelerate: false, ...(endpoint ? { Endpoint: endpoint } : {}) });
    this.base = new URL(resolved.url.href.replace(/\/?$/, '/'));
    const scheme = (resolved.properties?.authSchemes as Array<{ name?: string; signingName?: string; signingRegion?: string }> | undefined)?.find((s) => s.name === 'sigv4');
    this.signer = new SignatureV4({
      service: scheme?.signingName ?? 's3',
      region: scheme?.signingRegion ?? region,
      credentials: client.config.credentials,
      sha256: Sha256,
      uriEscapePath: false, // S3 signs the path as sent
    });
    const tls = this.base.protocol === 'https:';
    this.http = new HttpClient({ tls, hostname: this.base.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(this.base.port) || (tls ? 443 : 80) }, sockets);
  }

  async send(r: WireRequest): Promise<WireResponse> {
    const path = this.base.pathname + r.key.split('/').map(encodeSegment).join('/');
    const headers: Record<string, string> = {
      host: this.base.host,
      // The payload is signed: over plain HTTP nothing else would tell a damaged body.
      'x-amz-content-sha256': r.body ? createHash('sha256').update(r.body).digest('hex') : EMPTY_SHA256,
      ...r.headers,
    };
    if (r.body) headers['content-length'] = String(r.body.length);
    const signed = await this.signer.sign({ method: r.method, protocol: this.base.protocol, hostname: this.base.hostname, path, query: {}, headers });
    const answer = await this.http.send({ method: r.method, path, headers: signed.headers, body: r.body, into: r.into, signal: r.signal }).catch((error: unknown) => {
      if ((error as { code?: string }).code !== 'EMSGSIZE') throw error;
      throw new DriverError('EIO', `s3: ${r.key} is longer than ${r.into?.length} bytes: not this volume's`);
    });
    if (answer.status >= 300) {
      const field = (name: string) => new RegExp(`<${name}>([^<]*)</${name}>`).exec(answer.text)?.[1];
      throw new StoreResponseError(answer.status, field('Code'), field('Message'));
    }
    return { length: answer.length, etag: (answer.headers.get('etag') ?? '').replaceAll('"', '') };
  }

  destroy(): void {
    this.http.destroy();
  }
}

/** A key's path segment as S3 wants it: RFC 3986 unreserved characters kept, the rest escaped. */
function encodeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}
