/** Parsing the CLI's values: sizes with suffixes and attribute flags from the attribute table. */
import { ATTRIBUTES, ATTRIBUTE_NAMES, type AttributeName, type Attributes } from '../driver/attributes.js';
import { BdusError } from '../driver/errors.js';

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** "4096", "64K", "1G", "1GiB", "2T" (powers of 1024) -> bytes. */
export function parseSize(text: string, what = 'size'): number {
  const match = /^(\d+)\s*([KMGTP]?)(?:i?B)?$/i.exec(text.trim());
  const unit = match ? UNITS[match[2]!.toUpperCase()] : undefined;
  const value = match && unit ? Number(match[1]) * unit : NaN;
  if (!Number.isSafeInteger(value)) {
    throw new BdusError('EINVAL', `invalid ${what} '${text}': expected a whole number of bytes with an optional K, M, G, T or P suffix`);
  }
  return value;
}

/** `maxReadWriteSize` -> `max-read-write-size`. */
export function flagName(name: AttributeName): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** parseArgs option specs for every attribute. */
export function attributeOptions(): Record<string, { type: 'string' | 'boolean' }> {
  return Object.fromEntries(
    ATTRIBUTE_NAMES.map((name) => [flagName(name), { type: ATTRIBUTES[name].kind === 'flag' ? 'boolean' : 'string' }]),
  );
}

/** Picks the attribute flags out of parsed values. */
export function attributesFromFlags(values: Record<string, string | boolean | undefined>): Attributes {
  const attributes: Record<string, number | boolean | string> = {};
  for (const name of ATTRIBUTE_NAMES) {
    const value = values[flagName(name)];
    if (value === undefined) continue;
    if (typeof value === 'boolean') attributes[name] = value;
    else if (ATTRIBUTES[name].kind === 'count') attributes[name] = parseCount(value, flagName(name));
    else if (ATTRIBUTES[name].kind === 'duration') attributes[name] = parseDuration(value, `--${flagName(name)}`);
    else if (ATTRIBUTES[name].kind === 'choice') attributes[name] = value; // checked with the other attributes
    else attributes[name] = parseSize(value, `--${flagName(name)}`);
  }
  return attributes as Attributes;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "1500ms", "30s", "2m", "1h"; a bare number is milliseconds. */
export function parseDuration(text: string, what: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(text.trim());
  const value = match ? Math.round(Number(match[1]) * DURATION_UNITS[match[2] ?? 'ms']!) : NaN;
  if (!Number.isSafeInteger(value)) throw new BdusError('EINVAL', `invalid ${what} '${text}': expected a duration such as 1500ms, 30s, 2m or 1h`);
  return value;
}

function parseCount(text: string, flag: string): number {
  if (!/^\d+$/.test(text)) throw new BdusError('EINVAL', `invalid --${flag} '${text}': expected a whole number`);
  return Number(text);
}

export function attributeHelp(): string {
  return ATTRIBUTE_NAMES.map((name) => {
    const spec = ATTRIBUTES[name];
    const value = { flag: '', count: ' N', duration: ' TIME', bytes: ' SIZE', choice: ' MODE' }[spec.kind];
    const flag = `--${flagName(name)}${value}`;
    return `  ${flag.padEnd(34)} ${spec.doc}`;
  }).join('\n');
}
