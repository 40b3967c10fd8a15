/** The kernel paths bdus can serve a device through, in the order `auto` tries them. */
import { BdusError } from '../driver/errors.js';
import type { FrontendKind } from './frontend.js';
import { fuseLoop } from './fuse/kind.js';
import { kernelNbd } from './nbd/kind.js';
import { ublk } from './ublk/kind.js';

// ublk first: the kernel's own interface for this job, with FUA, distinct discard and
// write-zeroes, errnos that reach the client, several queues and the kernel's user recovery.
// Then FUSE+loop (everywhere FUSE is), then kernel NBD.
export const FRONTEND_KINDS: readonly FrontendKind[] = [ublk, fuseLoop, kernelNbd];

/** The kind of a device's frontend, by its registry name. */
export function frontendKind(name: string): FrontendKind {
  const kind = FRONTEND_KINDS.find((k) => k.name === name);
  if (!kind) throw new BdusError('EINVAL', `unknown frontend '${name}': expected ${FRONTEND_KINDS.map((k) => k.name).join(', ')}`);
  return kind;
}
