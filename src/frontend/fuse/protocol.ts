/**
 * The FUSE wire format (include/uapi/linux/fuse.h), as far as a one-file filesystem needs it.
 *
 * Each struct is defined once: its byte offsets and its size. Sizes are pinned by
 * test/fuse-protocol.test.ts against the kernel header's values. All integers are little-endian
 * (x86-64 and arm64 are); 64-bit fields that can pass 2^53 are never read as numbers here
 * (offsets and sizes of a device fit in 2^53).
 */

/** FUSE kernel protocol major version we speak. */
export const KERNEL_VERSION = 7;
/**
 * Minor version we reply with (or the kernel's, if lower). 38 is the newest one whose struct
 * layouts this file describes completely; nothing we need was added after it.
 */
export const KERNEL_MINOR_VERSION = 38;

/** Opcodes, with names for logs generated from the same table. */
export const Opcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  GETXATTR: 22,
  LISTXATTR: 23,
  FLUSH: 25,
  INIT: 26,
  ACCESS: 34,
  INTERRUPT: 36,
  DESTROY: 38,
  IOCTL: 39,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  LSEEK: 46,
  SYNCFS: 50,
  STATX: 52,
} as const;

const opcodeNames = new Map<number, string>(Object.entries(Opcode).map(([k, v]) => [v, k]));
export function opcodeName(opcode: number): string {
  return opcodeNames.get(opcode) ?? `OPCODE_${opcode}`;
}

/** The mount's root, here the image file itself (FUSE_ROOT_ID). */
export const FUSE_ROOT_ID = 1;

/** struct fuse_in_header: len u32, opcode u32, unique u64, nodeid u64, uid, gid, pid u32, total_extlen u16, padding u16. */
export const InHeader = { len: 0, opcode: 4, unique: 8, nodeid: 16, uid: 24, gid: 28, pid: 32, SIZE: 40 } as const;
/** struct fuse_out_header: len u32, error i32 (negative errno), unique u64. */
export const OutHeader = { len: 0, error: 4, unique: 8, SIZE: 16 } as const;

/** struct fuse_init_in (minor >= 36): major, minor, max_readahead, flags, flags2, unused[11]. */
export const InitIn = { major: 0, minor: 4, maxReadahead: 8, flags: 12, flags2: 16, SIZE: 64 } as const;
/**
 * struct fuse_init_out: major u32, minor u32, max_readahead u32, flags u32, max_background u16,
 * congestion_threshold u16, max_write u32, time_gran u32, max_pages u16, map_alignment u16,
 * flags2 u32, max_stack_depth u32, request_timeout u16, unused[11] u16.
 */
export const InitOut = {
  major: 0,
  minor: 4,
  maxReadahead: 8,
  flags: 12,
  maxBackground: 16,
  congestionThreshold: 18,
  maxWrite: 20,
  timeGran: 24,
  maxPages: 28,
  mapAlignment: 30,
  flags2: 32,
  SIZE: 64,
} as const;

/** INIT flags (the low 32 bits; flags2 holds bits 32-63). */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  BIG_WRITES: 1 << 5,
  ASYNC_DIO: 1 << 15,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22,
  INIT_EXT: 1 << 30,
} as const;
/** FUSE_OVER_IO_URING (bit 41 of the INIT flags: bit 9 of flags2): requests may come through io_uring (src/frontend/fuse/ring.ts). */
export const INIT2_OVER_IO_URING = 1 << 9;

/**
 * struct fuse_attr: ino, size, blocks, atime, mtime, ctime u64; atimensec, mtimensec, ctimensec,
 * mode, nlink, uid, gid, rdev, blksize, flags u32.
 */
export const Attr = { ino: 0, size: 8, blocks: 16, mode: 60, nlink: 64, blksize: 80, SIZE: 88 } as const;
/** struct fuse_attr_out: attr_valid u64, attr_valid_nsec u32, dummy u32, attr. */
export const AttrOut = { attrValid: 0, attrValidNsec: 8, attr: 16, SIZE: 16 + Attr.SIZE } as const;

/** struct fuse_open_out: fh u64, open_flags u32, backing_id i32. */
export const OpenOut = { fh: 0, openFlags: 8, SIZE: 16 } as const;
export const OpenFlag = { KEEP_CACHE: 1 << 1, NOFLUSH: 1 << 5, PARALLEL_DIRECT_WRITES: 1 << 6 } as const;

/** struct fuse_read_in: fh u64, offset u64, size u32, read_flags u32, lock_owner u64, flags u32, padding u32. */
export const ReadIn = { fh: 0, offset: 8, size: 16, SIZE: 40 } as const;
/** struct fuse_write_in: same layout as fuse_read_in; the data follows it. */
export const WriteIn = { fh: 0, offset: 8, size: 16, writeFlags: 20, SIZE: 40 } as const;
/** struct fuse_write_out: size u32, padding u32. */
export const WriteOut = { size: 0, SIZE: 8 } as const;
/** struct fuse_fsync_in: fh u64, fsync_flags u32, padding u32. */
export const FsyncIn = { fh: 0, fsyncFlags: 8, SIZE: 16 } as const;
/** struct fuse_fallocate_in: fh u64, offset u64, length u64, mode u32, padding u32. */
export const FallocateIn = { fh: 0, offset: 8, length: 16, mode: 24, SIZE: 32 } as const;
/**
 * struct fuse_statfs_out = struct fuse_kstatfs: blocks, bfree, bavail, files, ffree u64; bsize,
 * namelen, frsize u32, padding u32, spare[6] u32.
 */
export const StatfsOut = { blocks: 0, bfree: 8, bavail: 16, files: 24, ffree: 32, bsize: 40, namelen: 44, frsize: 48, SIZE: 80 } as const;

/** fallocate(2) mode bits, as FUSE forwards them. */
export const FallocateMode = { KEEP_SIZE: 0x01, PUNCH_HOLE: 0x02, ZERO_RANGE: 0x10 } as const;

/** File mode bits for the image file. */
export const S_IFREG = 0o100000;
