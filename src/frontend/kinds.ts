/** The kernel paths bdus can serve a device through, in the order `auto` tries them. */
import { BdusError } from '../driver/errors.js';
import type { FrontendKind } from './frontend.js';
import { fuseLoop } from './fuse/kind.js';
import { kernelNbd } from './nbd/kind.js';

// FUSE+loop first: the path with the fullest recovery guarantees (the daemon can tell which
// requests a dead driver had received).
export const FRONTEND_KINDS: readonly FrontendKind[] = [fuseLoop, kernelNbd];

/** The kind of a device's frontend, by its registry name. */
export function frontendKind(name: string): FrontendKind {
  const kind = FRONTEND_KINDS.find((k) => k.name === name);
  if (!kind) throw new BdusError('EINVAL', `unknown frontend '${name}': expected ${FRONTEND_KINDS.map((k) => k.name).join(', ')}`);
  return kind;
}
