/**
 * The bytes a connection receives, cut into the messages its parser waits for.
 *
 * Two ways in. A socket that reads into buffers we give it (net.Socket's `onread`) reads into a
 * slab: every byte not yet taken lies contiguous in the current slab, so a request's header and
 * payload are views into it (no copy, no allocation per read), and when the awaited message will
 * not fit in what is left, the part already read moves to a fresh slab (a short copy) and the
 * rest is read behind it. A slab is used again once the requests viewing it have ended. A
 * message whose home is known (expectInto: a write's data going to the driver's memory, a read
 * reply's data to the NBD client's caller) is read straight into it instead, what already
 * arrived copied first. Any other socket (TLS, or a handshake's 'data' events) pushes its
 * chunks; a message spread over several is gathered into a pooled buffer, or copied into its
 * home as the chunks come.
 */

/** A message's `then` runs once its `size` bytes have arrived (copied into `into`, if given). */
type Waiting = { size: number; then: (data: Buffer) => void; into?: Buffer };

const SLAB_SIZE = 1 << 20;
/** A read gets at least this much room, or a fresh slab is taken. */
const MIN_READ = 64 << 10;
/** Slabs kept for reuse. */
const KEEP_SLABS = 2;
/** Messages gathered from several chunks go into a pooled buffer from this size on (payloads). */
const POOLED_MESSAGE = 4096;

/** A slab and the requests still viewing it (+1 while it is the one being read into). */
export class Slab {
  refs = 1;
  constructor(readonly buffer: Buffer) {}
}

/**
 * A reusable buffer for a read's reply or a gathered payload: allocating a fresh one per request
 * costs more than the request (a large one is fresh memory: a page fault per 4 KiB).
 */
export class PooledBuffer {
  readonly buffer: Buffer;
  constructor(
    private readonly pool: BufferPool,
    size: number,
  ) {
    this.buffer = Buffer.allocUnsafeSlow(size);
  }
  private headView: Buffer | undefined;
  /** Gives the buffer back; bound once, so that it can be a write's callback. */
  readonly release = (): void => this.pool.put(this);

  /** Its first `length` bytes, as a view made once (a reply's header, when its data is elsewhere). */
  head(length: number): Buffer {
    if (this.headView?.length !== length) this.headView = this.buffer.subarray(0, length);
    return this.headView;
  }
}

/** Buffers by exact size: a client's requests come in few sizes. */
export class BufferPool {
  private readonly free = new Map<number, PooledBuffer[]>();
  /** Most buffers kept of one size; more are left to the collector. */
  private static readonly KEEP = 64;

  take(size: number): PooledBuffer {
    return this.free.get(size)?.pop() ?? new PooledBuffer(this, size);
  }

  put(buffer: PooledBuffer): void {
    const size = buffer.buffer.length;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    if (list.length < BufferPool.KEEP) list.push(buffer);
  }
}

export class MessageInput {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private waiting: Waiting | undefined;
  private draining = false;
  private slab: Slab | undefined;
  private slabUsed = 0;
  private readonly freeSlabs: Slab[] = [];
  /** Bytes of the awaited message already in its `into`. */
  private filled = 0;
  /** The wait whose `into` readBuffer() last gave the socket to read into (not a slab), until didRead(). */
  private direct: Waiting | undefined;
  /** The pooled buffer the message just taken was gathered into, if it was: its request releases it. */
  gathered: PooledBuffer | undefined;

  /** Whether messages may still be delivered (the connection sets it: its socket is not destroyed). */
  open: () => boolean = () => true;

  constructor(readonly buffers = new BufferPool()) {}

  /** Calls `then` with the next `size` bytes, once they have arrived. */
  expect(size: number, then: (data: Buffer) => void): void {
    this.waiting = { size, then };
    this.drain();
  }

  /**
   * Like expect, but the bytes go straight into `into` (all of it), which `then` gets: read
   * there by the socket where it reads into our buffers, else copied there as they come. One
   * copy, the kernel's, for a payload whose home is known, instead of gathering it first.
   */
  expectInto(into: Buffer, then: (data: Buffer) => void): void {
    this.waiting = { size: into.length, then, into };
    this.filled = 0;
    this.drain();
  }

  /** Delivers nothing more. */
  stop(): void {
    this.waiting = undefined;
  }

