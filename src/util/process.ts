import { readFileSync } from 'node:fs';

/** A process's start time (field 22 of /proc/PID/stat), or undefined if it is gone. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether the process `pid` that started at `start` still runs (a reused pid does not count). */
export function isAlive(pid: number, start: string): boolean {
  return processStart(pid) === start;
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** What `work` gives, or a rejection with `late()` once `ms` have passed without it settling. */
export async function withTimeout<T>(work: Promise<T> | T, ms: number, late: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([work, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(late()), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Waits for `closed`, meanwhile handing SIGTERM and SIGINT to `stop` and an uncaught exception
 * to `crash` (the shared shape of serving a device and serving an export in the foreground).
 */
export async function untilClosed(closed: Promise<void>, stop: () => void, crash: (error: Error) => void): Promise<void> {
  process.on('SIGTERM', stop).on('SIGINT', stop).on('uncaughtException', crash);
  try {
    await closed;
  } finally {
    process.off('SIGTERM', stop).off('SIGINT', stop).off('uncaughtException', crash);
  }
}
