/**
 * FUSE+loop as a kernel path: a one-file FUSE filesystem whose file a loop device serves. The
 * driver process serves it (fuse-loop.ts); while a recoverable device has no driver, the daemon's
 * keeper reads its requests (keeper.ts), through the duplicate of /dev/fuse the daemon holds.
 */
import { existsSync } from 'node:fs';
import { lockAttributes } from '../../driver/attributes.js';
import { oneBlockSize } from '../block-size.js';
import type { FrontendKind } from '../frontend.js';
import { FuseLoopFrontend, reclaimFuseLoop } from './fuse-loop.js';
import { FuseKeeper } from './keeper.js';
import { fuseLanes } from './lane.js';
import { fuseRingQueues } from './ring.js';
import { RestartTable } from './restart-table.js';

export const fuseLoop: FrontendKind = {
  name: 'fuse',
  title: 'FUSE+loop',

  async missing() {
    if (!existsSync('/dev/fuse')) return 'no /dev/fuse: load the fuse module (modprobe fuse) or pass /dev/fuse into the container';
    if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control: load the loop module (modprobe loop)';
    return undefined;
  },

  /**
   * Over io_uring a lane serves whole queues of the connection (one per possible CPU): no more
   * lanes than queues, visibly.
   */
  attributes(attributes) {
    const checked = oneBlockSize(attributes);
    const lanes = checked.fuseIoUring ? Math.min(checked.lanes, fuseRingQueues()) : checked.lanes;
    return lanes === checked.lanes ? checked : lockAttributes({ ...checked, lanes });
  },

  // loop sends no FUA (O_DSYNC becomes write + flush), no secure erase, no write-same, and
  // answers ioctls itself; block status is an NBD query.
  callable: ['read', 'write', 'writeZeros', 'flush', 'discard'],

  lanes: fuseLanes,

  create: (options) => new FuseLoopFrontend({ ...options, restarts: RestartTable.open(options.id.toString()) }),

  keeping: {
    // The FUSE connection lives only while someone holds /dev/fuse: the daemon's duplicate.
    kernelKeepsDevice: false,
    kernelEnd: true,

    async orphan(device, fd, mode, log) {
      const { attributes } = device;
      const keeper = new FuseKeeper(fd, { ...attributes, index: device.index, readOnly: device.readOnly }, RestartTable.open(device.id), log);
      keeper.start(mode);
      return { keeper, fd };
    },

    lostInHandover: (_device, fd) => fd,

    async reclaim(device) {
      await reclaimFuseLoop(device.index, device.kernelPath);
      RestartTable.remove(device.id);
    },
  },
};
