import { lockAttributes, type EffectiveAttributes } from '../driver/attributes.js';

/**
 * The attributes as a path with one block size, one queue and no device hints shows them
 * (FUSE+loop: LOOP_CONFIGURE; kernel NBD: its blksize). A larger physical block size is lowered
 * to the logical one, `queues` to 1, and the hints (rotational, optimalIoSize) dropped, visibly
 * in ctx.attributes: a hint lost, never a guarantee broken (requests stay aligned to the logical
 * block size).
 */
export function oneBlockSize(attributes: EffectiveAttributes): EffectiveAttributes {
  const { logicalBlockSize, physicalBlockSize, queues, rotational, optimalIoSize } = attributes;
  if (physicalBlockSize === logicalBlockSize && queues === 1 && !rotational && optimalIoSize === 0) return attributes;
  return lockAttributes({ ...attributes, physicalBlockSize: logicalBlockSize, queues: 1, rotational: false, optimalIoSize: 0 });
}
