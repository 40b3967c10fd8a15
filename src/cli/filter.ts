/**
 * `bdus filter`: change a running device's filter (delay, error, rate) without restarting its
 * driver, through the settings file the filter watches (src/filter/settings.ts).
 */
import { readFileSync } from 'node:fs';
import { deviceInfo } from '../control/manage.js';
import { BdusError } from '../driver/errors.js';
import { parseFilterSpec, parseParameters } from '../filter/parameters.js';
import { clearFilterSettings, filterSettingsPath, writeFilterSettings } from '../filter/settings.js';
import { importFilterModule } from './load-filter.js';
import { parseCommandLine } from './suggest.js';
import { UsageError } from './usage.js';

export const FILTER_HELP = `usage: bdus filter <path or id> <filter> KEY=VALUE[,KEY=VALUE...]
       bdus filter <path or id> <filter> --reset | --show

Changes the parameters of a filter in front of a running device's driver (delay, error, rate)
within a fraction of a second, with no restart: what is given overrides the values of its
--filter flag, what is left out keeps them. The change is kept with the device, so a driver that
replaces this one (bdus rerun, recovery) starts with it. --reset goes back to the --filter
flag's values; --show prints what was set.

  bdus filter /dev/bdus-0 error rate=0.01,ops=write
  bdus filter /dev/bdus-0 delay read=20ms
  bdus filter /dev/bdus-0 error --reset
`;

export const FILTER_OPTIONS = { reset: { type: 'boolean' }, show: { type: 'boolean' } } as const;

export async function filterCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine('filter', { args: argv, options: FILTER_OPTIONS, allowPositionals: true });
  const [target, name, words, ...extra] = positionals;
  if (target === undefined || name === undefined) throw new UsageError('bdus filter: give the device (a path or an id) and the filter\'s name');
  const modes = [words !== undefined, values.reset === true, values.show === true].filter(Boolean).length;
  if (extra.length > 0 || modes !== 1) throw new UsageError('bdus filter: give KEY=VALUE,... or --reset or --show, one of them');
  const module = await importFilterModule(name);
  if (!module.live) throw new BdusError('EINVAL', `filter ${name} cannot change while it runs (these can: delay, error, rate)`);
  const device = await deviceInfo(target);
  const path = filterSettingsPath(device.id, name);
  if (values.show) {
    let text = '(none: the --filter flag\'s values)\n';
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      // nothing set
    }
    process.stdout.write(text);
    return 0;
  }
  // A driver run from code has no recorded command; one run from the CLI must have the filter.
  const command = device.command.join(' ');
  if (device.command.length > 0 && !new RegExp(`--filter[= ]${escape(name)}(:|\\s|$)`).test(command)) {
    throw new BdusError('EINVAL', `${device.path}'s driver has no ${name} filter (its command: ${command})`);
  }
  if (values.reset) clearFilterSettings(device.id, name);
  else {
    // The filter's own checks (a probability past 1, an unknown error code) fail here, not in the driver.
    module.default(parseParameters(`filter ${name}`, module.parameters, parseFilterSpec(`${name}:${words}`).words));
    writeFilterSettings(device.id, name, module.parameters, words!);
  }
  return 0;
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
