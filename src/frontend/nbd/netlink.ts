/**
 * The kernel NBD client (nbd.ko) driven over generic netlink, as nbd-client does: connect gives
 * the kernel a socket and creates /dev/nbdN; reconfigure gives a device whose socket died a new
 * one (the kernel holds its requests meanwhile, for the dead-connection timeout); disconnect
 * ends it (requests in flight fail with EIO).
 */
import { existsSync, readFileSync } from 'node:fs';
import { BdusError } from '../../driver/errors.js';
import { errnoName, native, type NbdNetlinkRequest } from '../../native.js';
import { execute } from '../../util/exec.js';

/** linux/nbd-netlink.h */
const Command = { CONNECT: 1, DISCONNECT: 2, RECONFIGURE: 3 } as const;

export interface NbdConnect {
  /** The kernel's end of a connected stream socket; the kernel keeps its own reference. */
  socket: number;
  sizeBytes: number;
  blockSize: number;
  /** NBD_FLAG_* of the transmission flags. */
  serverFlags: number;
  /** Seconds before the kernel gives up on a request and requeues it (its socket is then dead). */
  timeout: number;
  /** Seconds requests wait for a new socket when the socket is dead; 0 fails them at once. */
  deadConnTimeout: number;
  /** Who serves the device (see backendOf). */
  backend: string;
}

/** Creates a kernel NBD device served through `socket`; resolves with its index (/dev/nbdN). */
export function nbdConnect(options: NbdConnect): Promise<number> {
  return call({ command: Command.CONNECT, ...options }, 'connect');
}

/** Gives a device whose socket died a new one (the requests it held go there), or a new size or timeouts. */
export async function nbdReconfigure(
  index: number,
  options: { backend: string; socket?: number; timeout?: number; deadConnTimeout?: number; sizeBytes?: number },
): Promise<void> {
  await call({ command: Command.RECONFIGURE, index, ...options }, 'reconfigure');
}

/** Ends a kernel NBD device: its requests fail with EIO; /dev/nbdN stays, empty. */
export async function nbdDisconnect(index: number): Promise<void> {
  await call({ command: Command.DISCONNECT, index }, 'disconnect');
}

/**
 * The backend identifier bdus gives device `id`'s connection. The kernel shows it in sysfs and
 * refuses a reconfigure that names another, so that nobody touches an nbd device that has
 * meanwhile been given to a newer bdus device.
 */
export function backendOf(id: bigint | string): string {
  return `bdus-${id}`;
}

/** The backend identifier /dev/nbdN is connected with, or undefined if none (not connected). */
export function connectedBackend(index: number): string | undefined {
  try {
    if (!existsSync(`/sys/block/nbd${index}/pid`)) return undefined;
    return readFileSync(`/sys/block/nbd${index}/backend`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** The index of a kernel NBD node path, /dev/nbdN -> N, or -1. */
export function nbdIndexOf(kernelPath: string): number {
  const match = /^\/dev\/nbd(\d+)$/.exec(kernelPath);
  return match ? Number(match[1]) : -1;
}

/** Whether nbd.ko is loaded, loading it if it is not; never throws. */
export async function nbdAvailable(): Promise<boolean> {
  if (existsSync('/sys/module/nbd')) return true;
  await execute('modprobe', ['-q', 'nbd']).catch(() => undefined);
  return existsSync('/sys/module/nbd');
}

function call(request: NbdNetlinkRequest, what: string): Promise<number> {
  return new Promise((resolve, reject) => {
    native.nbdNetlink(request, (errno, index) => {
      if (errno === 0) return resolve(index);
      const code = errnoName(errno);
      const hint = code === 'ENOENT' ? ' (is the nbd module loaded?)' : '';
      reject(new BdusError(code, `nbd ${what} (netlink): ${code}${hint}`));
    });
  });
}
