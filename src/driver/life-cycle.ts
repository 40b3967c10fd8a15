/** What a device and an export share of a driver instance's life: its options, its life-cycle callbacks. */
import type { Attributes } from './attributes.js';
import { BdusError } from './errors.js';

/** Options of one driver instance, for a device (RunOptions) or an export (ExportOptions). */
export interface InstanceOptions<State = unknown> {
  /** Attributes; they override the driver's own `attributes`. */
  attributes?: Attributes;
  /** Initial value of `ctx.state`. */
  state?: State;
  /** Where the instance's log lines go (default: stderr, prefixed with the device path or export URI). */
  log?: (line: string) => void;
}

/**
 * Runs a life-cycle callback, naming it in its error: "the driver's initialize failed: ...".
 * The code stays the callback's own.
 */
export async function lifeCycle(name: 'validate' | 'initialize', callback: () => Promise<void> | void): Promise<void> {
  try {
    await callback();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const code = typeof (error as { code?: unknown })?.code === 'string' ? (error as { code: string }).code : 'EIO';
    throw new BdusError(code, `the driver's ${name} failed: ${message}`, { cause: error });
  }
}

