/**
 * `bdus export`: serve a driver over NBD, in the foreground, until SIGTERM or SIGINT.
 */
import { runExport } from '../nbd/export.js';
import { EXPORT_FLAG_HELP, EXPORT_FLAG_OPTIONS, limitsFromFlags, parseListen, tlsFromFlags } from './export-flags.js';
import { parseDriverCommand } from './driver-command.js';
import { driverHelp, makeDriver } from './load-driver.js';
import { applyFilters, libraryHelp } from './load-filter.js';
import { attributeHelp, attributeOptions, attributesFromFlags } from './options.js';
import { UsageError } from './usage.js';

export const EXPORT_HELP = `usage: bdus export <driver> [ARGS...] [--listen ADDRESS] [--name NAME] [--description TEXT] [--<attribute> VALUE ...] [driver options] [--filter F ...] [-- ARGS...]

Serves <driver> (one of bdus's drivers, listed below, or a module path) over NBD, in the
foreground, until SIGTERM or SIGINT; --filter as for \`bdus run\`. Prints the export's URI once it listens. Any NBD client can use it: qemu-img,
nbdinfo, nbdcopy, nbdsh, fio's nbd engine, nbd-client.

  --listen ADDRESS    unix:PATH, HOST:PORT or PORT (default 127.0.0.1:10809: loopback only)
  --name NAME         the export's name (default ""; a client asking for "" gets it too)
  --description TEXT  a description clients may ask for
${EXPORT_FLAG_HELP}
attributes:
${attributeHelp()}
`;

const DEFAULT_PORT = 10809;

export const EXPORT_OPTIONS = {
  ...attributeOptions(),
  listen: { type: 'string' },
  filter: { type: 'string', multiple: true },
  name: { type: 'string' },
  description: { type: 'string' },
  ...EXPORT_FLAG_OPTIONS,
} as const;

export async function exportCommand(argv: string[]): Promise<number> {
  const line = await parseDriverCommand('export', argv, EXPORT_OPTIONS, 0);
  if (line.help) {
    process.stdout.write(`${EXPORT_HELP}\n${line.driver ? driverHelp(line.driver) : await libraryHelp()}`);
    return 0;
  }
  const values = line.values as Record<string, string | undefined>;
  const attributes = attributesFromFlags(line.values);
  const listen = parseListen(values.listen ?? `127.0.0.1:${DEFAULT_PORT}`);
  const tls = tlsFromFlags(line.values);
  const limits = limitsFromFlags(line.values, listen);
  const driver = await applyFilters(await makeDriver(line.driver!, line.args, line.options), line.filters);
  // A lane makes the driver again in its own thread (src/nbd/lane.ts), which it cannot do with filters (yet).
  if ((attributes.lanes ?? 0) > 1 && line.filters.length > 0) throw new UsageError('bdus export: --lanes cannot be combined with --filter yet');
  const recipe = line.filters.length > 0 ? undefined : { module: line.driver!.file, args: line.args, options: line.options };
  await runExport(driver, { attributes, listen, name: values.name ?? '', description: values.description ?? '', tls, limits, recipe });
  return 0;
}
