/** Where bdus keeps its run-time state: tmpfs, gone at reboot (so ids restart only with the machine). */
export const RUN_DIR = process.env.BDUS_RUN_DIR ?? '/run/bdus';
/** The prefix of every device's stable path: /dev/bdus-N. */
export const DEVICE_PATH_PREFIX = '/dev/bdus-';

/**
 * A device's own run-time directory, for its drivers: what one driver instance leaves there is
 * the next one's (a hot swap, a recovery after a crash), and the daemon removes it with the
 * device. (tmpfs: it survives the driver, not the machine.)
 */
export function deviceRunDir(id: bigint | string): string {
  return `${RUN_DIR}/drivers/device-${id}`;
}
