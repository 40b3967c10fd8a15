/**
 * The control protocol between the daemon and its clients (the CLI, the management API and
 * driver processes), defined once here.
 *
 * Transport: a Unix stream socket at RUN_DIR/control.sock, reachable by root only. Framing: one
 * JSON object per line, at most MAX_MESSAGE bytes. A client sends requests `{seq, op, ...}`; the
 * daemon answers each with `{seq, ok: true, result}` or `{seq, ok: false, code, message}`, in any
 * order (a `destroy` or `wait` answers when the device is gone). The daemon also sends events
 * `{event, ...}` (no seq) to the connection that runs a device's driver.
 *
 * A driver process holds one connection per device it runs, opened with `create` (or `attach`
 * after a daemon restart). The daemon reads the end of that connection as the end of the driver.
 */
import type { EffectiveAttributes } from '../driver/attributes.js';
import type { DeviceStats } from '../stats/snapshot.js';
import { RUN_DIR } from '../util/paths.js';

/**
 * Bumped whenever a message changes meaning; a client refuses a daemon that speaks another.
 * `version` and `shutdown` keep their meaning in every version, so that any client can stop any daemon.
 */
export const PROTOCOL_VERSION = 3;

export const SOCKET_PATH = `${RUN_DIR}/control.sock`;
export const LOCK_PATH = `${RUN_DIR}/daemon.lock`;
export const REGISTRY_PATH = `${RUN_DIR}/registry.json`;
export const DAEMON_LOG_PATH = `${RUN_DIR}/log/daemon.log`;

/** Longest message line; a longer one is a protocol error and ends the connection. */
export const MAX_MESSAGE = 1 << 20;

/** Default for `bdus daemon --max-devices`. */
export const DEFAULT_MAX_DEVICES = 256;

/**
 * Device states (seed 003). INITIALIZED: created, not yet available to clients (the driver is
 * initializing, or the kernel device is being set up). AVAILABLE: serving clients at its path.
 * TERMINATED: destruction has begun; the path is gone and the record goes once the kernel device
 * and the driver are. Transitions: INITIALIZED -> AVAILABLE, INITIALIZED -> TERMINATED,
 * AVAILABLE -> TERMINATED.
 */
export type DeviceState = 'initialized' | 'available' | 'terminated';

/** A device as the registry keeps it and as list/info return it. */
export interface DeviceRecord {
  /** Decimal string of the 64-bit id (JSON has no 64-bit integers). */
  id: string;
  index: number;
  /** Stable path: /dev/bdus-<index>, a symlink to kernelPath while AVAILABLE. */
  path: string;
  /** The kernel's own node (e.g. /dev/loop3); empty until the kernel device exists. */
  kernelPath: string;
  major: number;
  minor: number;
  frontend: string;
  /**
   * How the frontend reaches the kernel beyond its kind ('io_uring', 'user copy':
   * Frontend.modes), as the first driver said when the device became available; fixed for the
   * device's life (FUSE's ring is never handed over, user copy is a ublk device's flag, which
   * later drivers follow). Absent before, and in records of older daemons or drivers.
   */
  modes?: string[];
  state: DeviceState;
  /** The driver process; 0 while a recoverable device waits for a new driver. */
  pid: number;
  /** Its start time (from /proc/PID/stat), so that a reused pid is not taken for it. */
  pidStart: string;
  readOnly: boolean;
  /** The attributes as adjusted for the current driver (size: as last resized). */
  attributes: EffectiveAttributes;
  /** The request callbacks the current driver has: a replacement must have them too. */
  callbacks: string[];
  /** When the device was created (ms since the epoch). */
  createdAt: number;
  /**
   * How the current driver was started: its module and the arguments after it, as `bdus run`
   * got them (empty for a driver started through the API without saying). Absent in records
   * of older daemons.
   */
  command?: string[];
}

