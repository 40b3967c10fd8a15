/**
 * Pinning a lane's thread to the CPUs whose requests it serves, where a kernel path sends each
 * CPU's requests to one queue and completes a queue's commands on the thread that serves it
 * (FUSE's io_uring queues). Pinned, a request submitted on a CPU is taken and answered on that
 * CPU: no wake-up across CPUs, no thread migrating between them (FUSE's ring, two lanes on two
 * vCPUs, 4k randread QD32: 49-57k IOPS unpinned, 87-94k pinned; docs/performance.md). Not
 * ublk's lanes: there the client's own thread submits to its CPU's queue, and a lane pinned to
 * that CPU competed with it (measured in the VM: docs/performance.md).
 */
import { native } from '../native.js';

/**
 * Pins the calling thread (a lane's, or the main thread as lane 0) to `cpus`. A failure (a
 * cpuset without those CPUs) is logged, and the thread serves unpinned.
 */
export function pinLane(cpus: readonly number[], log: (line: string) => void): void {
  if (cpus.length === 0) return;
  try {
    native.pinThread(cpus);
  } catch (error) {
    log(`warning: cannot pin this lane to CPUs ${cpus.join(',')} (${(error as Error).message}); it runs unpinned`);
  }
}
