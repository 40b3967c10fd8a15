/**
 * Turning `--filter NAME[:KEY=VALUE,...]` into filters: NAME is one of bdus's filters
 * (src/filters) or a module path (.js, .ts) that exports what they do: `parameters`, a
 * `description`, and a default export making the filter from its options.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Driver } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';
import { composeAsync, type AsyncFilter, type Filter } from '../filter/filter.js';
import { parameterHelp, parseFilterSpec, parseParameters, type FilterModule } from '../filter/parameters.js';
import { FILTER_NAMES, filterModule, isFilterName } from '../filters/catalog.js';
import { DRIVER_NAMES, driverModuleUrl } from '../drivers/catalog.js';
import { suggest } from './suggest.js';

/** A filter module by name or path. */
export async function importFilterModule(name: string): Promise<FilterModule> {
  if (isFilterName(name)) return filterModule(name);
  if (!/[./]/.test(name)) {
    const nearest = suggest(name, [...FILTER_NAMES]);
    throw new BdusError('EINVAL', `no filter '${name}'${nearest ? `; did you mean '${nearest}'?` : ''} (bdus's filters: ${FILTER_NAMES.join(', ')}; or a module path)`);
  }
  const path = resolve(name);
  if (!existsSync(path)) throw new BdusError('ENOENT', `no filter module at ${path}`);
  let module: Partial<FilterModule>;
  try {
    module = (await import(pathToFileURL(path).href)) as Partial<FilterModule>;
  } catch (error) {
    throw new BdusError('ENOEXEC', `cannot load filter module ${name}: ${(error as Error).message}`);
  }
  if (typeof module.default !== 'function') throw new BdusError('ENOEXEC', `${name}: a filter module's default export must be a function of its options that returns the filter`);
  return { description: module.description ?? '', parameters: module.parameters ?? {}, default: module.default };
}

/** The filters of `--filter` flags, in the order given (the first is innermost). */
export async function loadFilters(specs: readonly string[]): Promise<Array<Filter | AsyncFilter>> {
  const filters: Array<Filter | AsyncFilter> = [];
  for (const spec of specs) {
    const { name, words } = parseFilterSpec(spec);
    const module = await importFilterModule(name);
    const made = module.default(parseParameters(`--filter ${name}`, module.parameters, words));
    if (typeof made !== 'function') throw new BdusError('ENOEXEC', `filter ${name} made no filter (a function from driver to driver)`);
    filters.push(made);
  }
  return filters;
}

/** `driver` with the `--filter` flags' filters applied; a filter refusing the driver fails here, before any device. */
export async function applyFilters(driver: Driver<any>, specs: readonly string[]): Promise<Driver<any>> {
  if (specs.length === 0) return driver;
  const filtered = await composeAsync(driver, ...(await loadFilters(specs)));
  if (typeof filtered !== 'object' || filtered === null) throw new BdusError('ENOEXEC', 'a filter returned no driver');
  return filtered;
}

/** `--help`'s list of bdus's drivers and filters, with the filters' parameters. */
export async function libraryHelp(): Promise<string> {
  const lines = ['drivers (bdus run NAME --help for a driver\'s options):'];
  for (const name of DRIVER_NAMES) {
    const module = (await import(driverModuleUrl(name).href)) as { description?: string; usage?: string };
    lines.push(`  ${`${name}${module.usage ? ` ${module.usage}` : ''}`.padEnd(18)} ${module.description ?? ''}`);
  }
  lines.push('', 'filters (--filter NAME:KEY=VALUE,...; applied in order, the first innermost):');
  for (const name of FILTER_NAMES) {
    const module = await filterModule(name);
    lines.push(`  ${name.padEnd(18)} ${module.description}`);
    lines.push(...parameterHelp(module.parameters));
  }
  return `${lines.join('\n')}\n`;
}
