/**
 * The names of bdus's filters, and their modules loaded on demand: `--filter NAME` imports only
 * the filters named (a CLI that loaded all of them would start slower for every command).
 */
import type { FilterModule } from '../filter/parameters.js';

export const FILTER_NAMES = ['cache', 'cow', 'delay', 'error', 'log', 'offset', 'partition', 'rate', 'readonly', 'retry', 'stats', 'truncate'] as const;
export type FilterName = (typeof FILTER_NAMES)[number];

export function isFilterName(name: string): name is FilterName {
  return (FILTER_NAMES as readonly string[]).includes(name);
}

/** A filter's module: its description, parameters and the function that makes it. */
export async function filterModule(name: FilterName): Promise<FilterModule> {
  return (await import(`./${name}.js`)) as FilterModule;
}
