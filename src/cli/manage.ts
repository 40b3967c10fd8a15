/** `bdus list`, `info`, `flush`, `destroy`: the management commands, over the typed API. */
import { ATTRIBUTE_NAMES } from '../driver/attributes.js';
import { destroyDevice, deviceInfo, flushDevice, listDevices, resizeDevice, type DeviceInfo } from '../control/manage.js';
import { flagName, parseSize } from './options.js';
import { activityOf, withProgress } from './progress.js';
import { parseCommandLine } from './suggest.js';
import { UsageError } from './usage.js';

export const LIST_HELP = `usage: bdus list [--json]

The devices on this machine: id, index, path, kernel node, state, driver pid ("none" while a
recoverable device waits for a new driver), size, a summary of the attributes, and the driver
module with its arguments (what to give \`bdus rerun\`). --json prints every field of every
device.
`;

export const INFO_FIELDS = [
  'id', 'index', 'path', 'kernel-path', 'major', 'minor', 'state', 'frontend', 'pid', 'driver', 'read-only', 'created',
  ...ATTRIBUTE_NAMES.map(flagName),
] as const;

export const INFO_HELP = `usage: bdus info <path or id> [--<field> ...]

Everything about one device in human-readable form. With field options, one value per line, in
the order the options were given (numbers as plain numbers, flags as true/false).

fields: ${INFO_FIELDS.map((f) => `--${f}`).join(' ')}
`;

export const FLUSH_HELP = `usage: bdus flush <path or id>...

Flushes each device: the OS cache for it, then a flush request to its driver.
`;

export const DESTROY_HELP = `usage: bdus destroy [--force] [--no-flush] [--quiet] <path or id>...

Destroys each device in order: flushes it (unless --no-flush), lets its driver finish the
requests in progress and terminate, and waits until the device is gone. A device in use
(mounted, used by another block device such as dm or md, or open in a process other than its
driver) is refused with EBUSY naming what holds it, unless --force: its users then get I/O
errors. If the flush takes more than a few seconds, says so (unless --quiet): a stuck driver can
be skipped with --no-flush; and every few seconds after, what it still waits for (the flush, or
the driver finishing its requests and terminating), with the requests in flight.

  -f, --force      destroy it even while it is in use
  --no-flush       do not flush before the driver terminates
  -q, --quiet      no word about a slow flush or a slow driver
`;

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1073741824 -> "1 GiB"; sizes that are not a whole number of a unit stay in the smaller one. */
export function formatSize(bytes: number): string {
  let unit = 0;
  while (unit < UNITS.length - 1 && bytes >= 1024 && bytes % 1024 === 0) {
    bytes /= 1024;
    unit++;
  }
  return `${bytes} ${UNITS[unit]}`;
}

function summary(d: DeviceInfo): string {
  const a = d.attributes;
  const parts = [`lbs ${a.logicalBlockSize}`, `pbs ${a.physicalBlockSize}`, `concurrency ${a.maxConcurrentCallbacks}`];
  if (d.readOnly) parts.push('read-only');
  if (a.recoverable) parts.push('recoverable');
  if (a.lanes > 1) parts.push(`lanes ${a.lanes}`);
  return parts.join(', ');
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n');
}

export const LIST_OPTIONS = { json: { type: 'boolean' } } as const;
export const INFO_OPTIONS = Object.fromEntries(INFO_FIELDS.map((f) => [f, { type: 'boolean' as const }]));
export const DESTROY_OPTIONS = { 'no-flush': { type: 'boolean' }, quiet: { type: 'boolean', short: 'q' }, force: { type: 'boolean', short: 'f' } } as const;

export async function listCommand(argv: string[]): Promise<number> {
  const { values } = parseCommandLine('list', { args: argv, options: LIST_OPTIONS });
  const devices = await listDevices();
  if (values.json) {
    process.stdout.write(`${JSON.stringify(devices, (_, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
    return 0;
  }
  if (devices.length === 0) return 0;
  const header = ['ID', 'INDEX', 'PATH', 'KERNEL', 'FRONTEND', 'STATE', 'PID', 'SIZE', 'ATTRIBUTES', 'DRIVER'];
  const rows = devices.map((d) => [
    String(d.id), String(d.index), d.path, d.kernelPath || '-', d.frontend, d.state, d.pid === 0 ? 'none' : String(d.pid), formatSize(Number(d.attributes.size)), summary(d),
    driverCommand(d) || '-',
  ]);
  process.stdout.write(`${table([header, ...rows])}\n`);
  return 0;
}

/** The driver's module and arguments as a shell would take them back. */
export function driverCommand(d: DeviceInfo): string {
  return d.command.map((word) => (/^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`)).join(' ');
}

