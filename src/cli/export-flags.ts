/**
 * The flags that say how an NBD export is reached and guarded, shared by `bdus export` and
 * `bdus run --export`: where it listens, TLS (certificates or pre-shared keys), and what clients
 * may do (src/nbd/limits.ts).
 */
import { BdusError } from '../driver/errors.js';
import type { TlsOptions } from '../nbd/tls.js';
import { exportLimits, type LimitSettings } from '../nbd/limits.js';
import type { ListenAddress } from '../nbd/server.js';
import { parseDuration, parseSize } from './options.js';

export const EXPORT_FLAG_OPTIONS = {
  tls: { type: 'string' },
  'tls-certificates': { type: 'string' },
  'tls-psk': { type: 'string' },
  'tls-verify-peer': { type: 'boolean' },
  allow: { type: 'string' },
  'max-connections': { type: 'string' },
  'handshake-timeout': { type: 'string' },
  'connection-memory': { type: 'string' },
} as const;

export const EXPORT_FLAG_HELP = `  --tls MODE          off (default), on (offered through STARTTLS) or require (clients
                      that do not start TLS are refused)
  --tls-certificates DIR
                      server-cert.pem and server-key.pem (and ca-cert.pem with
                      --tls-verify-peer)
  --tls-psk FILE      pre-shared keys instead of certificates: identity:hexkey lines
                      (psktool -u NAME -p FILE makes one)
  --tls-verify-peer   require a client certificate signed by DIR/ca-cert.pem
  --allow LIST        TCP clients allowed, comma-separated addresses and CIDR ranges
                      (default: anyone who can reach the address)
  --max-connections N connections served at once (default 64; more are closed)
  --handshake-timeout DURATION
                      a client must finish its handshake, TLS included, in this time
                      (default 10s)
  --connection-memory SIZE
                      bytes one connection's requests and unread replies may hold before
                      its socket stops being read (default 64M)
`;

/** "unix:/run/x.sock", "127.0.0.1:10809", "[::1]:10809", "10809" -> an address. */
export function parseListen(text: string): ListenAddress {
  if (text.startsWith('unix:')) {
    if (text.length === 5) throw new BdusError('EINVAL', 'invalid --listen unix: needs a socket path');
    return { unix: text.slice(5) };
  }
  const match = /^(?:(\[[^\]]+\]|[^:]+):)?(\d+)$/.exec(text);
  const port = match ? Number(match[2]) : NaN;
  if (!match || port > 65535) throw new BdusError('EINVAL', `invalid --listen '${text}': expected unix:PATH, HOST:PORT or PORT`);
  return { host: (match[1] ?? '127.0.0.1').replace(/^\[(.*)\]$/, '$1'), port };
}

type FlagValues = Readonly<Record<string, string | boolean | undefined>>;

/** --tls, --tls-certificates, --tls-psk, --tls-verify-peer -> TLS options (or none), checked. */
export function tlsFromFlags(values: FlagValues): TlsOptions | undefined {
  const mode = (values.tls as string | undefined) ?? 'off';
  const certificates = values['tls-certificates'] as string | undefined;
  const psk = values['tls-psk'] as string | undefined;
  const verifyPeer = values['tls-verify-peer'] as boolean | undefined;
  if (!['off', 'on', 'require'].includes(mode)) throw new BdusError('EINVAL', `invalid --tls '${mode}': expected off, on or require`);
  if (mode === 'off') {
    if (certificates || psk || verifyPeer) throw new BdusError('EINVAL', '--tls-certificates, --tls-psk and --tls-verify-peer need --tls on or require');
    return undefined;
  }
  if (!certificates === !psk) throw new BdusError('EINVAL', `--tls ${mode} needs either --tls-certificates DIR or --tls-psk FILE`);
  if (psk && verifyPeer) throw new BdusError('EINVAL', '--tls-verify-peer checks client certificates: it needs --tls-certificates, not --tls-psk');
  return { ...(certificates ? { certificates } : { psk: psk! }), required: mode === 'require', verifyPeer: verifyPeer ?? false };
}

/** --allow, --max-connections, --handshake-timeout, --connection-memory -> the export's limits, checked now (before the driver starts). */
export function limitsFromFlags(values: FlagValues, listen: ListenAddress | undefined): LimitSettings {
  const text = (name: string) => values[name] as string | undefined;
  const allow = text('allow');
  if (allow !== undefined && listen && 'unix' in listen) {
    throw new BdusError('EINVAL', '--allow is for TCP clients: a Unix socket is guarded by its file permissions');
  }
  const count = text('max-connections');
  if (count !== undefined && !/^\d+$/.test(count)) throw new BdusError('EINVAL', `invalid --max-connections '${count}': expected a whole number`);
  const timeout = text('handshake-timeout');
  const memory = text('connection-memory');
  const settings: LimitSettings = {
    ...(allow !== undefined ? { allow: allow.split(',').map((entry) => entry.trim()) } : {}),
    ...(count !== undefined ? { maxConnections: Number(count) } : {}),
    ...(timeout !== undefined ? { handshakeTimeoutMs: parseDuration(timeout, '--handshake-timeout') } : {}),
    ...(memory !== undefined ? { connectionMemory: parseSize(memory, '--connection-memory') } : {}),
  };
  exportLimits(settings);
  return settings;
}

/** Whether any of these flags was given (they need an export). */
export function anyExportFlag(values: FlagValues): boolean {
  return Object.keys(EXPORT_FLAG_OPTIONS).some((name) => values[name] !== undefined);
}
