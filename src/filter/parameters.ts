/**
 * A filter's parameters as the command line gives them: `--filter NAME:KEY=VALUE,KEY=VALUE`.
 * Each filter module declares its parameters once (`parameters`); the same table parses the
 * command line, checks it, and writes the `--help` lines, and the parsed values are exactly the
 * options object the filter's function takes in code (sizes in bytes, durations in ms).
 */
import { BdusError } from '../driver/errors.js';
import { parseDuration, parseSize } from '../util/units.js';
import type { AsyncFilter, Filter } from './filter.js';

export type ParameterType = 'size' | 'duration' | 'number' | 'string' | 'boolean' | 'list';

export interface ParameterSpec {
  readonly type: ParameterType;
  /** One line for `--help` and the docs. */
  readonly description: string;
  readonly required?: boolean;
}

export type Parameters = Readonly<Record<string, ParameterSpec>>;

/** A parsed value: size and duration as numbers, list as the words between `+` signs. */
export type ParameterValue = number | string | boolean | string[];

/** What a filter or driver module exports for `--filter` and `bdus run NAME`. */
export interface FilterModule {
  readonly description: string;
  readonly parameters: Parameters;
  /** Its parameters can change while the device runs (`bdus filter`, src/filter/settings.ts). */
  readonly live?: boolean;
  /** Makes the filter from its parsed parameters. */
  readonly default: (options: Record<string, ParameterValue>) => Filter | AsyncFilter;
}

/**
 * `delay:read=2ms,write=5ms` -> ['delay', { read: 2, write: 5 }]. A value may contain `=` but
 * not `,`; a list value separates its words with `+` (`ops=read+write`).
 */
export function parseFilterSpec(spec: string): { name: string; words: [string, string][] } {
  const colon = spec.indexOf(':');
  const name = colon < 0 ? spec : spec.slice(0, colon);
  if (name === '') throw new BdusError('EINVAL', `--filter '${spec}': expected NAME or NAME:KEY=VALUE,...`);
  const words: [string, string][] = [];
  if (colon >= 0 && colon < spec.length - 1) {
    for (const word of spec.slice(colon + 1).split(',')) {
      const equals = word.indexOf('=');
      if (equals <= 0) throw new BdusError('EINVAL', `--filter ${name}: '${word}' is not KEY=VALUE`);
      words.push([word.slice(0, equals), word.slice(equals + 1)]);
    }
  }
  return { name, words };
}

/** Checks and converts `words` against `parameters`; `what` names the filter in errors. */
export function parseParameters(what: string, parameters: Parameters, words: readonly [string, string][]): Record<string, ParameterValue> {
  const values: Record<string, ParameterValue> = Object.create(null);
  for (const [key, text] of words) {
    const spec = Object.hasOwn(parameters, key) ? parameters[key] : undefined;
    if (!spec) {
      const known = Object.keys(parameters);
      throw new BdusError('EINVAL', `${what}: unknown parameter '${key}' (${known.length ? `known: ${known.join(', ')}` : 'it takes none'})`);
    }
    if (key in values) throw new BdusError('EINVAL', `${what}: parameter '${key}' given twice`);
    values[key] = parseValue(`${what}: ${key}`, spec.type, text);
  }
  for (const [key, spec] of Object.entries(parameters)) {
    if (spec.required && !(key in values)) throw new BdusError('EINVAL', `${what}: missing parameter '${key}' (${spec.description})`);
  }
  return { ...values };
}

function parseValue(what: string, type: ParameterType, text: string): ParameterValue {
  switch (type) {
    case 'size':
      return parseSize(text, what);
    case 'duration':
      return parseDuration(text, what);
    case 'number': {
      const value = Number(text);
      if (text.trim() === '' || !Number.isFinite(value)) throw new BdusError('EINVAL', `${what}: '${text}' is not a number`);
      return value;
    }
    case 'boolean':
      if (['', 'true', 'yes', 'on', '1'].includes(text)) return true;
      if (['false', 'no', 'off', '0'].includes(text)) return false;
      throw new BdusError('EINVAL', `${what}: '${text}' is not true or false`);
    case 'list':
      return text.split('+').filter((word) => word !== '');
    case 'string':
      return text;
  }
}

/** The `--help` lines of a parameter table. */
export function parameterHelp(parameters: Parameters, indent = '    '): string[] {
  const value = { size: 'SIZE', duration: 'TIME', number: 'N', string: 'TEXT', boolean: 'BOOL', list: 'A+B' };
  return Object.entries(parameters).map(([key, spec]) => {
    const left = `${key}=${value[spec.type]}`;
    return `${indent}${left.padEnd(24)} ${spec.required ? '(required) ' : ''}${spec.description}`;
  });
}
