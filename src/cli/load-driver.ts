/** Turning `bdus run`'s first argument into a driver: a built-in example's name or a module path. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Driver } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';

export const EXAMPLES = ['ram', 'zero', 'loop'] as const;

/**
 * Loads a driver module. Its default export (or export named `driver`) is a driver object, or a
 * function that receives the remaining command-line arguments and returns one (or a promise).
 */
export async function loadDriver(specifier: string, args: readonly string[]): Promise<Driver<any>> {
  let url: string;
  if ((EXAMPLES as readonly string[]).includes(specifier)) {
    url = new URL(`../examples/${specifier}.js`, import.meta.url).href;
  } else {
    const path = resolve(specifier);
    if (!existsSync(path)) {
      throw new BdusError('ENOENT', `no driver module at ${path} (and '${specifier}' is not an example: ${EXAMPLES.join(', ')})`);
    }
    url = pathToFileURL(path).href;
  }
  let module: Record<string, unknown>;
  try {
    module = (await import(url)) as Record<string, unknown>;
  } catch (error) {
    throw new BdusError('ENOEXEC', `cannot load driver module ${specifier}: ${(error as Error).message}`);
  }
  let exported = module.default ?? module.driver;
  if (typeof exported === 'function') exported = await (exported as (a: readonly string[]) => unknown)(args);
  if (typeof exported !== 'object' || exported === null) {
    throw new BdusError(
      'ENOEXEC',
      `${specifier} exports no driver: expected a default export (or an export named 'driver') that is a driver object or a function returning one`,
    );
  }
  return exported as Driver<any>;
}
