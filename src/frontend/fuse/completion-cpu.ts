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
 * The queue depth is the loop device's own count of requests in flight (sysfs `inflight`),
 * sampled on a timer: whoever serves them (/dev/fuse or FUSE's ring, one thread or lanes) and
 * however the serving thread batches them, a client at queue depth 1 never has two in flight.
 * (How the readers' wake-ups batch says too little: a ring's spinning thread takes requests one
 * by one at any depth.) Steering starts after ENTER samples in a row with at most one request in
 * flight, half of them busy; it stops at the first sample with two or more, so a deeper client is
 * served at the default within one tick. The setting is a sysfs write, which does not wait for
 * the requests in flight.
 *
 * The same reading tells the threads of FUSE's ring's lanes when to run as one ring does
 * (`depthOne`; RingLane in ring.ts).
 *
 * The frontend owns its loop device, and so this setting: a driver starts with it at the
 * kernel's default (1) and puts it back when it lets the device go.
 */
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';

/** Between samples of the requests in flight. */
const TICK_MS = 25;
/** Samples in a row with at most one request in flight before steering (200 ms at queue depth 1). */
const ENTER = 8;
/**
 * An idle device (IDLE samples in a row with nothing in flight: 2 s) is sampled every IDLE_TICK_MS
 * only, so that a driver with nothing to do wakes 4 times a second, not 40; the first sample that
 * finds a request goes back to TICK_MS (so steering for a client that starts on an idle device
 * may begin up to 250 ms later).
 */
const IDLE = 80;
const IDLE_TICK_MS = 250;

export class CompletionCpu {
  private affinity: string | undefined;
  private inflight: number | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly sample = Buffer.alloc(64);
  /** Samples in a row with at most one request in flight, and of them those with one. */
  private shallow = 0;
  private busy = 0;
  /** Samples in a row with nothing in flight; from IDLE on, the timer ticks at IDLE_TICK_MS. */
  private idle = 0;
  /**
   * 1 while a client runs at queue depth 1 (completions go to the submitting CPU then), else 0:
   * this object's own state, and shared with the threads of the ring's lanes, which serve
   * differently then (RingLane, ring.ts).
   */
  readonly depthOne = new Int32Array(new SharedArrayBuffer(4));

  constructor(private readonly log: (line: string) => void) {}

  /** The loop device is `loopPath` (/dev/loopN): its setting is put at the kernel's default. */
  attach(loopPath: string): void {
    this.stopSampling();
    const block = `/sys/block/${loopPath.replace('/dev/', '')}`;
    this.affinity = `${block}/queue/rq_affinity`;
    this.set(false, true);
    if (!this.affinity) return;
    try {
      this.inflight = openSync(`${block}/inflight`, 'r');
    } catch (error) {
      this.log(`warning: cannot read ${block}/inflight (${(error as Error).message}); completions stay where the kernel puts them`);
      return;
    }
    this.shallow = this.busy = this.idle = 0;
    this.every(TICK_MS);
  }

  /** Leaves the setting at the kernel's default and stops changing it (the device is let go). */
  detach(): void {
    this.stopSampling();
    if (this.affinity) this.set(false);
    this.affinity = undefined;
  }

  private readonly tick = (): void => {
    let inflight: number;
    try {
      inflight = sumOfNumbers(this.sample, readSync(this.inflight!, this.sample, 0, this.sample.length, 0));
    } catch {
      return this.stopSampling(); // the device is going away: detach() follows
    }
    if (inflight > 0) {
      if (this.idle >= IDLE) this.every(TICK_MS);
      this.idle = 0;
    } else if (++this.idle === IDLE) {
      this.every(IDLE_TICK_MS);
    }
    if (inflight > 1) {
      this.shallow = this.busy = 0;
      return this.set(false);
    }
    this.shallow++;
    this.busy += inflight;
    if (this.shallow >= ENTER && this.busy >= ENTER / 2) this.set(true);
  };

  private every(ms: number): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = setInterval(this.tick, ms).unref();
  }

  private stopSampling(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.inflight !== undefined) closeSync(this.inflight);
    this.timer = this.inflight = undefined;
  }

  private set(submitting: boolean, force = false): void {
    if (submitting === (this.depthOne[0] === 1) && !force) return;
    Atomics.store(this.depthOne, 0, submitting ? 1 : 0);
    try {
      writeFileSync(this.affinity!, submitting ? '2' : '1');
    } catch (error) {
      Atomics.store(this.depthOne, 0, 0);
      // The device is going away, or this kernel has no such setting: nothing to steer.
      this.log(`warning: cannot set ${this.affinity} (${(error as Error).message}); completions stay where the kernel puts them`);
      this.stopSampling();
      this.affinity = undefined;
    }
  }
}

/** The sum of the decimal numbers in `text`'s first `length` bytes ("%8u %8u\n": reads and writes in flight). */
function sumOfNumbers(text: Buffer, length: number): number {
  let sum = 0;
  let number = 0;
  for (let i = 0; i < length; i++) {
    const digit = text[i]! - 0x30;
    if (digit >= 0 && digit <= 9) {
      number = number * 10 + digit;
    } else {
      sum += number;
      number = 0;
    }
  }
  return sum + number;
}
