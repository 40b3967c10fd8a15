/**
 * The request callbacks, defined once: every list of them, the read-only rule, the max-size
 * attribute of each request type and the rerun compatibility check derive from this table, and
 * so do the request layer's operation numbers (src/request/operation.ts).
 */

/** A max-size attribute: the largest piece of a request one callback receives. */
type MaxSizeAttribute = 'maxReadWriteSize' | 'maxWriteSameSize' | 'maxWriteZerosSize' | 'maxDiscardEraseSize';

interface CallbackSpec {
  /** Its presence makes a device writable. */
  readonly writes: boolean;
  /** The attribute that bounds one call, if any. */
  readonly maxSize?: MaxSizeAttribute;
}

/** In the request layer's operation order (Operation.READ is 0, ...). */
export const CALLBACKS = {
  read: { writes: false, maxSize: 'maxReadWriteSize' },
  write: { writes: true, maxSize: 'maxReadWriteSize' },
  writeSame: { writes: true, maxSize: 'maxWriteSameSize' },
  writeZeros: { writes: true, maxSize: 'maxWriteZerosSize' },
  fuaWrite: { writes: true, maxSize: 'maxReadWriteSize' },
  flush: { writes: false },
  discard: { writes: true, maxSize: 'maxDiscardEraseSize' },
  secureErase: { writes: true, maxSize: 'maxDiscardEraseSize' },
  ioctl: { writes: false },
  extents: { writes: false },
} as const satisfies Record<string, CallbackSpec>;

export type RequestCallback = keyof typeof CALLBACKS;

/** Every request callback, in the table's order (logs, counters, rerun checks). */
export const REQUEST_CALLBACKS = Object.keys(CALLBACKS) as RequestCallback[];

/** Request callbacks whose presence makes a device writable. */
export const WRITE_CALLBACKS = REQUEST_CALLBACKS.filter((name) => CALLBACKS[name].writes);

/** The request callbacks `driver` has, in table order. */
export function requestCallbacks(driver: object): RequestCallback[] {
  return REQUEST_CALLBACKS.filter((name) => typeof (driver as Record<string, unknown>)[name] === 'function');
}

/** A driver without any write-type callback serves a read-only device. */
export function isReadOnly(driver: object): boolean {
  const has = requestCallbacks(driver);
  return !WRITE_CALLBACKS.some((name) => has.includes(name));
}

/** Whether some callback bounded by `attribute` is present: otherwise the attribute is 0. */
export function bounds(attribute: MaxSizeAttribute, callbacks: readonly RequestCallback[]): boolean {
  return callbacks.some((name) => (CALLBACKS[name] as CallbackSpec).maxSize === attribute);
}
