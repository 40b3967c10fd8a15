/** Block status as an NBD client may see it: the driver's extents, checked and cut to the range asked. */
import type { Extent } from '../driver/driver.js';

/**
 * Checks the extents a driver appended to `into` after `start` and cuts them to `size` bytes:
 * each a positive multiple of the logical block size, at least one. Returns what is wrong (the
 * extents are then dropped), or undefined.
 */
export function cutExtents(into: Extent[], start: number, size: number, logicalBlockSize: number): string | undefined {
  let covered = 0;
  let kept = start;
  for (let i = start; i < into.length && covered < size; i++, kept++) {
    const extent = into[i]!;
    if (!Number.isSafeInteger(extent?.length) || extent.length <= 0 || extent.length % logicalBlockSize !== 0) {
      into.length = start;
      return `returned an extent of length ${String(extent?.length)}: not a positive multiple of ${logicalBlockSize}`;
    }
    if (covered + extent.length > size) into[i] = { ...extent, length: size - covered };
    covered += Math.min(extent.length, size - covered);
  }
  into.length = kept;
  return kept === start ? 'returned no extent' : undefined;
}
