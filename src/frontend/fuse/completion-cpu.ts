/**
 * Which CPU finishes the loop device's requests: the submitting one while the device serves a
 * client at queue depth 1, wherever the kernel likes otherwise.
 *
 * Why: the driver's thread ends a FUSE+loop request (its reply's write, or the ring's commit,
 * ends the loop request in that thread's context), and loop, which has one hardware queue, hands
 * the rest of the completion to the block softirq. Raised from a thread's context, a softirq
 * runs in ksoftirqd: a wake-up and a context switch on the driver's CPU, behind the driver's
 * thread, which is spinning for the next request then (8-13% of all samples in ksoftirqd in the
 * QD1 profiles, docs/performance.md). With the queue's `rq_affinity` at 2 (QUEUE_FLAG_SAME_FORCE)
 * the kernel sends the completion to the CPU that submitted the request instead, by IPI, where
 * the client sleeps waiting for it: 4k QD1 latency 8-16% lower in alternating rounds. From
 * queue depth 2 on, an IPI per request costs more than a softirq that completes many at once
 * (15-30% fewer IOPS at QD2-QD16): hence only at queue depth 1.
 *
 * Queue depth 1 is read from the main /dev/fuse reader's wake-ups: of a window of 64, 61-64
 * take one small request at QD1, 5-8 at QD2, 0-4 at QD16 (the ram example, instrumented). The
 * setting changes (a sysfs write, which does not wait for requests in flight) when a window
 * says so, so a change of load is followed within a few milliseconds. Not FUSE's ring: its
 * thread takes requests one by one as it spins, whatever the depth (docs/performance.md).
 *
 * The frontend owns its loop device, and so this setting: a driver starts with it at the
 * kernel's default (1) and puts it back when it lets the device go.
 */
import { writeFileSync } from 'node:fs';

/** Wake-ups per decision. */
const WINDOW = 64;
/** Lonely wake-ups of a window that make it queue depth 1, and that keep it so. */
const ENTER = 56;
const STAY = 32;
/** A request moving this much data or more is never lonely (1 MiB reads come one per wake-up). */
const LONELY_BYTES = 64 << 10;

export class CompletionCpu {
  private path: string | undefined;
  private wakes = 0;
  private lonely = 0;
  private submitting = false;

  constructor(private readonly log: (line: string) => void) {}

  /** The loop device is `loopPath` (/dev/loopN): its setting is put at the kernel's default. */
  attach(loopPath: string): void {
    this.path = `/sys/block/${loopPath.replace('/dev/', '')}/queue/rq_affinity`;
    this.set(false, true);
  }

  /** Leaves the setting at the kernel's default and stops changing it (the device is let go). */
  detach(): void {
    if (this.path) this.set(false);
    this.path = undefined;
  }

  /**
   * A reader's wake-up took `taken` requests moving `bytes` of data; `alone`: no other reader
   * (a lane's) is taking requests (lanes share a queue depth between them).
   */
  woke(taken: number, bytes: number, alone: boolean): void {
    if (taken === 0 || !this.path) return;
    if (!alone) {
      if (this.submitting) this.set(false);
      this.wakes = this.lonely = 0;
      return;
    }
    if (taken === 1 && bytes < LONELY_BYTES) this.lonely++;
    if (++this.wakes < WINDOW) return;
    const submitting = this.lonely >= (this.submitting ? STAY : ENTER);
    this.wakes = this.lonely = 0;
    if (submitting !== this.submitting) this.set(submitting);
  }

  private set(submitting: boolean, force = false): void {
    if (submitting === this.submitting && !force) return;
    this.submitting = submitting;
    try {
      writeFileSync(this.path!, submitting ? '2' : '1');
    } catch (error) {
      // The device is going away, or this kernel has no such setting: nothing to steer.
      this.log(`warning: cannot set ${this.path} (${(error as Error).message}); completions stay where the kernel puts them`);
      this.path = undefined;
    }
  }
}
