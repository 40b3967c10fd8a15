/**
 * The command line of `bdus run`, `rerun` and `export`: bdus's own options and the driver
 * module's, parsed together by Node's util.parseArgs.
 *
 *   bdus run [bdus options] DRIVER [ARGS...] [bdus or driver options] [-- ARGS...]
 *
 * The driver is the first positional argument after the command's own leading ones (rerun's
 * device). Its module is imported to learn its options, then the whole line is parsed again,
 * strictly, with both sets: a mistyped option is an error with a suggestion, never a positional.
 * Everything after `--` is a positional argument of the driver, whatever it looks like.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { BdusError } from '../driver/errors.js';
import type { DriverOptionValues } from '../driver/module.js';
import { DRIVER_NAMES } from '../drivers/catalog.js';
import { importDriverModule, type LoadedDriverModule } from './load-driver.js';
import { unknownOption } from './suggest.js';
import { UsageError } from './usage.js';

type OptionSpecs = NonNullable<ParseArgsConfig['options']>;

export interface DriverCommandLine {
  /** bdus's own options. */
  readonly values: Record<string, string | boolean | undefined>;
  /** The positional arguments before the driver (rerun's device). */
  readonly leading: string[];
  /** Undefined only with --help and no driver named. */
  readonly driver: LoadedDriverModule | undefined;
  /** The driver's positional arguments. */
  readonly args: string[];
  /** The driver's options. */
  readonly options: DriverOptionValues;
  /** `--filter` flags, in the order given (commands that take them). */
  readonly filters: string[];
  /** --help (or -h) before any `--`. */
  readonly help: boolean;
  /** Where the driver is in argv: what follows it is the driver's command line. */
  readonly driverIndex: number;
}

const HELP: OptionSpecs = { help: { type: 'boolean', short: 'h' } };

export async function parseDriverCommand(command: string, argv: readonly string[], own: OptionSpecs, leadingCount: number): Promise<DriverCommandLine> {
  const ownSpecs = { ...own, ...HELP };
  // A first, lenient pass finds the driver: what precedes it must be bdus's own.
  const { tokens } = parseArgs({ args: [...argv], options: ownSpecs, allowPositionals: true, strict: false, tokens: true });
  let positionals = 0;
  let specifier: string | undefined;
  let driverIndex = -1;
  for (const token of tokens) {
    if (token.kind === 'positional' && positionals++ === leadingCount) {
      specifier = token.value;
      driverIndex = token.index;
      break;
    }
    if (token.kind === 'option' && !(token.name in ownSpecs)) throw unknownOption(command, token.rawName, optionNames(ownSpecs));
  }
  const help = tokens.some((t) => t.kind === 'option' && t.name === 'help');
  if (specifier === undefined) {
    if (help) return { values: {}, leading: [], driver: undefined, args: [], options: {}, filters: [], help, driverIndex };
    throw new UsageError(
      leadingCount > 0 && positionals === 0
        ? `bdus ${command}: missing the device (a path or an id)`
        : `bdus ${command}: missing the driver (a module path or one of bdus's drivers: ${DRIVER_NAMES.join(', ')})`,
    );
  }

  const driver = await importDriverModule(specifier);
  for (const [name, spec] of Object.entries(driver.options)) {
    const clash = name in ownSpecs ? `--${name}` : spec.short && optionNames(ownSpecs).includes(`-${spec.short}`) ? `-${spec.short}` : undefined;
    if (clash) throw new BdusError('ENOEXEC', `${specifier}: its option ${clash} is one of bdus ${command}'s own; rename it`);
  }
  const all: OptionSpecs = { ...ownSpecs };
  for (const [name, spec] of Object.entries(driver.options)) {
    all[name] = { type: spec.type, ...(spec.short ? { short: spec.short } : {}), ...(spec.multiple ? { multiple: true } : {}) };
    if (spec.default !== undefined) (all[name] as { default?: unknown }).default = spec.default;
  }
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: all, allowPositionals: true, strict: true });
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const raw = /'([^']+)'/.exec((error as Error).message)?.[1] ?? '';
      throw unknownOption(command, raw, optionNames(all));
    }
    throw new UsageError(`bdus ${command}: ${(error as Error).message}`);
  }
  const values: Record<string, string | boolean | undefined> = {};
  const options: DriverOptionValues = {};
  const filters: string[] = [];
  for (const [name, value] of Object.entries(parsed.values)) {
    if (name in driver.options) options[name] = value as DriverOptionValues[string];
    else if (name === 'filter') filters.push(...(value as string[]));
    else if (name !== 'help') values[name] = value as string | boolean;
  }
  const rest = parsed.positionals;
  return { values, leading: rest.slice(0, leadingCount), driver, args: rest.slice(leadingCount + 1), options, filters, help, driverIndex };
}

function optionNames(specs: OptionSpecs): string[] {
  return Object.entries(specs).flatMap(([name, spec]) => [`--${name}`, ...(spec.short ? [`-${spec.short}`] : [])]);
}
