/**
 * The names of bdus's drivers and where each module is, without loading any of them: the CLI
 * resolves `bdus run NAME` with this, and imports only the driver named.
 */

/** The drivers `bdus run NAME` knows, with the examples (src/examples; `loop` is `file`), in `--help`'s order. */
export const DRIVER_NAMES = ['file', 'chunked', 'http', 'memory', 'nbd', 'null', 'pattern', 's3', 'ram', 'zero', 'loop'] as const;
export type DriverName = (typeof DRIVER_NAMES)[number];

/** Where a named driver's module is. */
export function driverModuleUrl(name: DriverName): URL {
  const examples: readonly string[] = ['ram', 'zero', 'loop'];
  if (name === 's3') return new URL('./s3/index.js', import.meta.url); // a folder: store, volume, cache
  return new URL(examples.includes(name) ? `../examples/${name}.js` : `./${name}.js`, import.meta.url);
}
