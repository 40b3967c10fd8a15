/**
 * A driver module: what a file given to `bdus run`, `bdus rerun` or `bdus export` exports.
 *
 *   // disk.ts: bdus run ./disk.js /srv/disk --cache 64M --sync
 *   import type { DriverFactory, DriverOptions } from 'bdus';
 *   export const usage = 'DIR';
 *   export const options = {
 *     cache: { type: 'string', description: 'bytes kept in memory (default 16M)' },
 *     sync: { type: 'boolean', description: 'fsync every write' },
 *   } satisfies DriverOptions;
 *   const disk: DriverFactory = (args, options) => ({ ... });
 *   export default disk;
 *
 * The CLI parses the driver's options together with its own (Node's util.parseArgs: `--name
 * value`, `--name=value`, `-x` for a declared `short`); everything after `--` is a positional
 * argument of the driver. `bdus run DRIVER --help` lists the driver's usage and options.
 */
import type { Driver } from './driver.js';

/** One `--name` option of a driver module, as util.parseArgs takes it, with a line of help. */
export interface DriverOption {
  readonly type: 'string' | 'boolean';
  /** A one-letter alias, `-x`. */
  readonly short?: string;
  /** May be given more than once: the value is then an array. */
  readonly multiple?: boolean;
  readonly default?: string | boolean | readonly string[] | readonly boolean[];
  /** One line for `bdus run DRIVER --help`. */
  readonly description?: string;
}

/** A driver module's options, by name (without the leading `--`). */
export type DriverOptions = Readonly<Record<string, DriverOption>>;

/** The values of a driver's options as parsed: absent ones are undefined (or their default). */
export type DriverOptionValues = Record<string, string | boolean | Array<string | boolean> | undefined>;

/**
 * A driver module's default export may be a function that makes the driver from the command
 * line: `args` are the positional arguments after the driver's name, `options` the values of the
 * module's declared `options`. It runs in the process that serves the device; throwing (say, a
 * DriverError('EINVAL', 'usage: ...')) fails the command before any device is created or
 * touched.
 */
export type DriverFactory<State = any> = (
  args: readonly string[],
  options: DriverOptionValues,
) => Driver<State> | Promise<Driver<State>>;

/** The shape of a driver module, for reference: every export but the driver is optional. */
export interface DriverModule<State = any> {
  /** The driver, or a factory that makes it (an export named `driver` works too). */
  readonly default?: Driver<State> | DriverFactory<State>;
  readonly driver?: Driver<State> | DriverFactory<State>;
  /** Options the driver takes, `--name value` on the command line. */
  readonly options?: DriverOptions;
  /** Its positional arguments for the usage line, e.g. `PATH [SIZE]`. */
  readonly usage?: string;
  /** A sentence or two about the driver for `--help`. */
  readonly description?: string;
}
