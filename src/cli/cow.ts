/** `bdus cow`: commit or discard a cow filter's overlay while no driver holds it. */
import { commitOverlay, discardOverlay } from '../filters/cow-overlay.js';
import { parseCommandLine } from './suggest.js';
import { UsageError } from './usage.js';

export const COW_HELP = `usage: bdus cow commit <overlay> <base>
       bdus cow discard <overlay>

What to do with a cow filter's overlay (--filter cow:overlay=PATH) once its device is gone:
commit writes the blocks the device changed into <base> (the file or block device the driver
below read, of at least the device's size) and removes the overlay; discard removes it. Both
refuse while a driver holds the overlay. An interrupted commit can be run again.
`;

export async function cowCommand(argv: string[]): Promise<number> {
  const { positionals } = parseCommandLine('cow', { args: argv, options: {}, allowPositionals: true });
  const [action, overlay, base, ...extra] = positionals;
  if (action === 'commit' && overlay && base && extra.length === 0) {
    const blocks = commitOverlay(overlay, base);
    process.stderr.write(`bdus: committed ${blocks} block(s) of ${overlay} into ${base}; the overlay is removed\n`);
    return 0;
  }
  if (action === 'discard' && overlay && base === undefined) {
    discardOverlay(overlay);
    return 0;
  }
  throw new UsageError('bdus cow: give commit OVERLAY BASE, or discard OVERLAY');
}
