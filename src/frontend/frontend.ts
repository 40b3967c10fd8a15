/**
 * The contract of a kernel path, on both sides. A FrontendKind is one kernel path (FUSE+loop,
 * kernel NBD): whether this kernel can host it, the attributes it can show, the request
 * callbacks it can call, how the driver process serves a device through it (Frontend), and what
 * the daemon does with a device's kernel end while no driver serves it (FrontendKeeping).
 * kinds.ts lists them: adding a kernel path is one folder and one entry there; nothing outside
 * a frontend's folder tests its name.
 *
 * A Frontend turns the kernel's block requests for one device into calls on the request layer
 * and encodes the outcomes back. Frontends decode and encode only; checking, splitting,
 * emulation, timing and error mapping live in the request layer.
 */
import type { EffectiveAttributes } from '../driver/attributes.js';
import type { RequestCallback } from '../driver/callbacks.js';
import type { RequestLayer } from '../request/request-layer.js';

export interface FrontendKind {
  /** As given to `--frontend` and kept in the registry. */
  readonly name: string;
  /** For messages: "FUSE+loop". */
  readonly title: string;
  /** Why this machine's kernel cannot host it (say, no /dev/fuse), or undefined if it can. */
  missing(): Promise<string | undefined>;
  /** The attributes as this path can show them; an AttributeError for what it cannot do. */
  attributes(attributes: EffectiveAttributes): EffectiveAttributes;
  /** The request callbacks the kernel can reach through this path (an export reaches all). */
  readonly callable: readonly RequestCallback[];
  /** The driver process's side: serves one device. */
  create(options: FrontendOptions): Frontend;
  /** The daemon's side. */
  readonly keeping: FrontendKeeping;
  /** How a lane (src/lane) serves a device of this path alongside the frontend; absent: this path has no lanes. */
  readonly lanes?: LaneKind;
}

/**
 * A kernel path whose requests several threads of one driver process can take (the `lanes`
 * attribute): each lane reads the device's requests through an end of its own and answers them
 * through its own request layer.
 */
export interface LaneKind {
  /** Starts serving in this thread as lane `lane` (1 and up), from what the frontend gave FrontendOptions.startLanes. */
  serve(share: unknown, lane: number, requests: RequestLayer, log: (message: string) => void): LaneServer;
}

/**
 * The queues lane `lane` of `lanes` serves, where the kernel has `count` queues, one or more per
 * CPU (ublk's hardware queues, FUSE's io_uring queues): every lanes-th from its own number (the
 * main thread, lane 0, serves queue 0). The kernel maps CPUs onto queues in order, so each lane
 * takes the requests of its own CPUs and no other lane is woken for them.
 */
export function queuesOfLane(count: number, lanes: number, lane: number): number[] {
  const queues: number[] = [];
  for (let id = lane; id < count; id += lanes) queues.push(id);
  return queues;
}

/** A lane's end of a kernel device. */
export interface LaneServer {
  /** Stops taking requests: those taken are answered; the others go to the frontend's own reader. */
  stop(): void;
  /** The lane is done, its requests answered: it lets go of its end (what it opened itself, it closes). */
  close(): void;
  /** The device is `size` bytes now: the lane answers the kernel's questions with it (a resize). */
  resize(size: number): void;
  /** Something the main thread hands this lane to serve (Lanes.deliver): an export's connection. */
  deliver?(message: unknown): void;
  /** Resolves when the kernel side ended (undefined when stop() ended it), as Frontend.ended. */
  readonly ended: Promise<Error | undefined>;
}

/** What the daemon knows of a device, for its frontend. */
export interface KeptDevice {
  readonly id: string;
  readonly index: number;
  readonly kernelPath: string;
  readonly readOnly: boolean;
  readonly attributes: EffectiveAttributes;
}

/** How the daemon keeps a device whose driver died until the next one attaches. */
export interface Keeper {
  /** A driver attaches: stop, leaving the device's requests to it. */
  stop(): Promise<void>;
  /** The device is being removed. */
  close(): void;
}

/**
 * The daemon's side of a kernel path. The daemon holds a duplicate of each device's kernel end
 * (`fd`, -1 if it holds none); these calls decide what it does with it.
 */
