/**
 * One NBD request between a connection and the request layer: its cookie, the buffers it holds
 * while its callbacks run, and how its reply is encoded. Pooled per connection, so a request
 * allocates no bookkeeping of its own (see src/request/exchange.ts for the life of an exchange).
 */
import type { Extent } from '../driver/driver.js';
import { Exchange } from '../request/exchange.js';
import type { PooledBuffer, Slab } from './input.js';

/** What the connection does with a request's answer and end. */
export interface NbdReplies {
  answer(request: NbdRequest, errno: number): void;
  finish(request: NbdRequest): void;
}

/** How a request's success is encoded. */
export const enum Answer {
  /** A status reply alone. */
  STATUS,
  /** The read data, already in `reply` after its header. */
  READ,
  /** A block-status chunk of `extents`. */
  EXTENTS,
}

export class NbdRequest extends Exchange {
  /** The cookie, as two 32-bit halves (no BigInt per request), echoed in the reply. */
  high = 0;
  low = 0;
  kind = Answer.STATUS;
  /** A read's reply: the callback fills the bytes after its header in place, or answers with its own memory (`ownData`). */
  reply: PooledBuffer | undefined;
  /** A write's payload when it was gathered from several socket reads. */
  payload: PooledBuffer | undefined;
  /** The slab a write's payload is a view of, held until the callback ends. */
  slab: Slab | undefined;
  /** A block-status query's answer, and whether the client asked for one extent only. */
  readonly extents: Extent[] = [];
  one = false;
  /** Bytes of payload or reply this request holds until it ends (the connection's memory limit). */
  held = 0;

  /** The size of a read reply's header, before its data in `reply`. */
  headerSize = 0;

  constructor(private readonly replies: NbdReplies) {
    super();
    this.takesOwnData = true;
  }

  answer(errno: number): void {
    this.replies.answer(this, errno);
  }

  finish(): void {
    this.replies.finish(this);
  }
}
