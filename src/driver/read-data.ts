/**
 * What a read callback answers with: nothing (it filled the request's buffer), or memory of its
 * own holding the data (a view of its store, a mapped file). The second spares a copy: FUSE+loop
 * and NBD send that memory to the kernel directly. See `Driver.read` for the lifetime rule.
 */

/** A read callback's outcome: void when it filled `buffer`, else the memory holding the data. */
export type ReadResult = void | Uint8Array;

/**
 * The memory a read callback answered with, if it is not the request's own buffer; undefined
 * when the callback filled `buffer`. Anything but a Uint8Array counts as "filled" (callbacks
 * written before memory could be returned may pass on whatever their last call returned, such as
 * a FileHandle.read result). Memory of the wrong size fails the request.
 */
export function ownReadData(buffer: Buffer, result: unknown): Uint8Array | undefined {
  if (!(result instanceof Uint8Array) || result === buffer) return undefined;
  if (result.byteLength !== buffer.length) {
    throw new Error(`read answered with ${result.byteLength} bytes of its own memory for a ${buffer.length}-byte request`);
  }
  return result;
}

/** Runs `read`, and copies the data into `buffer` if it answered with memory of its own: for callers that need the bytes in place (filters). */
export async function readInto(read: Promise<ReadResult> | ReadResult, buffer: Buffer): Promise<void> {
  const data = ownReadData(buffer, await read);
  if (data) buffer.set(data);
}
