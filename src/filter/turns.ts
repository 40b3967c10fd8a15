/**
 * One operation at a time per block, for filters that read, change and write whole blocks of
 * their own (cow's copy-up, cache's fills, write-backs and changes): two requests touching
 * different sectors of one block would otherwise each read the old block and write it back with
 * only their own change, and one change would be lost. Requests on different blocks never wait.
 */
export class BlockTurns {
  private readonly busy = new Map<number, Promise<void>>();

  /** Whether an operation on block `b` is under way. */
  has(b: number): boolean {
    return this.busy.has(b);
  }

  /** Runs `fn` with block `b` to itself, after the turns already taken on it. */
  async run<T>(b: number, fn: () => Promise<T>): Promise<T> {
    for (let waiting = this.busy.get(b); waiting; waiting = this.busy.get(b)) await waiting;
    // Taken in the same tick as the check above: no other turn can slip in between.
    const work = fn();
    this.busy.set(b, work.then(() => undefined, () => undefined));
    try {
      return await work;
    } finally {
      this.busy.delete(b);
    }
  }
}
