/**
 * Filters: a filter turns a driver into a driver. It overrides the callbacks it cares about,
 * may adjust the attributes (a size, a concurrency), and passes everything else through as it is.
 *
 *   const driver = compose(file('disk.img'), cow({ overlay: '/var/tmp/o' }), stats());
 *
 * compose applies filters from the driver outward: the last one sees requests first. On the
 * command line, `--filter` flags are applied in the same order, first given innermost.
 *
 * The rule every filter here keeps, through {@link layer}: the filtered driver has a request
 * callback only if the inner driver has it (or the filter provides the operation itself, as
 * `cow` provides writes over a read-only base, and says so). So a read-only driver stays
 * read-only, the request layer still emulates what the inner driver lacks (write-zeroes as
 * writes, FUA as write and flush) and those emulated requests pass through the filter as the
 * operations they became, and a rerun's check that the new driver has every callback of the
 * current one sees the truth.
 *
 * Never passed through: the inner driver's `writeTarget`. Data received into the inner driver's
 * memory would reach it before the filter saw the write (and at an offset the filter may move).
 *
 * State: a filter keeps its state in its own closure, never in `ctx.state` (the inner driver's).
 * A filter instance serves one driver instance: `bdus rerun` builds a new one, so per-process
 * state (counters, queues, caches) starts over on a hot swap; what must survive one (a cow
 * overlay's map, an error schedule set at run time) lives in files.
 */
import type { Attributes, EffectiveAttributes } from '../driver/attributes.js';
import { REQUEST_CALLBACKS, type RequestCallback } from '../driver/callbacks.js';
import type { Context, Driver } from '../driver/driver.js';

/** The operations as filter parameters name them (`ops=read+write`, `delay:zero=1ms`). */
export type FilterOp = 'read' | 'write' | 'zero' | 'discard' | 'flush' | 'extents';
export const FILTER_OPS: readonly FilterOp[] = ['read', 'write', 'zero', 'discard', 'flush', 'extents'];

/** Which of those each request callback is: FUA writes and write-sames are writes, secure erases discards. */
export const FILTER_OP_OF: Readonly<Record<RequestCallback, FilterOp | undefined>> = {
  read: 'read',
  write: 'write',
  fuaWrite: 'write',
  writeSame: 'write',
  writeZeros: 'zero',
  discard: 'discard',
  secureErase: 'discard',
  flush: 'flush',
  extents: 'extents',
  ioctl: undefined,
};

/** Turns a driver into a driver. Typed for any driver state: a filter never touches `ctx.state`. */
export type Filter = <State>(next: Driver<State>) => Driver<State>;

/**
 * A filter that must learn something from the driver below before the device exists (the
 * partition filter reads the partition table): it resolves to the filtered driver.
 */
export type AsyncFilter = <State>(next: Driver<State>) => Promise<Driver<State>>;

/** What a filter may override: any callback, with the driver's own signature. */
export type Overrides<State> = { -readonly [K in Exclude<keyof Driver<State>, 'attributes'>]?: Driver<State>[K] };

/** Capabilities that exist only if the inner driver has them: request callbacks and resize. */
const CAPABILITIES: ReadonlySet<string> = new Set([...REQUEST_CALLBACKS, 'resize']);

export interface LayerOptions {
  /** The filtered driver's attributes; default: the inner driver's, untouched. */
  readonly attributes?: Attributes;
  /**
   * Capabilities this filter provides itself, whether or not the inner driver has them (cow's
   * write over a read-only base). Any other override of a capability the inner driver lacks is
   * dropped.
   */
  readonly provides?: readonly (keyof Overrides<unknown>)[];
  /**
   * Capabilities the filtered driver must not have even though the inner driver has them
   * (readonly drops every write-type callback).
   */
  readonly removes?: readonly (keyof Overrides<unknown>)[];
}

/**
 * The inner driver with `overrides` laid over it, keeping the rule in the module comment. An
 * override calls the inner callback itself (`next.read!(buffer, offset, ctx)`: it exists, or the
 * override would have been dropped).
 */
export function layer<State>(next: Driver<State>, overrides: Overrides<State>, options: LayerOptions = {}): Driver<State> {
  const result: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(next)) if (typeof value === 'function' && name !== 'writeTarget') result[name] = value.bind(next);
  for (const [name, value] of Object.entries(overrides)) {
    if (typeof value !== 'function') continue;
    const provided = options.provides?.includes(name as keyof Overrides<unknown>) ?? false;
    if (CAPABILITIES.has(name) && typeof (next as Record<string, unknown>)[name] !== 'function' && !provided) continue;
    result[name] = value;
  }
  for (const name of options.removes ?? []) delete result[name];
  const attributes = options.attributes ?? next.attributes;
  return (attributes ? { ...result, attributes } : result) as Driver<State>;
}

/** `driver` with `filters` applied in order: the last filter is the outermost. */
export function compose<State>(driver: Driver<State>, ...filters: readonly Filter[]): Driver<State> {
  return filters.reduce<Driver<State>>((inner, filter) => withoutInnerTarget(filter(inner), inner), driver);
}

