/**
 * A one-node Ceph cluster with a RADOS Gateway for a test file (test/ceph/cluster): started once,
 * its environment put in process.env (so every `bdus run s3` the tests start finds the store),
 * and removed after the file's tests, also when they fail.
 */
import { CreateBucketCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { after, before } from 'node:test';
import { must, ROOT, scratch, sh } from './helpers.js';

const CLUSTER = `${ROOT}test/ceph/cluster`;

export interface Cluster {
  readonly dir: string;
  readonly endpoint: string;
  readonly s3: S3Client;
  /** Makes a bucket (buckets are the user's to make: the s3 driver makes volumes in them). */
  bucket(name: string): Promise<string>;
  /** The keys under a prefix. */
  keys(bucket: string, prefix: string): Promise<string[]>;
  stopGateway(): Promise<void>;
  startGateway(): Promise<void>;
}

/** Starts the cluster before the file's tests and removes it after them. */
export function cephCluster(): () => Cluster {
  let cluster: Cluster | undefined;
  const dir = scratch('ceph');
  before(async () => {
    const out = await sh(CLUSTER, ['up', dir], { timeoutMs: 180_000 });
    if (out.code !== 0) {
      await sh(CLUSTER, ['down', dir]);
      throw new Error(`test/ceph/cluster up failed (${out.code}): ${out.stderr}`);
    }
    for (const line of out.stdout.split('\n')) {
      const m = /^export (\w+)=(.*)$/.exec(line);
      if (m) process.env[m[1]!] = m[2]!;
    }
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
    const s3 = new S3Client({ forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
    cluster = {
      dir,
      endpoint: process.env.AWS_ENDPOINT_URL!,
      s3,
      async bucket(name) {
        await s3.send(new CreateBucketCommand({ Bucket: name }));
        return name;
      },
      async keys(bucket, prefix) {
        const keys: string[] = [];
        let token: string | undefined;
        do {
          const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
          keys.push(...(page.Contents ?? []).map((o) => o.Key!));
          token = page.IsTruncated ? page.NextContinuationToken : undefined;
        } while (token);
        return keys;
      },
      stopGateway: async () => void (await must(CLUSTER, ['stop-rgw', dir])),
      startGateway: async () => void (await must(CLUSTER, ['start-rgw', dir], { timeoutMs: 90_000 })),
    };
  });
  after(async () => {
    cluster?.s3.destroy();
    await must(CLUSTER, ['down', dir], { timeoutMs: 120_000 });
  });
  return () => {
    if (!cluster) throw new Error('the Ceph cluster did not start');
    return cluster;
  };
}
