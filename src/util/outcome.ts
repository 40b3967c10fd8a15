/**
 * How something that runs for a while ends: a promise settled from outside (resolved on a normal
 * end, rejected with the reason of an abnormal one). A rejection is never unhandled here: it is
 * for whoever awaits `promise`.
 */
export class Outcome {
  readonly promise: Promise<void>;
  resolve!: () => void;
  reject!: (error: Error) => void;

  constructor() {
    this.promise = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.promise.catch(() => undefined);
  }
}
