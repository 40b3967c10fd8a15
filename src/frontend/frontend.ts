/**
 * The contract every kernel frontend implements: turn the kernel's block requests for one device
 * into calls on the request layer, and encode the outcomes back. Frontends decode and encode
 * only; checking, splitting, emulation and error mapping live in the request layer.
 */
import type { EffectiveAttributes } from '../driver/attributes.js';
import type { RequestLayer } from '../request/request-layer.js';

/** What a started frontend gives the device: its kernel block device node. */
export interface KernelDevice {
  /** The kernel's own node for the device, e.g. /dev/loop3. */
  readonly path: string;
  readonly major: number;
  readonly minor: number;
}

export interface FrontendOptions {
  /** The device's index (names the frontend's own resources). */
  readonly index: number;
  readonly attributes: EffectiveAttributes;
  readonly readOnly: boolean;
  readonly requests: RequestLayer;
  readonly log: (message: string) => void;
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
   * Resolves when the kernel side has ended: with undefined after stop(), with the reason if it
   * ended on its own (say, someone unmounted it).
   */
  readonly ended: Promise<Error | undefined>;
}
