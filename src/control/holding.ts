/** What the daemon keeps per control connection and per device, and who serves a device. */
import type { Socket } from 'node:net';
import type { Keeper } from '../frontend/frontend.js';
import type { DriverChange } from '../stats/life.js';
import { encode, type Requests } from './protocol.js';

/** One client connection; `device` is set when a driver runs that device through it. */
export class Connection {
  device: string | undefined;
  constructor(readonly socket: Socket) {}

  send(message: object): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(encode(message));
  }
}

export type Handover = Requests['handover']['args'] | undefined;

/**
 * Who serves a device (see the module comment): attached (a driver runs it), handing over (a
 * rerun waits for that driver to stop), driverless (its driver died; it waits for a rerun), given
 * up (driverless after recoveryLimit drivers failed in a row: its requests fail until one serves).
 */
export type Serving = 'attached' | 'handing-over' | 'driverless' | 'given-up';

/** What the daemon holds for a device besides its record, for as long as the daemon runs. */
export interface Holding {
  serving: Serving;
  /** The daemon's duplicate of the device's kernel end, or -1. */
  fd: number;
  /** Its duplicates of a recoverable device's driver's lanes' own ends (FUSE's clones). */
  laneFds: number[];
  /** Keeps the device while it has no driver, where its frontend needs one (FUSE+loop's keeper). */
  keeper: Keeper | undefined;
  /** The pid of a driver whose rerun is in progress, or 0. */
  replacing: number;
  /** While the current driver hands over: takes its answer (undefined if it died instead). */
  handover: ((result: Handover) => void) | undefined;
  /** A driver died and no driver has served the device since. */
  recovering: boolean;
  /** Drivers that failed during this recovery (seed 000's recovery limit). */
  failures: number;
  /** A change of driver in progress, and since when (performance.now()), for the statistics. */
  change: { kind: DriverChange; since: number } | undefined;
}

/** A recoverable device whose driver died, waiting for the next one. */
export function driverless(holding: Holding | undefined): boolean {
  return holding?.serving === 'driverless' || holding?.serving === 'given-up';
}