/** Requests, by operation. */
export interface Requests {
  /** The daemon's version and protocol. */
  version: { args: Record<string, never>; result: { version: string; protocol: number; pid: number; maxDevices: number; metrics?: string } };
  /** Every device. */
  list: { args: Record<string, never>; result: DeviceRecord[] };
  /** One device, by id or by its node's device number. */
  info: { args: { id: string } | { major: number; minor: number }; result: DeviceRecord };
  /**
   * Destroys a device; answers once it is gone. The client flushes first if it wants. Unless
   * `force`, a device in use (mounted, stacked on, or open in a process other than its driver)
   * is refused with EBUSY naming the holders. Daemons before `force` destroy regardless.
   */
  destroy: { args: { id: string; force?: boolean }; result: null };
  /** Answers once the device with this id is gone (at once if it already is). */
  wait: { args: { id: string }; result: null };
  /** Asks the daemon to exit (devices keep running). */
  shutdown: { args: Record<string, never>; result: null };
  /** A driver registers a new device; this connection then belongs to it. */
  create: {
    args: { pid: number; frontend: string; readOnly: boolean; attributes: DeviceRecord['attributes']; callbacks: string[]; command?: string[] };
    result: DeviceRecord;
  };
  /**
   * The driver's kernel device exists and serves requests: make it available at its path. The
   * daemon takes a duplicate of the driver's kernel end, descriptor `kernelFd` in the driver.
   * After a rerun, the new driver says the same once it serves.
   */
  available: { args: { id: string; kernelPath: string; major: number; minor: number; kernelFd?: number; modes?: string[] }; result: DeviceRecord };
  /**
   * A recoverable device's driver's lanes' own kernel ends (FUSE's clones), descriptors in the
   * driver: the daemon takes a duplicate of each and closes those of the previous driver.
   */
  laneEnds: { args: { id: string; fds: number[] }; result: null };
  /** The driver is ending the device itself (destroy or abort): take the path away now. */
  terminating: { args: { id: string }; result: null };
  /** The driver has removed its kernel device and is leaving: the daemon removes the rest, then answers. */
  gone: { args: { id: string }; result: null };
  /** A driver reconnects to a restarted daemon and takes its device's connection back. */
  attach: { args: { id: string; pid: number; kernelFd?: number }; result: DeviceRecord };
  /**
   * A new driver asks to take over a device. The daemon checks it can (attributes, callbacks),
   * has the current driver hand over (the `replace` event), and answers with the descriptor of
   * the kernel end in the daemon, for the new driver to duplicate. This connection then runs the
   * device.
   */
  rerun: {
    args: { id: string; pid: number; attributes: DeviceRecord['attributes']; callbacks: string[]; command?: string[] };
    result: { record: DeviceRecord; kernelFd: number; daemonPid: number };
  };
  /** The current driver, asked to `replace`, has stopped: ok unless its flush or terminate failed. */
  handover: { args: { id: string; ok: boolean; message: string }; result: null };
  /**
   * Resizes a device (`bdus resize`): the daemon asks its driver (the `resize` event), which
   * answers with `resized`; the answer comes once clients see the new size, or with why not.
   */
  resize: { args: { id: string; size: number }; result: DeviceRecord };
  /**
   * Statistics (src/stats) of one device, or of every device without `id`: each with its record
   * and when they were read (ms since the epoch); `stats` is null while a device has none yet.
   */
  stats: { args: { id?: string }; result: DeviceStatsEntry[] };
  /** The driver's answer to a `resize` event: ok once its callback and the kernel took `size`. */
  resized: { args: { id: string; ok: boolean; message: string; size: number }; result: null };
}

export type Operation = keyof Requests;

/** One device in the answer to `stats`. */
export interface DeviceStatsEntry {
  record: DeviceRecord;
  stats: DeviceStats | null;
  takenAt: number;
}

/**
 * Events the daemon sends a driver: destroy its device; stop serving it and hand over to a
 * replacement (answer with `handover`); or resize it (answer with `resized`).
 */
export type DaemonEvent = { event: 'destroy' } | { event: 'replace' } | { event: 'resize'; size: number };

export type Reply =
  | { seq: number; ok: true; result: unknown }
  | { seq: number; ok: false; code: string; message: string };

/**
 * Splits a byte stream into message lines. Lines may arrive split across chunks or several in
 * one chunk; a line longer than MAX_MESSAGE is reported once and the rest of the stream dropped.
 */
export class LineReader {
  private pending = '';
  private overflowed = false;

  constructor(
    private readonly onLine: (line: string) => void,
    private readonly onOverflow: () => void,
  ) {}

  push(chunk: string): void {
    if (this.overflowed) return;
    let text = this.pending + chunk;
    for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n')) {
      const line = text.slice(0, nl);
      text = text.slice(nl + 1);
      if (line.length > MAX_MESSAGE) return this.overflow();
      if (line.trim() !== '') this.onLine(line);
    }
    if (text.length > MAX_MESSAGE) return this.overflow();
    this.pending = text;
  }

  private overflow(): void {
    this.overflowed = true;
    this.pending = '';
    this.onOverflow();
  }
}

export function encode(message: object): string {
  return `${JSON.stringify(message)}\n`;
}