function field(d: DeviceInfo, name: (typeof INFO_FIELDS)[number]): string {
  switch (name) {
    case 'id':
      return String(d.id);
    case 'kernel-path':
      return d.kernelPath;
    case 'read-only':
      return String(d.readOnly);
    case 'driver':
      return driverCommand(d);
    case 'created':
      return d.createdAt.toISOString();
    case 'index':
    case 'path':
    case 'major':
    case 'minor':
    case 'state':
    case 'frontend':
    case 'pid':
      return String(d[name]);
    default:
      return String(d.attributes[ATTRIBUTE_NAMES.find((a) => flagName(a) === name)!]);
  }
}

export async function infoCommand(argv: string[]): Promise<number> {
  const { positionals, tokens } = parseCommandLine('info', { args: argv, options: INFO_OPTIONS, allowPositionals: true, tokens: true });
  if (positionals.length !== 1) throw new UsageError('bdus info: give exactly one device (a path or an id)');
  const d = await deviceInfo(positionals[0]!);
  const asked = tokens.filter((t) => t.kind === 'option').map((t) => t.name as (typeof INFO_FIELDS)[number]);
  if (asked.length > 0) {
    process.stdout.write(`${asked.map((name) => field(d, name)).join('\n')}\n`);
    return 0;
  }
  const lines: Array<[string, string]> = [
    ['id', String(d.id)],
    ['index', String(d.index)],
    ['path', d.path],
    ['kernel path', d.kernelPath ? `${d.kernelPath} (${d.major}:${d.minor})` : '-'],
    ['state', d.state],
    ['frontend', d.modes.length > 0 ? `${d.frontend} (${d.modes.join(', ')})` : d.frontend],
    ['driver pid', d.pid === 0 ? 'none (a recoverable device waiting for bdus rerun)' : String(d.pid)],
    ['driver', driverCommand(d) || '- (started through the API)'],
    ['read-only', d.readOnly ? 'yes' : 'no'],
    ['created', d.createdAt.toISOString()],
    ...ATTRIBUTE_NAMES.map((a): [string, string] => {
      const v = d.attributes[a];
      const text = typeof v === 'boolean' ? (v ? 'yes' : 'no') : a === 'size' ? `${v} (${formatSize(Number(v))})` : String(v);
      return [flagName(a).replaceAll('-', ' '), text];
    }),
  ];
  const width = Math.max(...lines.map(([k]) => k.length)) + 2;
  process.stdout.write(`${lines.map(([k, v]) => `${`${k}:`.padEnd(width)}${v}`).join('\n')}\n`);
  return 0;
}

export async function flushCommand(argv: string[]): Promise<number> {
  const { positionals } = parseCommandLine('flush', { args: argv, options: {}, allowPositionals: true });
  if (positionals.length === 0) throw new UsageError('bdus flush: missing the device (a path or an id)');
  for (const target of positionals) await flushDevice(target);
  return 0;
}

export async function destroyCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine('destroy', {
    args: argv,
    options: DESTROY_OPTIONS,
    allowPositionals: true,
  });
  if (positionals.length === 0) throw new UsageError('bdus destroy: missing the device (a path or an id)');
  for (const target of positionals) {
    const options = {
      flush: !values['no-flush'],
      force: values.force ?? false,
      onSlowFlush: values.quiet
        ? undefined
        : () => process.stderr.write(`bdus: still flushing ${target}; the driver may be stuck (use --no-flush to skip the flush)\n`),
    };
    if (values.quiet) {
      await destroyDevice(target, options);
      continue;
    }
    // After the slow-flush word: how the flush or the driver's end is getting on.
    const { id } = await deviceInfo(target);
    await withProgress(
      destroyDevice(id, options),
      String(id),
      (seconds, e) =>
        e.stats?.operations.flush?.inFlight
          ? `still flushing ${target} after ${seconds} s: ${activityOf(e)} (use --no-flush to skip the flush)`
          : `waiting ${seconds} s for the driver of ${target} to finish and terminate: ${activityOf(e)}`,
      6000,
    );
  }
  return 0;
}

export const RESIZE_HELP = `usage: bdus resize <path or id> <size>

Grows or shrinks a device while it runs (sizes as for --size: 4096, 64M, 2G). Its driver's
resize callback takes the new size or refuses it; then the kernel does (FUSE+loop: loop's
capacity change; kernel NBD: a netlink reconfigure), and clients see it at once (blockdev
--getsize64; \`resize2fs DEVICE\` then grows a mounted ext4). Shrinking gives up what lies past
the new size: shrink the filesystem first. A driver without a resize callback keeps its size.
`;

export async function resizeCommand(argv: string[]): Promise<number> {
  const { positionals } = parseCommandLine('resize', { args: argv, options: {}, allowPositionals: true });
  if (positionals.length !== 2) throw new UsageError('bdus resize: give the device (a path or an id) and its new size');
  const d = await resizeDevice(positionals[0]!, parseSize(positionals[1]!));
  process.stdout.write(`${d.path}: ${Number(d.attributes.size)} bytes (${formatSize(Number(d.attributes.size))})\n`);
  return 0;
}