  /** Takes a socket's chunk (one that did not read into our slabs). */
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.drain();
  }

  /** `onread`'s buffer: where the socket's next bytes go. */
  readBuffer(): Buffer {
    const into = this.waiting?.into;
    // drain() moved every byte received into it: the rest comes straight, and no further.
    if (into && this.filled < into.length) {
      this.direct = this.waiting;
      return into.subarray(this.filled);
    }
    this.direct = undefined;
    const missing = this.waiting ? this.waiting.size - this.buffered : 0;
    const slab = this.slab;
    if (!slab || slab.buffer.length - this.slabUsed < Math.max(MIN_READ, missing)) this.newSlab(missing);
    return this.slab!.buffer.subarray(this.slabUsed);
  }

  /** `onread`'s callback: `n` bytes arrived where readBuffer() said. */
  didRead(n: number): void {
    if (this.direct) {
      // Unless the wait was given up meanwhile (a shutdown): then the bytes are nobody's.
      if (this.direct === this.waiting) this.filled += n;
      this.direct = undefined;
      return this.drain();
    }
    const slab = this.slab!.buffer;
    const start = this.slabUsed;
    this.slabUsed += n;
    const last = this.chunks.length - 1;
    const previous = this.chunks[last];
    // Bytes not yet taken are contiguous in the slab: extend the chunk they are in.
    if (previous && previous.buffer === slab.buffer && previous.byteOffset + previous.length === slab.byteOffset + start) {
      this.chunks[last] = slab.subarray(previous.byteOffset - slab.byteOffset, this.slabUsed);
    } else this.chunks.push(slab.subarray(start, this.slabUsed));
    this.buffered += n;
    this.drain();
  }

  /** The slab the message just taken lies in, held until release(): its bytes are not overwritten meanwhile. */
  hold(): Slab | undefined {
    if (this.slab) this.slab.refs++;
    return this.slab;
  }

  release(slab: Slab | undefined): void {
    if (slab && --slab.refs === 0 && this.freeSlabs.length < KEEP_SLABS) this.freeSlabs.push(slab);
  }

  /** The bytes received but not taken, which belong to whoever reads the socket next; stops delivering. */
  takeUnread(): Buffer {
    this.waiting = undefined;
    const unread = Buffer.concat(this.chunks);
    this.chunks.length = 0;
    this.buffered = 0;
    return unread;
  }

  /** Forgets what was received (STARTTLS: a client sends nothing more in the clear). */
  clear(): void {
    this.chunks.length = 0;
    this.buffered = 0;
  }

  /** Moves on to a fresh slab with room for `missing` more bytes of the awaited message, which stays contiguous. */
  private newSlab(missing: number): void {
    const size = Math.max(SLAB_SIZE, this.buffered + missing + MIN_READ);
    let next = this.freeSlabs.pop();
    if (next && next.buffer.length < size) next = undefined;
    if (next) next.refs = 1;
    else next = new Slab(Buffer.allocUnsafeSlow(size));
    let used = 0;
    for (const chunk of this.chunks) used += chunk.copy(next.buffer, used);
    this.chunks.length = 0;
    if (used > 0) this.chunks.push(next.buffer.subarray(0, used));
    this.release(this.slab);
    this.slab = next;
    this.slabUsed = used;
  }

  /** Hands complete messages to whoever waits for them; a loop, not recursion, however many arrived at once. */
  private drain(): void {
    if (this.draining) return;
    this.draining = true;
    while (this.waiting && this.open()) {
      const { size, then, into } = this.waiting;
      if (into) {
        if (this.buffered > 0) this.fill(into);
        if (this.filled < size) break;
        this.gathered = undefined;
        this.waiting = undefined;
        then(into);
        continue;
      }
      if (this.buffered < size) break;
      this.waiting = undefined;
      then(this.take(size));
    }
    this.draining = false;
  }

  /** Moves what was received, up to the end of the awaited message, into its `into`. */
  private fill(into: Buffer): void {
    while (this.filled < into.length && this.chunks.length > 0) {
      const chunk = this.chunks[0]!;
      const n = Math.min(chunk.length, into.length - this.filled);
      chunk.copy(into, this.filled, 0, n);
      this.filled += n;
      this.buffered -= n;
      if (n === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(n);
    }
  }

  private take(size: number): Buffer {
    this.gathered = undefined;
    if (size === 0) return Buffer.alloc(0);
    this.buffered -= size;
    const first = this.chunks[0]!;
    if (first.length === size) return this.chunks.shift()!;
    if (first.length > size) {
      this.chunks[0] = first.subarray(size);
      return first.subarray(0, size);
    }
    // Spread over several chunks. A payload is gathered into a pooled buffer (its request gives
    // it back when it ends); a header's cookie is still needed when the reply leaves, so not it.
    let out: Buffer;
    if (size >= POOLED_MESSAGE) {
      this.gathered = this.buffers.take(size);
      out = this.gathered.buffer;
    } else out = Buffer.allocUnsafe(size);
    for (let at = 0; at < size; ) {
      const chunk = this.chunks[0]!;
      const n = Math.min(chunk.length, size - at);
      chunk.copy(out, at, 0, n);
      at += n;
      if (n === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(n);
    }
    return out;
  }
}

/** net.Socket's `onread`: where the next read goes, and what to do with its `n` bytes (false: stop reading). */
export interface SocketReads {
  buffer(): Buffer;
  callback(n: number): boolean;
}

/** `onread` for `input`: the socket reads into its buffers, and stops at once when `reading()` turns false. */
export function readsInto(input: MessageInput, reading: () => boolean = () => true): SocketReads {
  return {
    buffer: () => input.readBuffer(),
    callback: (n: number) => {
      input.didRead(n);
      return reading();
    },
  };
}
