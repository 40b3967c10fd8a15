/**
 * bdus's library of drivers, `import { file, memory } from 'bdus/drivers'`, and by name on the
 * command line (`bdus run file disk.img`). Each is one module in this folder, with the same
 * exports as any driver module (src/driver/module.ts) plus a typed function for code.
 */
export { chunked, type ChunkedOptions } from './chunked.js';
export { file, holes, type FileOptions } from './file.js';
export { http, type HttpOptions } from './http.js';
export { memory } from './memory.js';
export { nbd, type NbdDriverOptions } from './nbd.js';
export { nullDriver } from './null.js';
export { pattern, patternAt } from './pattern.js';

/** The drivers `bdus run NAME` knows, with the examples (src/examples; `loop` is `file`), in `--help`'s order. */
export const DRIVER_NAMES = ['file', 'chunked', 'http', 'memory', 'nbd', 'null', 'pattern', 'ram', 'zero', 'loop'] as const;
export type DriverName = (typeof DRIVER_NAMES)[number];

/** Where a named driver's module is. */
export function driverModuleUrl(name: DriverName): URL {
  const examples: readonly string[] = ['ram', 'zero', 'loop'];
  return new URL(examples.includes(name) ? `../examples/${name}.js` : `./${name}.js`, import.meta.url);
}
