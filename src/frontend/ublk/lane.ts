/**
 * A lane of a ublk device (src/lane): a thread that serves some of the device's hardware queues
 * (queuesOfLane: every lanes-th from its own number), each through a ring of its own, through
 * the character device the main thread opened. The kernel takes a queue's commands only from the
 * thread that fetched on it, and blk-mq maps each CPU onto one queue: a lane takes its CPUs'
 * requests, and nothing crosses threads on the request path.
 *
 * Unlike FUSE's clones, a lane's queues leave the kernel what they took: when a queue's ring is
 * closed, the kernel cancels its commands and requeues what they held unanswered for the next
 * server (USER_RECOVERY_REISSUE), so lanes go with `recoverable` here. A lane leaves its queues
 * (UblkQueue.close) and its thread is ended right after (Lane.stop); the main thread closes
 * their rings once the thread is gone (ublk.ts): never while the thread lives on. The kernel
 * quiesces the device once every queue is back; until then the other queues serve on.
 */
import { queuesOfLane, type LaneKind, type LaneServer } from '../frontend.js';
import { InflightTable } from './inflight-table.js';
import { QUEUE_DEPTH, UblkQueues, type UblkLaneShare } from './ublk.js';

export const ublkLanes: LaneKind = {
  serve(share, lane, requests, log): LaneServer {
    const s = share as UblkLaneShare;
    const table = s.table && InflightTable.join(s.table.id, s.queues * QUEUE_DEPTH, s.table.previous);
    let endWith!: (error: Error | undefined) => void;
    const ended = new Promise<Error | undefined>((resolve) => (endWith = resolve));
    let stopping = false;
    const aborted = () => {
      if (!stopping) endWith(new Error(`the kernel stopped ublk device ${s.device}`));
    };
    const queues = new UblkQueues(s.device, { maxReadWriteSize: s.maxReadWriteSize, userCopy: s.userCopy, requests, log, table, aborted }, queuesOfLane(s.queues, s.lanes, lane));
    queues.open(s.cdev);
    return {
      // What arrives from now on stays with the kernel, for the next driver.
      stop: () => {
        stopping = true;
        queues.stopTaking();
      },
      // The worker drained its request layer first: every answer has been queued. The queues
      // are left (UblkQueue.close) until the thread has ended, which follows.
      close: () => {
        stopping = true;
        queues.close(true);
        endWith(undefined);
      },
      // The kernel tells the block layer itself (UPDATE_SIZE): a queue has nothing to answer.
      resize: () => undefined,
      ended,
    };
  },
};
