/** Where bdus keeps its run-time state: tmpfs, gone at reboot (so ids restart only with the machine). */
export const RUN_DIR = process.env.BDUS_RUN_DIR ?? '/run/bdus';
/** The prefix of every device's stable path: /dev/bdus-N. */
export const DEVICE_PATH_PREFIX = '/dev/bdus-';
