/**
 * Which frontend serves a new device: asked for by name, or chosen. `auto` takes FUSE+loop where
 * the kernel has FUSE and loop devices (the path with the fullest recovery guarantees: the
 * daemon can tell which requests a dead driver had received), and the kernel NBD client
 * otherwise.
 */
import { existsSync } from 'node:fs';
import { AttributeError, BdusError } from '../driver/errors.js';
import { lockAttributes, type EffectiveAttributes } from '../driver/attributes.js';
import { nbdAvailable } from './nbd/netlink.js';

export const FRONTENDS = ['auto', 'fuse', 'nbd'] as const;
export type FrontendChoice = (typeof FRONTENDS)[number];
export type FrontendName = Exclude<FrontendChoice, 'auto'>;

function fuseLoopMissing(): string | undefined {
  if (!existsSync('/dev/fuse')) return 'no /dev/fuse: load the fuse module (modprobe fuse) or pass /dev/fuse into the container';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control: load the loop module (modprobe loop)';
  return undefined;
}

/** The frontend to use; a clear error if the kernel cannot host it (or, for auto, either). */
export async function chooseFrontend(choice: FrontendChoice = 'auto'): Promise<FrontendName> {
  if (!FRONTENDS.includes(choice)) throw new BdusError('EINVAL', `invalid frontend '${choice}': expected ${FRONTENDS.join(', ')}`);
  if (process.geteuid?.() !== 0) {
    throw new BdusError('EPERM', 'bdus must run as root: creating block devices needs CAP_SYS_ADMIN (try sudo)');
  }
  const fuseMissing = choice === 'nbd' ? 'not asked for' : fuseLoopMissing();
  if (!fuseMissing) return 'fuse';
  if (choice === 'fuse') throw new BdusError('ENODEV', fuseMissing);
  if (await nbdAvailable()) return 'nbd';
  const nbdMissing = 'the kernel has no nbd module (modprobe nbd failed)';
  throw new BdusError('ENODEV', choice === 'nbd' ? nbdMissing : `no frontend can run here: ${fuseMissing}; and ${nbdMissing}`);
}

/** Adjusts attributes to what a frontend's kernel path can show, or refuses what it cannot do. */
export function frontendAttributes(frontend: string, attributes: EffectiveAttributes): EffectiveAttributes {
  if (frontend === 'nbd' && attributes.recoverable && attributes.recoveryMode === 'fail-received') {
    throw new AttributeError(
      'invalid attribute recoveryMode=fail-received: the kernel NBD frontend cannot offer it (the kernel does not say which requests a dead driver had received); use reissue or fail-all',
    );
  }
  // Both kernel paths take one block size for logical and physical (LOOP_CONFIGURE; NBD's
  // blksize), so a larger physical block size is lowered to the logical one, visibly in
  // ctx.attributes: a hint lost, never a guarantee broken (requests stay aligned to the
  // logical block size).
  if (attributes.physicalBlockSize === attributes.logicalBlockSize) return attributes;
  return lockAttributes({ ...attributes, physicalBlockSize: attributes.logicalBlockSize });
}
