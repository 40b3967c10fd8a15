/**
 * `bdus export`: serve a driver over NBD, in the foreground, until SIGTERM or SIGINT.
 */
import { BdusError } from '../driver/errors.js';
import { runExport, type TlsOptions } from '../nbd/export.js';
import type { ListenAddress } from '../nbd/server.js';
import { parseDriverCommand } from './driver-command.js';
import { driverHelp, makeDriver } from './load-driver.js';
import { attributeHelp, attributeOptions, attributesFromFlags } from './options.js';

export const EXPORT_HELP = `usage: bdus export <driver> [ARGS...] [--listen ADDRESS] [--name NAME] [--description TEXT] [--<attribute> VALUE ...] [driver options] [-- ARGS...]

Serves <driver> (a module path, or an example: ram, zero, loop) over NBD, in the foreground, until
SIGTERM or SIGINT. Prints the export's URI once it listens. Any NBD client can use it: qemu-img,
nbdinfo, nbdcopy, nbdsh, fio's nbd engine, nbd-client.

  --listen ADDRESS    unix:PATH, HOST:PORT or PORT (default 127.0.0.1:10809: loopback only)
  --name NAME         the export's name (default ""; a client asking for "" gets it too)
  --description TEXT  a description clients may ask for
  --tls MODE          off (default), on (offered through STARTTLS) or require (clients
                      that do not start TLS are refused)
  --tls-certificates DIR
                      server-cert.pem and server-key.pem (and ca-cert.pem with
                      --tls-verify-peer); needed with --tls on or require
  --tls-verify-peer   require a client certificate signed by DIR/ca-cert.pem

attributes:
${attributeHelp()}
`;

const DEFAULT_PORT = 10809;

export const EXPORT_OPTIONS = {
  ...attributeOptions(),
  listen: { type: 'string' },
  name: { type: 'string' },
  description: { type: 'string' },
  tls: { type: 'string' },
  'tls-certificates': { type: 'string' },
  'tls-verify-peer': { type: 'boolean' },
} as const;

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

/** --tls, --tls-certificates, --tls-verify-peer -> TLS options (or none), checked. */
export function tlsFromFlags(mode = 'off', certificates?: string, verifyPeer?: boolean): TlsOptions | undefined {
  if (!['off', 'on', 'require'].includes(mode)) throw new BdusError('EINVAL', `invalid --tls '${mode}': expected off, on or require`);
  if (mode === 'off') {
    if (certificates || verifyPeer) throw new BdusError('EINVAL', '--tls-certificates and --tls-verify-peer need --tls on or require');
    return undefined;
  }
  if (!certificates) throw new BdusError('EINVAL', `--tls ${mode} needs --tls-certificates DIR (server-cert.pem, server-key.pem)`);
  return { certificates, required: mode === 'require', verifyPeer: verifyPeer ?? false };
}

export async function exportCommand(argv: string[]): Promise<number> {
  const line = await parseDriverCommand('export', argv, EXPORT_OPTIONS, 0);
  if (line.help) {
    process.stdout.write(`${EXPORT_HELP}${line.driver ? `\n${driverHelp(line.driver)}` : ''}`);
    return 0;
  }
  const values = line.values as Record<string, string | undefined>;
  const attributes = attributesFromFlags(line.values);
  const listen = parseListen(values.listen ?? `127.0.0.1:${DEFAULT_PORT}`);
  const tls = tlsFromFlags(values.tls, values['tls-certificates'], line.values['tls-verify-peer'] as boolean | undefined);
  const driver = await makeDriver(line.driver!, line.args, line.options);
  await runExport(driver, { attributes, listen, name: values.name ?? '', description: values.description ?? '', tls });
  return 0;
}
