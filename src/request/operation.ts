import { REQUEST_CALLBACKS } from '../driver/callbacks.js';

/** Request operations as the request layer counts and logs them: indexes into the callback table (src/driver/callbacks.ts). */
export const Operation = {
  READ: 0,
  WRITE: 1,
  WRITE_SAME: 2,
  WRITE_ZEROS: 3,
  FUA_WRITE: 4,
  FLUSH: 5,
  DISCARD: 6,
  SECURE_ERASE: 7,
  IOCTL: 8,
  EXTENTS: 9,
} as const;
export type Operation = (typeof Operation)[keyof typeof Operation];

/** Callback names indexed by Operation (for logs and counters): the callback table's order. */
export const OPERATION_NAMES = REQUEST_CALLBACKS;
