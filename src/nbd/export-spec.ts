/**
 * What an NBD export is, for the server and each phase of its connections: the export's
 * settings and what its driver's callbacks let it offer.
 */
import type { SecureContext } from 'node:tls';
import type { EffectiveAttributes } from '../driver/attributes.js';
import type { RequestCallback } from '../driver/callbacks.js';
import type { RequestLayer } from '../request/request-layer.js';
import type { ExportLimits } from './limits.js';
import { Flag } from './protocol.js';

/** Largest read or write payload a client may send (advertised as the maximum block size). */
export const MAX_PAYLOAD = 32 << 20;

export interface NbdExport {
  /** The export's name; a client asking for "" gets it too. */
  readonly name: string;
  readonly description: string;
  readonly attributes: EffectiveAttributes;
  readonly readOnly: boolean;
  /** The driver's request callbacks: they decide the transmission flags. */
  readonly callbacks: readonly RequestCallback[];
  readonly requests: RequestLayer;
  readonly log: (line: string) => void;
  /** TLS through STARTTLS; absent: the server offers none. */
  readonly tls?: NbdTls;
  /** What clients may do and hold (limits.ts); absent: no limits (the kernel's own connection). */
  readonly limits?: ExportLimits;
}

/** How an export offers TLS (NBD_OPT_STARTTLS). */
export interface NbdTls {
  readonly context: SecureContext;
  /** Pre-shared keys by identity (TLS-PSK, instead of certificates). */
  readonly keys?: ReadonlyMap<string, Buffer>;
  /** Refuse everything but STARTTLS and ABORT until the client has started TLS. */
  readonly required: boolean;
  /** Ask for a client certificate and refuse clients without one the CA signed. */
  readonly verifyPeer: boolean;
}

/** Where to listen: a Unix socket path, or a TCP host and port. */
export type ListenAddress = { unix: string } | { host: string; port: number };

/** What the export offers, as NBD transmission flags: they follow the driver's callbacks. */
export function transmissionFlags(exported: Pick<NbdExport, 'callbacks' | 'readOnly'>, structured: boolean): number {
  const has = (name: RequestCallback) => exported.callbacks.includes(name);
  let flags = Flag.HAS_FLAGS | Flag.SEND_FLUSH | Flag.SEND_FUA | Flag.CAN_MULTI_CONN;
  if (exported.readOnly) flags |= Flag.READ_ONLY;
  else {
    if (has('discard')) flags |= Flag.SEND_TRIM;
    flags |= Flag.SEND_WRITE_ZEROES;
    if (has('writeZeros')) flags |= Flag.SEND_FAST_ZERO;
  }
  if (structured) flags |= Flag.SEND_DF;
  return flags;
}
