import { readFileSync } from 'node:fs';

let version: string | undefined;

/** This package's version (the library's, the CLI's and the daemon's: they ship together). */
export function packageVersion(): string {
  version ??= (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  return version;
}
