/**
 * A small file mapped shared into the process: state that costs no system call to update and
 * outlives the process that wrote it (the per-request tables a next driver reads).
 */
import { closeSync, constants, ftruncateSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { native } from '../native.js';

/** Maps `bytes` of the file at `path`, made (with its folder, root-only) if need be. */
export function mapSharedFile(path: string, bytes: number): Buffer {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
  try {
    ftruncateSync(fd, bytes);
    return native.mapShared(fd, bytes);
  } finally {
    closeSync(fd);
  }
}
