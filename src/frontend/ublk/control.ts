/**
 * ublk's control commands (include/uapi/linux/ublk_cmd.h) on /dev/ublk-control, and the structs
 * they carry, encoded here: struct ublksrv_ctrl_dev_info and struct ublk_params. The native side
 * (native/ublk.c) only sends a command and waits for its answer, on the libuv pool.
 */
import { existsSync } from 'node:fs';
import { BdusError } from '../../driver/errors.js';
import type { EffectiveAttributes } from '../../driver/attributes.js';
import { errnoName, native } from '../../native.js';
import { execute } from '../../util/exec.js';

export const Command = {
  GET_DEV_INFO: 0x02,
  ADD_DEV: 0x04,
  DEL_DEV: 0x05,
  START_DEV: 0x06,
  STOP_DEV: 0x07,
  SET_PARAMS: 0x08,
  START_USER_RECOVERY: 0x10,
  END_USER_RECOVERY: 0x11,
  GET_FEATURES: 0x13,
  /** Linux 6.16 (UBLK_F_UPDATE_SIZE). */
  UPDATE_SIZE: 0x15,
} as const;

const NAMES: Record<number, string> = Object.fromEntries(Object.entries(Command).map(([name, nr]) => [nr, name]));

/** UBLK_F_*: what a device is created with, and what GET_FEATURES says the kernel has. */
export const Feature = {
  USER_RECOVERY: 1n << 3n,
  USER_RECOVERY_REISSUE: 1n << 4n,
  CMD_IOCTL_ENCODE: 1n << 6n,
  /** Linux 6.5: the server copies each request's data itself (queue.ts). */
  USER_COPY: 1n << 7n,
  /** Linux 6.16. (USER_RECOVERY_FAIL_IO and QUIESCE are not used: docs/recovery.md.) */
  UPDATE_SIZE: 1n << 10n,
} as const;

const ATTR_READ_ONLY = 1 << 0;
const ATTR_ROTATIONAL = 1 << 1;
const ATTR_VOLATILE_CACHE = 1 << 2;
const ATTR_FUA = 1 << 3;
const PARAM_TYPE_BASIC = 1 << 0;
const PARAM_TYPE_DISCARD = 1 << 1;

/** Sends one command; rejects with a BdusError named for the errno. */
export function control(command: number, device: number, buffer?: Buffer, data = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    native.ublkControl({ command, device, queue: -1, data, ...(buffer ? { buffer } : {}) }, (result) => {
      if (result >= 0) return resolve(result);
      const code = errnoName(-result);
      reject(new BdusError(code, `ublk ${NAMES[command] ?? command} of device ${device}: ${code}`));
    });
  });
}

/** Whether this kernel has ublk, loading the module if it can. */
export async function ublkAvailable(): Promise<boolean> {
  if (existsSync('/dev/ublk-control')) return true;
  await execute('modprobe', ['-q', 'ublk_drv']).catch(() => undefined);
  return existsSync('/dev/ublk-control');
}

/** The UBLK_F_* flags this kernel supports (GET_FEATURES, Linux 6.5; 0 before). */
export async function kernelFeatures(): Promise<bigint> {
  const buffer = Buffer.alloc(8);
  try {
    await control(Command.GET_FEATURES, 0, buffer);
    return buffer.readBigUInt64LE(0);
  } catch {
    return 0n;
  }
}

/** struct ublksrv_ctrl_dev_info, 64 bytes. */
export interface DeviceInfo {
  queues: number;
  depth: number;
  state: number;
  maxIoBytes: number;
  device: number;
  serverPid: number;
  flags: bigint;
  /** Ours to use: the bdus device id, so that a ublk device's owner can be told after a crash. */
  serverData: bigint;
}

export function encodeDeviceInfo(info: Pick<DeviceInfo, 'queues' | 'depth' | 'maxIoBytes' | 'flags' | 'serverData'>): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt16LE(info.queues, 0);
  b.writeUInt16LE(info.depth, 2);
  b.writeUInt32LE(info.maxIoBytes, 8);
  b.writeUInt32LE(0xffff_ffff, 12); // dev_id: the kernel chooses
  b.writeBigUInt64LE(info.flags, 24);
  b.writeBigUInt64LE(info.serverData, 32);
  return b;
}

export function decodeDeviceInfo(b: Buffer): DeviceInfo {
  return {
    queues: b.readUInt16LE(0),
    depth: b.readUInt16LE(2),
    state: b.readUInt16LE(4),
    maxIoBytes: b.readUInt32LE(8),
    device: b.readUInt32LE(12),
    serverPid: b.readInt32LE(16),
    flags: b.readBigUInt64LE(24),
    serverData: b.readBigUInt64LE(32),
  };
}

/** GET_DEV_INFO, or undefined if there is no such device. */
export async function deviceInfo(device: number): Promise<DeviceInfo | undefined> {
  const buffer = Buffer.alloc(64);
  try {
    await control(Command.GET_DEV_INFO, device, buffer);
  } catch (error) {
    if ((error as BdusError).code === 'ENODEV') return undefined;
    throw error;
  }
  return decodeDeviceInfo(buffer);
}

/** What the driver can do, for the parameters: which callbacks the kernel may send requests for. */
export interface Capabilities {
  readonly flush: boolean;
  readonly fuaWrite: boolean;
  readonly discard: boolean;
  readonly writeZeros: boolean;
}

const shift = (n: number) => Math.log2(n);

/**
 * struct ublk_params (basic + discard), from the attributes. A volatile write cache only when
 * the driver can flush, FUA only when it has fuaWrite (else the kernel follows a write with a
 * flush); discard and write-zeroes limits only for what the driver (or the request layer's
 * write-zeroes emulation, which the kernel does itself) can do.
 */
export function encodeParams(a: EffectiveAttributes, readOnly: boolean, can: Capabilities): Buffer {
  const b = Buffer.alloc(60);
  const ranges = can.discard || can.writeZeros;
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(PARAM_TYPE_BASIC | (ranges ? PARAM_TYPE_DISCARD : 0), 4);
  // basic, at 8
  let attrs = 0;
  if (readOnly) attrs |= ATTR_READ_ONLY;
  if (a.rotational) attrs |= ATTR_ROTATIONAL;
  if (can.flush) attrs |= ATTR_VOLATILE_CACHE;
  if (can.flush && can.fuaWrite) attrs |= ATTR_FUA;
  b.writeUInt32LE(attrs, 8);
  b.writeUInt8(shift(a.logicalBlockSize), 12);
  b.writeUInt8(shift(a.physicalBlockSize), 13);
  b.writeUInt8(shift(a.optimalIoSize || a.physicalBlockSize), 14); // io_opt
  b.writeUInt8(shift(a.physicalBlockSize), 15); // io_min
  b.writeUInt32LE(a.maxReadWriteSize / 512, 16);
  b.writeBigUInt64LE(BigInt(a.size / 512), 24);
  // discard, at 40
  if (ranges) {
    b.writeUInt32LE(a.physicalBlockSize, 44); // granularity
    b.writeUInt32LE(can.discard ? a.maxDiscardEraseSize / 512 : 0, 48);
    b.writeUInt32LE(can.writeZeros ? a.maxWriteZerosSize / 512 : 0, 52);
    b.writeUInt16LE(1, 56); // one range per discard
  }
  return b;
}

/** The ublk device number of /dev/ublkbN, or -1. */
export function ublkNumberOf(path: string): number {
  const match = /^\/dev\/ublkb(\d+)$/.exec(path);
  return match ? Number(match[1]) : -1;
}
