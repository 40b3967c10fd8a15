/**
 * Changing a filter's parameters while its device runs: `bdus filter DEVICE NAME KEY=VALUE,...`
 * writes them to a settings file, RUN_DIR/filters/device-<id>/<NAME>, and the filter (delay,
 * error, rate) notices within a fraction of a second. The file holds the same words as the
 * `--filter` flag (`rate=0.01,error=EIO`); what it sets overrides the flag's values, what it leaves
 * out keeps them, and removing it (`bdus filter DEVICE NAME --reset`) returns to the flag's.
 *
 * The file belongs to the device, not to a driver process: a driver started by `bdus rerun`
 * (hot swap or recovery) reads it at once, so a failure schedule set at run time survives the
 * swap. Two filters of one name on one device share it. The daemon removes it with the device.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import type { Context } from '../driver/driver.js';
import { RUN_DIR } from '../util/paths.js';
import { parseFilterSpec, parseParameters, type Parameters, type ParameterValue } from './parameters.js';

const SETTINGS_DIR = `${RUN_DIR}/filters`;
/** How often a filter looks at its settings file: a stat, cheap enough, and quick enough for a person. */
const POLL_MS = 200;

export function filterSettingsPath(deviceId: bigint | string, name: string): string {
  return `${SETTINGS_DIR}/device-${deviceId}/${name}`;
}

/** Checks `words` against the filter's parameters and writes them atomically (a rename). */
export function writeFilterSettings(deviceId: bigint | string, name: string, parameters: Parameters, words: string): void {
  parseParameters(`filter ${name}`, parameters, parseFilterSpec(`${name}:${words}`).words);
  const path = filterSettingsPath(deviceId, name);
  mkdirSync(`${SETTINGS_DIR}/device-${deviceId}`, { recursive: true, mode: 0o700 });
  writeFileSync(`${path}.new`, `${words}\n`, { mode: 0o600 });
  renameSync(`${path}.new`, path);
}

export function clearFilterSettings(deviceId: bigint | string, name: string): void {
  rmSync(filterSettingsPath(deviceId, name), { force: true });
}

/** The daemon, when a device is gone. */
export function removeFilterSettings(deviceId: string): void {
  rmSync(`${SETTINGS_DIR}/device-${deviceId}`, { recursive: true, force: true });
}

/**
 * A filter's current parameters: the values it was made with, overridden by its settings file
 * while the device runs. `values` is replaced as a whole on a change, so a request reads one
 * consistent set; `onChange` lets the filter recompute what it derives from them.
 */
export class LiveSettings<Values extends object> {
  values: Values;
  private timer: NodeJS.Timeout | undefined;
  private seen = '';

  constructor(
    private readonly name: string,
    private readonly parameters: Parameters,
    private readonly base: Values,
    private readonly onChange: (values: Values) => void = () => undefined,
  ) {
    this.values = base;
  }

  /** From `initialize` on (the device's id is known): reads the file now, then watches it. */
  start(ctx: Context<unknown>): void {
    const path = filterSettingsPath(ctx.id, this.name);
    this.poll(path);
    this.timer = setInterval(() => this.poll(path), POLL_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private poll(path: string): void {
    let stamp = '';
    try {
      const stat = statSync(path);
      stamp = `${stat.ino}:${stat.mtimeMs}:${stat.size}`;
    } catch {
      // no file: the flag's values
    }
    if (stamp === this.seen) return;
    this.seen = stamp;
    let values = this.base;
    if (stamp !== '') {
      try {
        const words = readFileSync(path, 'utf8').trim();
        const parsed: Record<string, ParameterValue> = parseParameters(`filter ${this.name}`, this.parameters, parseFilterSpec(`${this.name}:${words}`).words);
        values = { ...this.base, ...parsed };
        process.stderr.write(`bdus: filter ${this.name}: settings now ${words || '(the command line\'s)'}\n`);
      } catch (error) {
        // bdus filter checks what it writes; a hand-written file with a mistake is reported and ignored.
        process.stderr.write(`bdus: filter ${this.name}: ignoring ${path}: ${(error as Error).message}\n`);
        return;
      }
    } else if (this.values !== this.base) {
      process.stderr.write(`bdus: filter ${this.name}: settings back to the command line's\n`);
    }
    this.values = values;
    this.onChange(values);
  }
}
