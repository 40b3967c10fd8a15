/**
 * An export's TLS (STARTTLS): certificates or pre-shared keys as nbdkit and qemu-nbd take them,
 * loaded from files into what the NBD server offers (NbdTls), with a clear error naming the file
 * that is missing or bad.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import { BdusError } from '../driver/errors.js';
import type { NbdTls } from './export-spec.js';

/** TLS for an export, with certificates or pre-shared keys as nbdkit and qemu-nbd take them. */
export interface TlsOptions {
  /**
   * A directory with server-cert.pem and server-key.pem (PEM), and ca-cert.pem to check client
   * certificates against (with verifyPeer). Either this or `psk`.
   */
  certificates?: string;
  /**
   * A file of pre-shared keys, one `identity:hexkey` per line (what GnuTLS's `psktool -u alice
   * -p FILE` writes, and nbdkit's --tls-psk and qemu's tls-creds-psk read). Either this or
   * `certificates`.
   */
  psk?: string;
  /** Refuse clients that do not start TLS (default false: TLS is offered, not required). */
  required?: boolean;
  /** Require a client certificate signed by ca-cert.pem (default false; certificates only). */
  verifyPeer?: boolean;
}

/**
 * Cipher suites for TLS-PSK up to TLS 1.2 (OpenSSL leaves PSK out by default); TLS 1.3 takes a
 * pre-shared key with its usual suites.
 */
const PSK_CIPHERS = 'ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256';

/** Shortest key accepted: psktool's default is 32 bytes; 16 is the least a key should have. */
const MIN_PSK_BYTES = 16;

/** Loads an export's TLS certificates or keys; a clear error naming the file that is missing or bad. */
export function loadTls(options: TlsOptions): NbdTls {
  if ((options.certificates === undefined) === (options.psk === undefined)) {
    throw new BdusError('EINVAL', 'TLS needs either certificates (a directory) or pre-shared keys (a file), not both and not neither');
  }
  const read = (path: string) => {
    try {
      return readFileSync(path);
    } catch (error) {
      throw new BdusError('EINVAL', `TLS: cannot read ${path}: ${(error as Error).message}`);
    }
  };
  const required = options.required ?? false;
  if (options.psk !== undefined) {
    if (options.verifyPeer) throw new BdusError('EINVAL', 'TLS: verifying a peer certificate needs certificates, not pre-shared keys');
    return { context: createSecureContext({ ciphers: PSK_CIPHERS }), keys: parsePskFile(options.psk, read(options.psk).toString('utf8')), required, verifyPeer: false };
  }
  const file = (name: string) => read(join(options.certificates!, name));
  let context;
  try {
    context = createSecureContext({
      cert: file('server-cert.pem'),
      key: file('server-key.pem'),
      ...(options.verifyPeer ? { ca: file('ca-cert.pem') } : {}),
    });
  } catch (error) {
    if (error instanceof BdusError) throw error;
    throw new BdusError('EINVAL', `TLS: the certificates in ${options.certificates} are unusable: ${(error as Error).message}`);
  }
  return { context, required, verifyPeer: options.verifyPeer ?? false };
}

/** `identity:hexkey` lines (blank lines and # comments skipped) -> keys by identity. */
export function parsePskFile(path: string, text: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.lastIndexOf(':');
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^([0-9a-fA-F]{2})+$/.test(hex) || hex.length / 2 < MIN_PSK_BYTES) {
      throw new BdusError('EINVAL', `TLS: ${path} line ${i + 1}: expected identity:hexkey with a key of at least ${MIN_PSK_BYTES} bytes (psktool -u NAME -p ${path})`);
    }
    keys.set(identity, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new BdusError('EINVAL', `TLS: ${path} has no keys (psktool -u NAME -p ${path} makes one)`);
  return keys;
}
