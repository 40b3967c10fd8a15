/** `bdus check`: is a driver safe to mark recoverable? (src/check) */
import { checkRecoverable, type CheckReport } from '../check/check.js';
import { parseSize } from './options.js';
import { parseCommandLine } from './suggest.js';
import { UsageError } from './usage.js';

export const CHECK_HELP = `usage: bdus check [--seconds S] [--json] [--region SIZE] [--workers N] [--seed N] [--frontend KIND] <driver> [ARGS...]

Is this driver safe to mark recoverable? Creates a device of the driver (as \`bdus run <driver>
--recoverable ARGS...\`), writes blocks that say which write they come from, and runs a workload
on it from several workers (writes, reads checked as they go, flushes, write-zeroes) while it
replaces the driver again and again: hot swaps (bdus rerun), SIGKILLs at random moments, and
SIGKILLs inside a callback, between the driver's own steps; recovering each time with bdus
rerun, and reading every block back after each change. Then a verdict per property, with the
smallest failing case:

  read-back             a read returns the last write acknowledged before it
  acknowledged-writes   every write acknowledged before a swap or a crash reads back after it
                        (to clients, a recoverable device never failed)
  flushed-writes        every write acknowledged before a completed flush survives any crash
  resent-writes         a write in flight across a driver change lands once, harmlessly
  never-written         no read returns data never written to that block
  zeroes                write-zeroes reads back as zeros

Exit status 0 if every property passed (and each was exercised), 1 if not. The driver's own
arguments follow it, and --filter flags to check a filter stack (bdus check file disk.img
--filter cow:overlay=/var/tmp/o); bdus check's options come before it. The device is destroyed
at the end.

  --seconds S      how long to run the workload and the faults (default 30)
  --region SIZE    how much of the device to check, from its start (default 16M)
  --workers N      concurrent workers (default 8)
  --seed N         the random choices' seed (printed; give it again to repeat them)
  --frontend KIND  the device's kernel path, as for bdus run
  --json           the report as JSON on stdout (progress still on stderr unless --quiet)
  -q, --quiet      no progress lines
`;

export const CHECK_OPTIONS = {
  seconds: { type: 'string' },
  region: { type: 'string' },
  workers: { type: 'string' },
  seed: { type: 'string' },
  frontend: { type: 'string' },
  json: { type: 'boolean' },
  quiet: { type: 'boolean', short: 'q' },
} as const;

const TAKES_VALUE = new Set(['--seconds', '--region', '--workers', '--seed', '--frontend']);

export async function checkCommand(argv: string[]): Promise<number> {
  // bdus check's options end at the driver: what follows is the driver's.
  let i = 0;
  while (i < argv.length && argv[i]!.startsWith('-') && argv[i] !== '--') i += TAKES_VALUE.has(argv[i]!.split('=')[0]!) && !argv[i]!.includes('=') ? 2 : 1;
  if (argv[i] === '--') i++;
  const { values } = parseCommandLine('check', { args: argv.slice(0, i).filter((word) => word !== '--'), options: CHECK_OPTIONS });
  const driver = argv.slice(i);
  if (driver.length === 0) throw new UsageError('bdus check: missing the driver (a module path or an example)');
  const whole = (name: string, text: string | undefined, min: number, max: number) => {
    if (text === undefined) return undefined;
    if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) throw new UsageError(`invalid --${name} '${text}': expected a whole number from ${min} to ${max}`);
    return Number(text);
  };
  const seconds = whole('seconds', values.seconds, 1, 86400);
  const workers = whole('workers', values.workers, 1, 64);
  const seed = whole('seed', values.seed, 0, 2 ** 31 - 1);
  let region: number | undefined;
  try {
    region = values.region === undefined ? undefined : parseSize(values.region, '--region');
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const log = values.quiet ? undefined : (line: string) => process.stderr.write(`bdus check: ${line}\n`);
  const report = await checkRecoverable({ driver, seconds, workers, seed, region, frontend: values.frontend, log });
  process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : text(report));
  return report.recoverable ? 0 : 1;
}

function text(report: CheckReport): string {
  const o = report.operations;
  const kinds = new Map<string, number>();
  for (const fault of report.faults) kinds.set(fault.kind, (kinds.get(fault.kind) ?? 0) + 1);
  const lines = [
    `bdus check ${report.driver.join(' ')}`,
    `  ${report.device.frontend}, ${report.region / 1024} KiB checked of ${report.device.size} bytes, ${report.workers} workers, seed ${report.seed}, ${report.seconds} s`,
    `  ${report.faults.length} driver changes (${[...kinds].map(([kind, n]) => `${n} ${kind}`).join(', ') || 'none'}); ${o.writes} writes, ${o.reads} reads, ${o.flushes} flushes, ${o.writeZeroes} write-zeroes, ${o.failed} failed`,
  ];
  const failures = Object.entries(report.failures);
  if (failures.length > 0) lines.push(`  failed: ${failures.map(([what, n]) => `${what} (${n})`).join(', ')}`);
  lines.push('');
  for (const p of report.properties) {
    lines.push(`  ${p.verdict.toUpperCase().padEnd(8)} ${p.property.padEnd(20)} ${p.description}`);
    if (p.verdict === 'fail') {
      const s = p.smallest!;
      lines.push(`           ${p.violations} block read(s) wrong. Smallest case: block ${s.block} (offset ${s.offset}), expected ${s.expected}, found ${s.found}:`);
      for (const step of s.history) lines.push(`             ${step}`);
    } else if (p.note) lines.push(`           ${p.note}`);
  }
  if (report.restartFailure) lines.push('', `  ${report.restartFailure}`);
  lines.push(
    '',
    report.recoverable
      ? 'verdict: safe to mark recoverable, as far as this run could tell'
      : `verdict: NOT safe to mark recoverable${report.properties.some((p) => p.verdict === 'untested') && !report.properties.some((p) => p.verdict === 'fail') ? ' yet: some properties were not exercised' : ''}`,
  );
  return `${lines.join('\n')}\n`;
}
