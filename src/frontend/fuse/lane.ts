/**
 * A lane of a FUSE+loop device (src/lane): a thread that reads the device's FUSE connection
 * through a clone of it (FUSE_DEV_IOC_CLONE: another /dev/fuse file on the same connection), and
 * serves what it reads through its own request layer. The kernel queues a connection's requests
 * once, for every reader: whichever reads first takes a request, and its reply goes back on the
 * file it came from. Nothing is shared between threads on the request path.
 *
 * The kernel ends the requests a clone had taken when the clone is closed unanswered
 * (fs/fuse/dev.c, fuse_dev_release), instead of keeping them for the connection's next reader:
 * that is why lanes exclude `recoverable`. A lane closes its clone only after its requests are answered.
 */
import { closeSync } from 'node:fs';
import { constants } from 'node:os';
import type { LaneKind, LaneServer } from '../frontend.js';
import { native } from '../../native.js';
import { bufferSizeFor, FuseChannel } from './channel.js';
import { FuseDispatch } from './dispatch.js';
import { MAX_WRITE, type FuseLaneShare } from './fuse-loop.js';
import { OutHeader } from './protocol.js';
import { Slot } from './slot.js';

const { EPROTO } = constants.errno;

export const fuseLanes: LaneKind = {
  serve(share, _lane, requests, log): LaneServer {
    const { fd: connection } = share as FuseLaneShare;
    let { image } = share as FuseLaneShare;
    const fd = native.fuseClone(connection);
    const expiryReply = Buffer.alloc(OutHeader.SIZE);
    // INIT came and went before any lane existed: a second one is a broken kernel.
    const dispatch = new FuseDispatch(requests, () => image, undefined, (slot) => {
      log('lane: unexpected FUSE INIT');
      slot.done(EPROTO);
    });
    const newSlot = (c: FuseChannel<Slot>) => new Slot(Buffer.allocUnsafeSlow(bufferSizeFor(MAX_WRITE)), c, expiryReply, undefined);
    // No spinning (nor does the main thread's reader when there are lanes): a thread spinning
    // for the next request takes a core that another lane or the client needs.
    const channel = new FuseChannel<Slot>(fd, newSlot, dispatch.handle, 0);
    channel.start();
    let closed = false;
    return {
      stop: () => channel.stop(),
      close: () => {
        channel.stop();
        if (!closed) closeSync(fd);
        closed = true;
      },
      // Before the main thread has the kernel ask again (FuseLoopFrontend.resize): any reader may answer.
      resize: (size) => {
        image = { ...image, size };
      },
      ended: channel.ended,
    };
  },
};
