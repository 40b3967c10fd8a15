/**
 * `bdus export`: serve a driver over NBD, in the foreground, until SIGTERM or SIGINT.
 */
import { parseArgs } from 'node:util';
import { BdusError } from '../driver/errors.js';
import { runExport } from '../nbd/export.js';
import type { ListenAddress } from '../nbd/server.js';
import { loadDriver } from './load-driver.js';
import { attributeHelp, attributeOptions, attributesFromFlags } from './options.js';
import { UsageError } from './usage.js';

export const EXPORT_HELP = `usage: bdus export <driver> [ARGS...] [--listen ADDRESS] [--name NAME] [--description TEXT] [--<attribute> VALUE ...]

Serves <driver> (a module path, or an example: ram, zero, loop) over NBD, in the foreground, until
SIGTERM or SIGINT. Prints the export's URI once it listens. Any NBD client can use it: qemu-img,
nbdinfo, nbdcopy, nbdsh, fio's nbd engine, nbd-client.

  --listen ADDRESS    unix:PATH, HOST:PORT or PORT (default 127.0.0.1:10809: loopback only)
  --name NAME         the export's name (default ""; a client asking for "" gets it too)
  --description TEXT  a description clients may ask for

attributes:
${attributeHelp()}
`;

const DEFAULT_PORT = 10809;

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

export async function exportCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...attributeOptions(), listen: { type: 'string' }, name: { type: 'string' }, description: { type: 'string' } },
    allowPositionals: true,
  });
  const [specifier, ...driverArgs] = positionals;
  if (!specifier) throw new UsageError('bdus export: missing the driver (a module path or an example: ram, zero, loop)');
  const attributes = attributesFromFlags(values);
  const listen = parseListen(values.listen ?? `127.0.0.1:${DEFAULT_PORT}`);
  const driver = await loadDriver(specifier, driverArgs);
  await runExport(driver, { attributes, listen, name: values.name ?? '', description: values.description ?? '' });
  return 0;
}
