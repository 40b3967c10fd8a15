/**
 * A lane of a FUSE+loop device (src/lane): a thread that reads the device's FUSE connection
 * through a clone of it (FUSE_DEV_IOC_CLONE: another /dev/fuse file on the same connection, made
 * by the main thread), and serves what it reads through its own request layer. The kernel queues
 * a connection's requests once, for every reader: whichever reads first takes a request, and its
 * reply goes back on the file it came from. Nothing is shared between threads on the request path.
 *
 * The kernel ends the requests a clone had taken when the clone is closed unanswered
 * (fs/fuse/dev.c, fuse_dev_release), instead of keeping them for the connection's next reader:
 * the main thread closes the clones only once the lanes are gone, and for a recoverable device
 * the daemon holds a duplicate of each, so that a dead driver's lanes' requests stay for the
 * next driver. A lane never reads a re-sent request (the main thread has read them all before
 * the lanes start: FuseChannel.resend), so it keeps no restart table.
 *
 * Over io_uring (`fuseIoUring`) a lane registers ring entries, through its clone, on its own
 * share of the connection's queues (queuesOfLane): the kernel sends a request to the queue of the
 * CPU it starts on and completes an entry on the thread that registered it, so a lane takes its
 * CPUs' requests and no other lane is woken for them; the lane's thread is pinned to those CPUs
 * (src/lane/pin.ts), except while a client runs at queue depth 1, when it unpins and spins
 * (RingLane in ring.ts). Its clone is still read, for what the kernel sends outside the ring
 * (forgets, interrupts).
 */
import { constants } from 'node:os';
import { queuesOfLane, type LaneKind, type LaneServer } from '../frontend.js';
import { bufferSizeFor, FuseChannel } from './channel.js';
import { FuseDispatch } from './dispatch.js';
import { MAX_WRITE, SPIN_MICROSECONDS, type FuseLaneShare } from './fuse-loop.js';
import { OutHeader } from './protocol.js';
import { ReaderGate } from './reader-gate.js';
import { FuseRing } from './ring.js';
import { Slot } from './slot.js';

const { EPROTO } = constants.errno;

export const fuseLanes: LaneKind = {
  serve(share, lane, requests, log): LaneServer {
    const s = share as FuseLaneShare;
    const fd = s.clones[lane - 1]!;
    let { image } = s;
    const expiryReply = Buffer.alloc(OutHeader.SIZE);
    // INIT came and went before any lane existed: a second one is a broken kernel.
    const dispatch = new FuseDispatch(requests, () => image, undefined, (slot) => {
      log('lane: unexpected FUSE INIT');
      slot.done(EPROTO);
    });
    const newSlot = (c: FuseChannel<Slot>) => new Slot(Buffer.allocUnsafeSlow(bufferSizeFor(MAX_WRITE)), c, expiryReply, undefined);
    // No spinning (nor does the main thread's reader while a lane's reader is awake): a thread
    // spinning for the next request takes a core that another lane or the client needs.
    // Over the ring, the clone carries only what the kernel sends outside it: no parking.
    const readers = s.ringQueues > 0 ? undefined : { gate: new ReaderGate(s.lanes - 1, s.gate), lane: true };
    const channel = new FuseChannel<Slot>(fd, newSlot, dispatch.handle, 0, readers);
    channel.start();
    let ring: FuseRing | undefined;
    if (s.ringQueues > 0) {
      const queues = queuesOfLane(s.ringQueues, s.lanes, lane);
      const ringLane = { cpus: queues, depthOne: new Int32Array(s.depthOne) }; // queue q is CPU q's
      ring = new FuseRing(fd, channel, MAX_WRITE, dispatch.handle, log, queues, SPIN_MICROSECONDS, ringLane);
    }
    return {
      stop: () => {
        channel.stop();
        ring?.stopTaking();
      },
      // The clone is the main thread's to close (FuseLoopFrontend.release).
      close: () => {
        channel.stop();
        ring?.close();
      },
      // Before the main thread has the kernel ask again (FuseLoopFrontend.resize): any reader may answer.
      resize: (size) => {
        image = { ...image, size };
      },
      ended: channel.ended,
    };
  },
};