export interface FrontendKeeping {
  /** Whether the kernel keeps the device by itself while nobody holds its kernel end. */
  readonly kernelKeepsDevice: boolean;
  /**
   * Whether a driver has a kernel end for the daemon to hold (FUSE's /dev/fuse, NBD's socket).
   * ublk has none: the kernel keeps the device, and the next driver recovers it by number.
   */
  readonly kernelEnd: boolean;
  /**
   * A recoverable device lost its driver: keep it until the next one, its requests held, or
   * failed with EIO ('fail-all'). Returns what keeps it and the kernel end the daemon holds now.
   */
  orphan(device: KeptDevice, fd: number, mode: KeeperMode, log: (line: string) => void): Promise<{ keeper: Keeper | undefined; fd: number }>;
  /** A driver died while handing the device over; returns the kernel end the daemon holds now. */
  lostInHandover(device: KeptDevice, fd: number): number;
  /** The device is gone (its driver ended or died, its duplicate closed): remove what is left of it. */
  reclaim(device: KeptDevice, log: (line: string) => void): Promise<void>;
}

/** What a device without a driver does with its requests: hold them, or fail them all. */
export type KeeperMode = 'hold' | 'fail-all';

/** What a started frontend gives the device: its kernel block device node. */
export interface KernelDevice {
  /** The kernel's own node for the device, e.g. /dev/loop3. */
  readonly path: string;
  readonly major: number;
  readonly minor: number;
}

export interface FrontendOptions {
  /** The device's id (names what must outlive a driver). */
  readonly id: bigint;
  /** The device's index (names the frontend's own resources). */
  readonly index: number;
  /** The driver's request callbacks. */
  readonly callbacks: readonly RequestCallback[];
  readonly attributes: EffectiveAttributes;
  readonly readOnly: boolean;
  readonly requests: RequestLayer;
  readonly log: (message: string) => void;
  /**
   * Starts the device's other lanes (a no-op without the `lanes` attribute), each serving from
   * `share` (structured-clonable, for a worker thread; LaneKind.serve takes it); resolves once
   * every lane serves. A frontend whose kind has `lanes` calls it once per start() or adopt(),
   * when the lanes may join: FUSE+loop once it reads the device (they clone its connection),
   * ublk before it starts or recovers the device (the kernel waits for every queue).
   */
  readonly startLanes: (share: unknown) => Promise<void>;
}

export interface Frontend {
  /** Short name, as given to `--frontend`. */
  readonly name: string;
  /**
   * Creates the kernel device. Requests may reach the request layer before this resolves (the
   * kernel reads the partition table while the device is created).
   */
  start(): Promise<KernelDevice>;
  /**
   * Removes the kernel device: it disappears at once, or when the last client holding it open
   * closes it; until then every request fails with EIO. Safe to call more than once, and after
   * a failed start.
   */
  stop(): Promise<void>;
  /**
   * The descriptor of this process's end of the kernel device (for FUSE+loop, the /dev/fuse
   * file). The daemon keeps a duplicate of it, so that the device outlives its driver.
   */
  readonly kernelFd: number;
  /**
   * How this frontend reaches the kernel, beyond its kind, once it serves (`bdus info` shows
   * them): 'io_uring' (FUSE over io_uring), 'user copy' (ublk's UBLK_F_USER_COPY); none for the
   * plain path. Each is decided by the kernel's offer as much as by the attributes, so the
   * attributes alone do not say.
   */
  modes(): readonly string[];
  /**
   * Serves a device another driver (or the daemon) served until now, through `fd`, a duplicate
   * of its kernel end. Requests the previous reader received but did not answer are sent again.
   */
  adopt(fd: number, kernel: KernelDevice): Promise<void>;
  /**
   * Stops taking requests, for a replacement driver: resolves once no more will come; those
   * already taken are handled. The kernel device stays. Then drain, and call release().
   */
  detach(): Promise<void>;
  /**
   * Gives the device up at once (a recoverable device's driver aborts): the request layer stops,
   * nothing more is answered, and the requests taken but not answered go to the next driver.
   */
  abandon(): Promise<void>;
  /**
   * Closes this process's end of the kernel device, which lives on with its other holders; once
   * it resolves, the next driver may read (every reply has left).
   */
  release(): void | Promise<void>;
  /**
   * Tells the kernel the device is now `size` bytes (the attributes already say so): clients
   * see the new size when it resolves. Rejects if the kernel refuses.
   */
  resize(size: number): Promise<void>;
  /**
   * Why this kernel cannot resize the device at all (asked before the driver's resize
   * callback runs), or undefined. Frontends that always can leave it out.
   */
  cannotResize?(): Promise<string | undefined>;
  /**
   * Resolves when the kernel side has ended: with undefined after stop(), with the reason if it
   * ended on its own (say, someone unmounted it).
   */
  readonly ended: Promise<Error | undefined>;
  /**
   * The lanes' own kernel ends, where a lane's end keeps its requests only while it is open
   * (FUSE's clones): the daemon holds a duplicate of each for a recoverable device, as it does
   * of kernelFd. Absent where the kernel keeps a dead lane's requests by itself (ublk) or there
   * are no lanes.
   */
  readonly laneKernelFds?: readonly number[];
}
