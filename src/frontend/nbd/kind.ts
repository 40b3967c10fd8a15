/**
 * Kernel NBD as a kernel path: nbd.ko is the block device, the driver process its server over a
 * socket pair (kernel-nbd.ts). The kernel keeps the device by itself while no server is
 * connected: a dead driver's requests wait for the dead-connection timeout, and the next
 * driver's netlink reconfigure gives them a socket.
 */
import { closeSync, rmSync } from 'node:fs';
import { AttributeError } from '../../driver/errors.js';
import { oneBlockSize } from '../block-size.js';
import type { FrontendKind, KeptDevice } from '../frontend.js';
import { KernelNbdFrontend, unreadPath } from './kernel-nbd.js';
import { backendOf, connectedBackend, nbdAvailable, nbdDisconnect, nbdIndexOf, nbdReconfigure } from './netlink.js';

/** Closes the daemon's duplicate of the socket: the kernel sees it die. What the dead driver read of it is lost. */
function dropSocket(device: KeptDevice, fd: number): number {
  if (fd >= 0) closeSync(fd);
  rmSync(unreadPath(device.id), { force: true });
  return -1;
}

export const kernelNbd: FrontendKind = {
  name: 'nbd',
  title: 'kernel NBD',

  async missing() {
    return (await nbdAvailable()) ? undefined : 'the kernel has no nbd module (modprobe nbd failed)';
  },

  attributes(attributes) {
    if (attributes.recoverable && attributes.recoveryMode === 'fail-received') {
      throw new AttributeError(
        'invalid attribute recoveryMode=fail-received: the kernel NBD frontend cannot offer it (the kernel does not say which requests a dead driver had received); use reissue or fail-all',
      );
    }
    if (attributes.lanes > 1) throw new AttributeError('invalid attribute lanes: the kernel NBD frontend has no lanes yet (FUSE+loop and ublk have them: --frontend fuse or ublk)');
    return oneBlockSize(attributes);
  },

  // nbd.ko has no secure erase, write-same or ioctl commands, and does not ask for block status.
  callable: ['read', 'write', 'writeZeros', 'fuaWrite', 'flush', 'discard'],

  create: (options) => new KernelNbdFrontend(options),

  keeping: {
    kernelKeepsDevice: true,
    kernelEnd: true,

    /**
     * The kernel holds the requests once the socket is dead: new ones wait for the
     * dead-connection timeout, those in flight are re-queued when they time out. In fail-all
     * mode they fail at once.
     */
    async orphan(device, fd, mode, log) {
      dropSocket(device, fd);
      if (mode === 'fail-all') {
        await nbdReconfigure(nbdIndexOf(device.kernelPath), { deadConnTimeout: 0, backend: backendOf(device.id) }).catch((error: Error) =>
          log(error.message),
        );
      }
      return { keeper: undefined, fd: -1 };
    },

    // What the dead driver read of the stream is lost with it: the kernel needs a new socket.
    lostInHandover: dropSocket,

    /**
     * Ends the kernel device if it is still connected for this device (its driver disconnects it
     * on a normal end, and the nbd node may already serve a newer device): requests in flight
     * and later ones fail with EIO.
     */
    async reclaim(device, log) {
      rmSync(unreadPath(device.id), { force: true });
      const index = nbdIndexOf(device.kernelPath);
      if (index < 0 || connectedBackend(index) !== backendOf(device.id)) return;
      await nbdDisconnect(index).catch((error: Error) => log(error.message));
    },
  },
};
