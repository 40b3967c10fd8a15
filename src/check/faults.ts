/**
 * The faults `bdus check` injects inside a driver: a SIGKILL in the middle of a request callback,
 * between the driver's own steps. `bdus check` starts a driver instance with BDUS_CHECK_FAULT set
 * ("CALLBACK:N:T"): that instance kills itself T event-loop turns after its Nth call of that
 * request callback began (T = 0: as soon as the callback's synchronous part returned). A
 * callback that awaits its own steps (a header, then the data; a cache, then the file) is cut
 * between them, as a crash would cut it.
 *
 * Only `bdus run` and `bdus rerun` read the variable, and only bdus check sets it.
 */
import { REQUEST_CALLBACKS, type RequestCallback } from '../driver/callbacks.js';
import type { Driver } from '../driver/driver.js';

export const FAULT_ENV = 'BDUS_CHECK_FAULT';

export interface CallbackFault {
  /** The request callback ('write', 'flush', ...). */
  callback: RequestCallback;
  /** Which call of it (1: the first this driver instance gets). */
  call: number;
  /** Event-loop turns after it began. */
  turns: number;
}

export function formatFault(fault: CallbackFault): string {
  return `${fault.callback}:${fault.call}:${fault.turns}`;
}

function parseFault(text: string | undefined): CallbackFault | undefined {
  const match = /^(\w+):(\d+):(\d+)$/.exec(text ?? '');
  if (!match || !REQUEST_CALLBACKS.includes(match[1] as RequestCallback)) return undefined;
  return { callback: match[1] as RequestCallback, call: Number(match[2]), turns: Number(match[3]) };
}

/** The driver, with the fault BDUS_CHECK_FAULT asks for (the same driver without one). */
export function withInjectedFault<D extends Driver<any>>(driver: D): D {
  const fault = parseFault(process.env[FAULT_ENV]);
  delete process.env[FAULT_ENV]; // not for the processes this one starts
  const callback = fault && (driver[fault.callback] as ((...args: unknown[]) => unknown) | undefined);
  if (!fault || !callback) return driver;
  let calls = 0;
  // Everything else (the other callbacks, life-cycle callbacks, attributes, a class's methods) through the prototype.
  const wrapped = Object.create(driver) as Record<string, unknown>;
  wrapped[fault.callback] = function (this: unknown, ...args: unknown[]) {
    const result = callback.apply(this, args);
    if (++calls === fault.call) {
      process.stderr.write(`bdus check: killing this driver ${fault.turns} turn(s) into its ${fault.callback} callback (call ${calls})\n`);
      killAfter(fault.turns);
    }
    return result;
  };
  return wrapped as unknown as D;
}

function killAfter(turns: number): void {
  if (turns === 0) process.kill(process.pid, 'SIGKILL');
  else setImmediate(() => killAfter(turns - 1));
}
