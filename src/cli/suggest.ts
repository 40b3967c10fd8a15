/** "Did you mean": the nearest known name to a mistyped one. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from './usage.js';

/** Edit distance (insertions, deletions, substitutions, adjacent swaps). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/** The known name closest to `name`, if it is close enough to be a typo (a third of its length). */
export function suggest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(name.length / 3)) + 1;
  for (const candidate of known) {
    const d = distance(name, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

/** The usage error for an option nobody declared, with the nearest declared one. */
export function unknownOption(command: string, raw: string, known: readonly string[]): UsageError {
  const nearest = suggest(raw, known);
  return new UsageError(`bdus ${command}: unknown option '${raw}'${nearest ? `; did you mean '${nearest}'?` : ''} (an argument that starts with '-' goes after '--')`);
}

/**
 * util.parseArgs for a command without a driver: an unknown option becomes a usage error naming
 * the nearest known one.
 */
export function parseCommandLine<T extends ParseArgsConfig>(command: string, config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    if ((error as { code?: string }).code !== 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw error;
    const raw = /'([^']+)'/.exec((error as Error).message)?.[1] ?? '';
    const known = Object.entries(config.options ?? {}).flatMap(([name, spec]) => [`--${name}`, ...(spec.short ? [`-${spec.short}`] : [])]);
    throw unknownOption(command, raw, known);
  }
}
