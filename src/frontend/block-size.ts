import { lockAttributes, type EffectiveAttributes } from '../driver/attributes.js';

/**
 * Both kernel paths here take one block size for logical and physical (LOOP_CONFIGURE; NBD's
 * blksize), so a larger physical block size is lowered to the logical one, visibly in
 * ctx.attributes: a hint lost, never a guarantee broken (requests stay aligned to the logical
 * block size).
 */
export function oneBlockSize(attributes: EffectiveAttributes): EffectiveAttributes {
  if (attributes.physicalBlockSize === attributes.logicalBlockSize) return attributes;
  return lockAttributes({ ...attributes, physicalBlockSize: attributes.logicalBlockSize });
}
