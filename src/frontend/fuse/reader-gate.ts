/**
 * When a device's lanes read /dev/fuse (lane.ts), every reader of the connection is woken for
 * every request (the connection has one wait queue, and poll wakes all its waiters), and the
 * ones that find nothing have still taken a core for a moment: at queue depth 1 that cost a
 * request 30-60% of its latency. So a lane's reader that keeps finding at most one request per
 * wake-up parks (FuseChannel): it stops watching its file and only looks now and then, leaving
 * the connection to the main thread's reader, and watches again once its looks keep finding
 * requests waiting (a queue the main reader does not keep up with). Deep queues and large
 * transfers, where lanes pay, keep the lanes reading; a client at queue depth 1 is served by
 * the main thread alone, which then spins after each answer as a device without lanes does.
 * Nothing waits for a parked reader: the main thread's reader never parks, and a request goes
 * to whichever reader takes it.
 *
 * What the threads share is how many lane readers are parked (one 32-bit word): the main
 * reader spins only while all of them are.
 */

const PARKED = 0;

export class ReaderGate {
  private readonly words: Int32Array;

  constructor(
    /** How many lanes' readers may park. */
    private readonly laneReaders: number,
    /** The main thread's gate's memory, in a lane (FuseLaneShare.gate). */
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(4),
  ) {
    this.words = new Int32Array(buffer);
  }

  /** Whether every lane's reader is parked: the main thread's reader is the connection's only one. */
  alone(): boolean {
    return Atomics.load(this.words, PARKED) >= this.laneReaders;
  }

  /** A lane's reader parks (true) or watches again (false). */
  park(parked: boolean): void {
    Atomics.add(this.words, PARKED, parked ? 1 : -1);
  }
}