/** `compose` for filters of which some are asynchronous: applied in the same order, each awaited. */
export async function composeAsync<State>(driver: Driver<State>, ...filters: readonly (Filter | AsyncFilter)[]): Promise<Driver<State>> {
  let result = driver;
  for (const filter of filters) result = withoutInnerTarget(await filter(result), result);
  return result;
}

/** A filter written without layer() (`{ ...next, write }`) passes the inner writeTarget on too: it goes (see the module comment). */
function withoutInnerTarget<State>(filtered: Driver<State>, inner: Driver<State>): Driver<State> {
  if (filtered === inner || !inner.writeTarget || filtered.writeTarget !== inner.writeTarget) return filtered;
  const { writeTarget: _dropped, ...rest } = filtered;
  return rest;
}

/**
 * A view of `ctx` for the inner driver of a filter that changes the geometry (offset, partition,
 * truncate): the same context, `state` included, but for `size`, which `innerSize` computes from
 * the outer size each time it is read (a resize changes the outer one in place). Made once per
 * driver instance, so requests allocate nothing.
 */
export class InnerContexts {
  private outer: Context<unknown> | undefined;
  private inner: Context<unknown> | undefined;

  constructor(private readonly innerSize: (outerSize: number) => number) {}

  of<State>(ctx: Context<State>): Context<State> {
    if (ctx !== this.outer) {
      this.outer = ctx;
      this.inner = innerView(ctx, this.innerSize);
    }
    return this.inner as Context<State>;
  }
}

function innerView<State>(ctx: Context<State>, innerSize: (outerSize: number) => number): Context<State> {
  const attributes = {} as EffectiveAttributes;
  for (const name of Object.keys(ctx.attributes) as (keyof EffectiveAttributes)[]) {
    const get = name === 'size' ? () => innerSize(ctx.attributes.size) : () => ctx.attributes[name];
    Object.defineProperty(attributes, name, { get, enumerable: true });
  }
  const view = Object.create(ctx) as Context<State>;
  Object.defineProperty(view, 'attributes', { value: attributes, enumerable: true });
  Object.defineProperty(view, 'state', { get: () => ctx.state, set: (value: State) => (ctx.state = value), enumerable: true });
  return view;
}

/**
 * `initialize` and `terminate` overrides that run something of the filter's around the inner
 * driver's life: `start` before the inner initialize (and `stop` if that fails), `stop` after
 * the inner terminate. A killed or aborted driver runs neither: what `start` opens must die with
 * the process (unref'd timers, descriptors).
 */
export function around<State>(
  next: Driver<State>,
  start: (ctx: Context<State>) => void | Promise<void>,
  stop: (ctx: Context<State>) => void | Promise<void>,
): Pick<Overrides<State>, 'initialize' | 'terminate'> {
  return {
    async initialize(ctx) {
      await start(ctx);
      try {
        await next.initialize?.(ctx);
      } catch (error) {
        await stop(ctx);
        throw error;
      }
    },
    async terminate(ctx) {
      try {
        await next.terminate?.(ctx);
      } finally {
        await stop(ctx);
      }
    },
  };
}

/**
 * Overrides for every request callback, each calling `wrap` with the callback's name, the range
 * it covers (offset 0 and size 0 for flush; the command as offset for ioctl), the context, and
 * the inner call to make: for filters that do the same around every request (delay, error,
 * rate, retry, log, stats). Laid over `next` by `layer`, only those the inner driver has remain.
 */
export function eachRequest<State>(
  next: Driver<State>,
  wrap: <T>(name: RequestCallback, offset: number, size: number, ctx: Context<State>, call: () => T | Promise<T>) => Promise<T>,
): Overrides<State> {
  return {
    read: (buffer, offset, ctx) => wrap('read', offset, buffer.length, ctx, () => next.read!(buffer, offset, ctx)),
    write: (data, offset, ctx) => wrap('write', offset, data.length, ctx, () => next.write!(data, offset, ctx)),
    fuaWrite: (data, offset, ctx) => wrap('fuaWrite', offset, data.length, ctx, () => next.fuaWrite!(data, offset, ctx)),
    writeSame: (block, offset, size, ctx) => wrap('writeSame', offset, size, ctx, () => next.writeSame!(block, offset, size, ctx)),
    writeZeros: (offset, size, mayUnmap, ctx) => wrap('writeZeros', offset, size, ctx, () => next.writeZeros!(offset, size, mayUnmap, ctx)),
    discard: (offset, size, ctx) => wrap('discard', offset, size, ctx, () => next.discard!(offset, size, ctx)),
    secureErase: (offset, size, ctx) => wrap('secureErase', offset, size, ctx, () => next.secureErase!(offset, size, ctx)),
    flush: (ctx) => wrap('flush', 0, 0, ctx, () => next.flush!(ctx)),
    extents: (offset, size, ctx) => wrap('extents', offset, size, ctx, () => next.extents!(offset, size, ctx)),
    ioctl: (command, argument, ctx) => wrap('ioctl', command, 0, ctx, () => next.ioctl!(command, argument, ctx)),
  };
}
