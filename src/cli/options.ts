/** Parsing the CLI's values: sizes with suffixes and attribute flags from the attribute table. */
import { ATTRIBUTES, ATTRIBUTE_NAMES, type AttributeName, type Attributes } from '../driver/attributes.js';
import { BdusError } from '../driver/errors.js';
import { parseDuration, parseSize } from '../util/units.js';

export { parseDuration, parseSize };

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
