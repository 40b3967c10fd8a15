import { constants } from 'node:os';

/** Base class of every error bdus throws: a stable `code` (an errno name) and its number. */
export class BdusError extends Error {
  readonly code: string;
  readonly errno: number;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.errno = errnoOf(code) ?? constants.errno.EIO;
  }
}

/** An attribute was refused; the message names the attribute, the value and the rule. */
export class AttributeError extends BdusError {
  constructor(message: string) {
    super('EINVAL', message);
  }
}

/**
 * Thrown (or rejected) by a request callback to fail that request with a given errno.
 * Only ENOLINK, ENOSPC and ETIMEDOUT reach the client as themselves; any other code becomes EIO
 * (as in BDUS). A Node system error (say, an ENOSPC from fs.write) works the same way.
 */
export class DriverError extends BdusError {
  constructor(code: 'ENOLINK' | 'ENOSPC' | 'ETIMEDOUT' | 'EIO' | (string & {}), message?: string) {
    super(code, message ?? code);
  }
}

/**
 * Thrown by any callback to say the driver cannot go on (BDUS's `bdus_abort`). The request fails
 * with EIO, the driver ends without its terminate callback, and a non-recoverable device is
 * destroyed: pending and later I/O fail with EIO.
 */
export class DriverAbort extends Error {
  constructor(reason = 'driver aborted') {
    super(reason);
    this.name = 'DriverAbort';
  }
}

/** Ends the driver (see {@link DriverAbort}). */
export function abort(reason?: string): never {
  throw new DriverAbort(reason);
}

export function errnoOf(code: string): number | undefined {
  return (constants.errno as Record<string, number>)[code];
}

const { ENOLINK, ENOSPC, ETIMEDOUT, EIO } = constants.errno;

/**
 * The errno a client sees for a callback's failure: ENOLINK, ENOSPC and ETIMEDOUT pass through,
 * anything else is EIO. This is the one place that mapping lives.
 */
export function clientErrno(error: unknown): number {
  const code = (error as { code?: unknown } | null)?.code;
  switch (code) {
    case 'ENOLINK':
      return ENOLINK;
    case 'ENOSPC':
      return ENOSPC;
    case 'ETIMEDOUT':
      return ETIMEDOUT;
    default:
      return EIO;
  }
}
