/**
 * Which frontend serves a new device: asked for by name, or chosen (`auto`: the first kind in
 * kinds.ts this kernel can host).
 */
import { BdusError } from '../driver/errors.js';
import type { FrontendKind } from './frontend.js';
import { FRONTEND_KINDS } from './kinds.js';

export const FRONTENDS = ['auto', ...FRONTEND_KINDS.map((k) => k.name)] as readonly string[];
/** 'auto', or a frontend's name ('ublk', 'fuse', 'nbd'). */
export type FrontendChoice = 'auto' | 'ublk' | 'fuse' | 'nbd' | (string & {});

/** The frontend to use; a clear error if the kernel cannot host it (or, for auto, any). */
export async function chooseFrontend(choice: FrontendChoice = 'auto'): Promise<FrontendKind> {
  if (!FRONTENDS.includes(choice)) throw new BdusError('EINVAL', `invalid frontend '${choice}': expected ${FRONTENDS.join(', ')}`);
  if (process.geteuid?.() !== 0) {
    throw new BdusError('EPERM', 'bdus must run as root: creating block devices needs CAP_SYS_ADMIN (try sudo)');
  }
  const reasons: string[] = [];
  for (const kind of FRONTEND_KINDS) {
    if (choice !== 'auto' && choice !== kind.name) continue;
    const missing = await kind.missing();
    if (!missing) return kind;
    if (choice !== 'auto') throw new BdusError('ENODEV', missing);
    reasons.push(missing);
  }
  throw new BdusError('ENODEV', `no frontend can run here: ${reasons.join('; and ')}`);
}
