/** Life-cycle callbacks as a device or an export runs them. */
import { BdusError } from './errors.js';

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

