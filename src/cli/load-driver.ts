/**
 * Turning `bdus run`'s driver argument into a driver: one of bdus's drivers by name (src/drivers,
 * src/examples) or a module path
 * (JavaScript, or TypeScript where Node or the driver's project can load it). See
 * src/driver/module.ts for what a driver module exports.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { extname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Driver } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';
import type { DriverModule, DriverOptions, DriverOptionValues } from '../driver/module.js';
import { DRIVER_NAMES, driverModuleUrl, type DriverName } from '../drivers/catalog.js';

const TYPESCRIPT = new Set(['.ts', '.mts', '.cts']);

/** A driver module, imported but not yet asked for its driver. */
export interface LoadedDriverModule {
  /** What the user named: a driver's name or the path as given. */
  readonly specifier: string;
  /** The module's file, absolute (the compiled file for bdus's drivers). */
  readonly file: string;
  readonly module: DriverModule;
  readonly options: DriverOptions;
}

/** Imports a driver module, or says exactly why it cannot. */
export async function importDriverModule(specifier: string): Promise<LoadedDriverModule> {
  let url: URL;
  if ((DRIVER_NAMES as readonly string[]).includes(specifier)) {
    url = driverModuleUrl(specifier as DriverName);
  } else {
    const path = resolve(specifier);
    if (!existsSync(path)) {
      throw new BdusError('ENOENT', `no driver module at ${path} (and '${specifier}' is not one of bdus's drivers: ${DRIVER_NAMES.join(', ')})`);
    }
    if (TYPESCRIPT.has(extname(path))) await enableTypeScript(path);
    url = pathToFileURL(path);
  }
  let module: DriverModule;
  try {
    module = (await import(url.href)) as DriverModule;
  } catch (error) {
    throw new BdusError('ENOEXEC', `cannot load driver module ${specifier}: ${(error as Error).message}`);
  }
  const options = module.options ?? {};
  if (typeof options !== 'object' || options === null) throw new BdusError('ENOEXEC', `${specifier}: its 'options' export must be an object of option specs`);
  for (const [name, spec] of Object.entries(options)) {
    if (spec?.type !== 'string' && spec?.type !== 'boolean') {
      throw new BdusError('ENOEXEC', `${specifier}: option '${name}' needs type 'string' or 'boolean'`);
    }
  }
  return { specifier, file: url.protocol === 'file:' ? decodeURIComponent(url.pathname) : url.href, module, options };
}

/** Asks a loaded module for its driver: the exported object, or what its factory makes of the command line. */
export async function makeDriver(loaded: LoadedDriverModule, args: readonly string[], options: DriverOptionValues): Promise<Driver<any>> {
  let exported: unknown = loaded.module.default ?? loaded.module.driver;
  if (typeof exported === 'function') exported = await (exported as (a: readonly string[], o: DriverOptionValues) => unknown)(args, options);
  if (typeof exported !== 'object' || exported === null) {
    throw new BdusError(
      'ENOEXEC',
      `${loaded.specifier} exports no driver: expected a default export (or an export named 'driver') that is a driver object or a function returning one`,
    );
  }
  return exported as Driver<any>;
}

/** The driver's own section of `bdus run DRIVER --help`. */
export function driverHelp(loaded: LoadedDriverModule): string {
  const { module, options } = loaded;
  const lines = [`driver ${loaded.specifier}${module.usage ? ` ${module.usage}` : ''}${Object.keys(options).length ? ' [driver options]' : ''}`];
  if (module.description) lines.push(`  ${module.description}`);
  const entries = Object.entries(options);
  if (entries.length > 0) {
    lines.push('', 'driver options:');
    for (const [name, spec] of entries) {
      const flag = `${spec.short ? `-${spec.short}, ` : ''}--${name}${spec.type === 'string' ? ' VALUE' : ''}`;
      lines.push(`  ${flag.padEnd(34)} ${spec.description ?? ''}`.trimEnd());
    }
  }
  return `${lines.join('\n')}\n`;
}

/**
 * A TypeScript driver: Node strips the types itself where it can (22.18 and later, 23.6 and
 * later); otherwise tsx, if the driver's project has it, is registered as a loader. Failing both,
 * the error says what to do.
 */
async function enableTypeScript(path: string): Promise<void> {
  if ((process.features as { typescript?: unknown }).typescript) return;
  let api: string;
  try {
    api = createRequire(path).resolve('tsx/esm/api');
  } catch {
    throw new BdusError(
      'ENOEXEC',
      `cannot load ${path}: Node ${process.version} does not run TypeScript by itself. Either compile it (npx tsc) and ` +
        `run the .js file, install tsx in the driver's project (npm install --save-dev tsx), or use Node 22.18 or later`,
    );
  }
  const { register } = (await import(pathToFileURL(api).href)) as { register(): unknown };
  register();
}
