/** How the request layer names a callback's call in its log, and which failures it retries. */
import type { Extent } from '../driver/driver.js';
import { clientErrno, DriverAbort } from '../driver/errors.js';
import { Operation, OPERATION_NAMES } from './operation.js';
import { constants } from 'node:os';

const { EIO } = constants.errno;

export async function collect(answer: Promise<readonly Extent[]> | readonly Extent[], into: Extent[]): Promise<void> {
  const extents = await answer;
  if (!Array.isArray(extents)) throw new Error(`extents() returned ${typeof extents}, not an array`);
  for (const extent of extents) into.push(extent);
}

/** Reads and writes: the transfers that seed 000 retries. */
export function isTransfer(op: Operation): boolean {
  return op === Operation.READ || op === Operation.WRITE || op === Operation.FUA_WRITE;
}

/** A failure that the client would see as EIO, and that is not the driver ending itself. */
export function isRetryable(error: unknown): boolean {
  return clientErrno(error) === EIO && !(error instanceof DriverAbort || (error as Error | null)?.name === 'DriverAbort');
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function describe(op: Operation, b: number, c: number, a: unknown): string {
  const name = OPERATION_NAMES[op];
  switch (op) {
    case Operation.READ:
    case Operation.WRITE:
    case Operation.FUA_WRITE:
      return `${name}(offset=${b}, size=${(a as Buffer).length})`;
    case Operation.FLUSH:
      return `${name}()`;
    case Operation.WRITE_ZEROS:
      return `${name}(offset=${b}, size=${c}, mayUnmap=${String(a)})`;
    case Operation.IOCTL:
      return `${name}(command=0x${b.toString(16)})`;
    default:
      return `${name}(offset=${b}, size=${c})`;
  }
}
