/**
 * Request timeouts at no cost per request. The request layer stamps each request it admits
 * (and the daemon's keeper each request it holds) with the timer's current tick (an integer
 * store: no clock read, no timer per request). The tick advances every quarter of the timeout; at each tick the timer expires the
 * requests stamped five or more ticks earlier. So a request fails with ETIMEDOUT between 1 and
 * 1.25 timeouts after it arrived, and a device with no late requests pays one timer callback
 * every timeout / 4.
 *
 * Expiring answers the client only. The callback may still be running: its later outcome is
 * dropped, and it keeps its place among maxConcurrentCallbacks until it settles (the driver is
 * never handed more concurrent callbacks than it asked for, stuck ones included).
 */

/** A request the timer watches (an Exchange, or a request the keeper holds). */
export interface TimedRequest {
  /** The tick when its request was handed over; IDLE when it holds none; EXPIRED once expired. */
  startedAt: number;
  /** Answers the client with ETIMEDOUT now. Called once per request, after startedAt = EXPIRED. */
  expire(): void;
}

export const IDLE = 0;
export const EXPIRED = -1;
const TICKS_PER_TIMEOUT = 4;

export class RequestTimer {
  /** The current tick: what a frontend stamps a request with. Never IDLE or EXPIRED. */
  now = 1;
  private readonly watched: Array<Iterable<TimedRequest>> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly timeoutMs: number,
    private readonly log: (message: string) => void,
    /** Called for each request as it expires, after its expire(). */
    private readonly onExpired: (request: TimedRequest) => void = () => undefined,
  ) {}

  /** Watches a collection of requests; it may change between ticks, and is read at every tick. */
  watch(requests: Iterable<TimedRequest>): void {
    this.watched.push(requests);
    this.timer ??= setInterval(() => this.tick(), this.timeoutMs / TICKS_PER_TIMEOUT).unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    const last = ++this.now - (TICKS_PER_TIMEOUT + 1);
    let count = 0;
    for (const requests of this.watched) {
      for (const request of requests) {
        if (request.startedAt > IDLE && request.startedAt <= last) {
          request.startedAt = EXPIRED;
          request.expire();
          this.onExpired(request);
          count++;
        }
      }
    }
    if (count > 0) {
      this.log(`${count} request${count > 1 ? 's' : ''} not answered within ${this.timeoutMs} ms: the client${count > 1 ? 's see' : ' sees'} ETIMEDOUT`);
    }
  }
}
