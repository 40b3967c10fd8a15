/**
 * A request in flight between a frontend and the request layer. The frontend owns the object (a
 * FUSE slot, an NBD request record: pooled and reused, so a request allocates no bookkeeping of
 * its own) and hands it to a request-layer entry point; from then on the request layer owns the
 * request's life and talks back through two calls:
 *
 * - answer(errno): encode the reply now. Called once per request: with the callbacks' outcome
 *   (0 or a positive errno), or with ETIMEDOUT as soon as requestTimeout has passed while they
 *   still run (then `timedOut` is true, and the request's buffers may still be in a callback's
 *   hands: build the reply elsewhere).
 *   May come before the entry point that handed the request over returns (callbacks that return
 *   without a promise): hand it over as the last step.
 * - finish(): every callback of the request has ended: its buffers are free again, and the
 *   exchange may be reused. Called once per request, always after answer.
 *
 * The request layer's timer reads `startedAt` (see RequestTimer); a frontend never touches it.
 */
import { constants } from 'node:os';
import { EXPIRED, IDLE, type TimedRequest } from './request-timer.js';

const { ETIMEDOUT } = constants.errno;

export abstract class Exchange implements TimedRequest {
  startedAt = IDLE;
  /**
   * Driver deaths this request has been in flight across, where the frontend can tell (FUSE's
   * re-sent requests, ublk's in-flight table): set before handing it over. Past restartLimit the request layer fails it
   * alone with EIO (seed 000), since it may be what kills the drivers.
   */
  restarts = 0;
  /** @internal Its operation, size in bytes and admission time (performance.now()), for the statistics. */
  op = 0;
  bytes = 0;
  admittedAt = 0;
  /**
   * Whether the frontend can send a read's reply from the callback's own memory (`ownData`)
   * rather than from the request's buffer; where it cannot, the request layer copies that memory
   * into the buffer. Set once by the frontend.
   */
  takesOwnData = false;
  /**
   * A read's data in memory of the callback's own (see Driver.read), set before answer(0) when
   * the callback returned some, else undefined: the frontend sends it instead of the buffer, and
   * clears it once sent.
   */
  ownData: Uint8Array | undefined = undefined;
  /** @internal The request layer's continuation for this exchange, made once. */
  settle: ((errno: number) => void) | undefined;

  /** Encode the reply: 0 or a positive errno. */
  abstract answer(errno: number): void;
  /** The request's callbacks have all ended; its buffers are free. */
  abstract finish(): void;

  /** Whether the request was answered with ETIMEDOUT while its callbacks still run. */
  get timedOut(): boolean {
    return this.startedAt === EXPIRED;
  }

  /** @internal Called by the timer (after it set startedAt to EXPIRED). */
  expire(): void {
    this.answer(ETIMEDOUT);
  }
}
