/**
 * The typed face of the native addon (native/bdus_native.c): only the system calls Node cannot
 * make. node-gyp-build loads it: the local build (build/Release, made by `npm install` in a
 * checkout) or else the package's prebuild for this platform (prebuilds/linux-x64, linux-arm64;
 * see native/prebuild), so an installed package needs no compiler on those machines.
 */
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';

interface NativeAddon {
  /** The system's page size in bytes. */
  readonly pageSize: number;
  /** fallocate(2) on the libuv pool; the callback gets 0 or a positive errno. */
  /** With `discard`, BLKDISCARD of the range (a block device) instead of fallocate. */
  fallocate(fd: number, mode: number, offset: number, length: number, callback: (errno: number) => void, discard?: boolean): void;
  /** ioctl(BLKGETSIZE64): a block device's size in bytes. */
  blockDeviceSize(fd: number): bigint;
  /** ioctl(LOOP_SET_CAPACITY) on a loop device: it takes its backing file's size again. */
  loopSetCapacity(fd: number): void;
  /** dup2(2). */
  dup2(oldFd: number, newFd: number): void;
  /** flock(LOCK_EX | LOCK_NB): true if this process now holds the lock, false if another does. */
  tryLock(fd: number): boolean;
  /** A duplicate, in this process, of file descriptor `fd` of process `pid` (pidfd_getfd(2); close-on-exec). */
  getFd(pid: number, fd: number): number;
  /**
   * A new /dev/fuse file attached to the FUSE connection open as `fd` (FUSE_DEV_IOC_CLONE): a
   * second reader of the same connection, for a lane (src/lane).
   */
  fuseClone(fd: number): number;
  /** The first `length` bytes of the file open as `fd`, mapped shared; unmapped when the Buffer is collected. */
  mapShared(fd: number, length: number): Buffer;
  /**
   * `length` bytes of private anonymous memory (MAP_NORESERVE), committed page by page as it is
   * written (reads of untouched pages cost nothing); unmapped when the Buffer is collected.
   * `huge`: madvise(MADV_HUGEPAGE) as well, so that the kernel backs it with 2 MiB pages where
   * it has transparent huge pages (/sys/kernel/mm/transparent_hugepage/enabled not "never"):
   * committed 2 MiB at a time, but one fault and one TLB entry per 2 MiB instead of 512.
   */
  mapAnonymous(length: number, huge?: boolean): Buffer;
  /**
   * madvise(MADV_DONTNEED) on whole pages of a mapAnonymous buffer: their memory goes back to
   * the system at once and they read as zeros. `offset` and `length` must be page-aligned.
   * `remove`: MADV_REMOVE instead, for a mapShared buffer of a memfd (the pages leave the file,
   * so every mapping of it reads zeros there).
   */
  dropPages(buffer: Buffer, offset: number, length: number, remove?: boolean): void;
  /**
   * memfd_create(MFD_CLOEXEC) of `length` bytes: memory that every thread of the process can map
   * (mapShared) with a Buffer of its own; committed as it is written. Close it when done.
   */
  memfd(name: string, length: number): number;
  /** socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC). */
  socketPair(): [number, number];
  /** One command of the kernel NBD client's generic netlink, on the libuv pool (see src/frontend/nbd/netlink.ts). */
  nbdNetlink(request: NbdNetlinkRequest, callback: (errno: number, index: number) => void): void;
  /**
   * Calls `callback` on the event loop whenever `fd` is readable (uv_poll; makes `fd`
   * non-blocking). `status` is 0, or a negative libuv error (the fd is in error: read it to
   * learn why). After each call, polls `fd` for up to `spinMicroseconds` without sleeping and,
   * if it turns readable, calls again at once (up to 8 calls before the event loop's next turn);
   * 0: never spins. Stop it with unwatch().
   */
  watch(fd: number, spinMicroseconds: number, callback: (status: number) => void): Watcher;
  /** Changes how long a watcher spins after each call (0: never); nothing once it is stopped. */
  watchSpin(watcher: Watcher, spinMicroseconds: number): void;
  /** Stops a watcher for good; a second call does nothing. */
  unwatch(watcher: Watcher): void;
  /** read(2) into `buffer`: the bytes read, or -errno (never throws on a failed read). */
  readFd(fd: number, buffer: Buffer): number;
  /** write(2) of the first `length` bytes of `buffer`: the bytes written, or -errno. */
  writeFd(fd: number, buffer: Buffer, length: number): number;
  /** writev(2) of the first `headLength` bytes of `head`, then all of `data`: the bytes written, or -errno. */
  writeFdGather(fd: number, head: Buffer, headLength: number, data: Uint8Array): number;
  /** Spins (poll with no timeout, in a loop) until `fd` is readable or `microseconds` passed; true if readable. */
  waitReadable(fd: number, microseconds: number): boolean;
  /** dup(2), close-on-exec. */
  dup(fd: number): number;
  /** setsockopt(SO_SNDBUF) if `fd` is a Unix socket (capped by net.core.wmem_max); true if set. */
  growUnixSendBuffer(fd: number, bytes: number): boolean;
  /** lseek(SEEK_HOLE if `hole`, else SEEK_DATA): the offset found, or -errno (-ENXIO: none past `offset`). */
  seek(fd: number, offset: number, hole: boolean): number;
  /** Pins the calling thread (not the process) to `cpus` (sched_setaffinity); throws the errno. */
  pinThread(cpus: readonly number[]): void;
  /** One ublk control command on /dev/ublk-control, on the libuv pool: the callback gets >= 0 or -errno. */
  ublkControl(request: UblkControlRequest, callback: (result: number) => void): void;
  /**
   * Sets up one ublk hardware queue on the event loop thread: FETCH_REQ on every tag, then
   * `callback(count)` whenever completions arrive, `count` (tag, result) pairs in `completions`.
   * `userCopy`: the device has UBLK_F_USER_COPY (the kernel fills and reads no buffer: ublkCopy).
   */
  ublkQueue(cdevFd: number, queue: number, depth: number, bufferSize: number, userCopy: boolean, callback: (count: number) => void): UblkQueueHandle;
  /**
   * A user-copy queue: copies the data of `tag`'s request from `memory` into the request (a
   * read's answer, `toKernel`) or from the request into `memory` (a write's data). The bytes
   * copied, or -errno (-EINVAL: not a user-copy queue, closed, or no such request).
   */
  ublkCopy(queue: UblkQueueHandle['queue'], tag: number, memory: Uint8Array, toKernel: boolean): number;
  /**
   * Queues a COMMIT_AND_FETCH_REQ for `tag` (submitted with the loop turn's others): `result`
   * is bytes done or -errno; the tag's next request uses buffer `half` (0: the first `depth`
   * buffers, 1: the second).
   */
  ublkCommit(queue: UblkQueueHandle['queue'], tag: number, result: number, half: number): void;
  /**
   * Ends the queue's ring and unmaps its descriptors (the buffers stay until collected); with
   * `leave`, only stops reading the ring: its commands stay until this thread has exited and
   * ublkCloseLeft closes it, or the process ends (native/ublk.c says why a handed-over queue
   * must not be closed while its thread lives).
   */
  ublkQueueClose(queue: UblkQueueHandle['queue'], leave?: boolean): void;
  /**
   * Closes the rings of queues left (ublkQueueClose with `leave`) by threads that have exited
   * since; returns how many rings left by other threads still wait for theirs.
   */
  ublkCloseLeft(): number;
  /**
   * Registers `depth` ring entries on each FUSE queue in `queueIds` of the connection on `fd`
   * (FUSE over io_uring), on the event loop thread; entries i * depth to (i + 1) * depth - 1
   * are queue queueIds[i]'s. `callback(count)` whenever completions arrive, `count` (entry,
   * result) pairs in `completions`; result 0 means a request is in the entry's header and payload.
   * After a batch the thread waits `spinMicroseconds` for the next one, spinning (0: never).
   */
  fuseRing(fd: number, queueIds: readonly number[], depth: number, payloadSize: number, spinMicroseconds: number, callback: (count: number) => void): FuseRingHandle;
  /** Queues the entry's COMMIT_AND_FETCH (its answer in its header and payload), submitted with the loop turn's others. */
  fuseRingCommit(ring: FuseRingHandle['ring'], entry: number): void;
  /** Stops spinning after a batch (`on` false), or spins again for the spinMicroseconds the ring was set up with. */
  fuseRingSpin(ring: FuseRingHandle['ring'], on: boolean): void;
  /**
   * Sends the commits queued this turn and waits for the next request, spinning, for the
   * spinMicroseconds the ring was set up with (if it spins now): a request caught is handled
   * by the event loop without sleeping.
   */
  fuseRingWait(ring: FuseRingHandle['ring']): void;
  /** Ends the ring (the buffers stay until collected). */
  fuseRingClose(ring: FuseRingHandle['ring']): void;
  /**
   * Writes to `fd` submitted together (io_uring): up to `entries` queued before the batch
   * submits by itself. Throws if the kernel gives no io_uring. Each add's memory must stay as
   * it is until the submit; successful writes report nothing.
   */
  writeBatch(fd: number, entries: number): WriteBatch;
  /** Queues a write of the first `length` bytes of `buffer`: the count of failed writes if a full batch submitted, else 0. */
  writeBatchAdd(batch: WriteBatch, buffer: Buffer, length: number): number;
  /** Queues a writev of `head`'s first `headLength` bytes and `data`, as writeBatchAdd. */
  writeBatchAddGather(batch: WriteBatch, head: Buffer, headLength: number, data: Uint8Array): number;
  /** Submits what is queued (the writes run in order): how many failed. */
  writeBatchSubmit(batch: WriteBatch): number;
  /** The -errno of each write that failed in the last submit (at most 64). */
  writeBatchErrors(batch: WriteBatch): number[];
  /** Submits what is queued (how many failed) and ends the batch's ring; adding after this throws. */
  writeBatchClose(batch: WriteBatch): number;
  /**
   * File reads, writes and fdatasyncs through io_uring (native/file_io.c): up to `entries` in
   * flight; `callback(count)` for each batch of completions, as (tag, result) int32 pairs in
   * `completions`. Throws if the kernel gives no io_uring.
   */
  fileIo(entries: number, callback: (count: number) => void): FileIoHandle;
  /**
   * Queues an operation, submitted with the loop turn's others: `op` 0 reads into
   * data[start, start + length) from `position`, 1 writes from it, 2 is fdatasync (data null).
   * 0, or -EBUSY (entries all in flight) or -EINVAL. The memory must stay until the completion.
   */
  fileIoQueue(io: FileIoHandle['io'], op: 0 | 1 | 2, fd: number, data: Uint8Array | null, start: number, length: number, position: number, tag: number): number;
  /** Ends the ring; operations still in flight are cancelled and never complete. */
  fileIoClose(io: FileIoHandle['io']): void;
}

export interface FileIoHandle {
  readonly io: { readonly __fileIo: unique symbol };
  /** (tag, result) int32 pairs of the last batch. */
  readonly completions: Buffer;
}

export interface WriteBatch {
  readonly __writeBatch: unique symbol;
}

export interface FuseRingHandle {
  readonly ring: { readonly __fuseRing: unique symbol };
  /** struct fuse_uring_req_header per entry (288 bytes). */
  readonly headers: Buffer;
  /** payloadSize bytes per entry. */
  readonly payloads: Buffer;
  /** (entry, result) pairs of the last batch, as int32. */
  readonly completions: Buffer;
}

export interface UblkControlRequest {
  /** UBLK_CMD_* number. */
  command: number;
  /** dev_id; -1 lets the kernel choose (ADD_DEV). */
  device: number;
  queue?: number;
  /** data[0]: the server's pid for START_DEV and END_USER_RECOVERY. */
  data?: number;
  /** The payload the kernel reads and writes. */
  buffer?: Buffer;
}

export interface UblkQueueHandle {
  readonly queue: { readonly __ublkQueue: unique symbol };
  /** struct ublksrv_io_desc per tag (24 bytes), read-only. */
  readonly descriptors: Buffer;
  /** 2 x depth buffers of bufferSize bytes: tag t's are at t and depth + t. */
  readonly buffers: Buffer;
  /** (tag, result) int32 pairs, filled before each callback. */
  readonly completions: Buffer;
}

/** An fd watched for readability on the event loop. */
export type Watcher = { readonly __watcher: unique symbol };

/** Fields left out are not sent. Sizes in bytes, timeouts in seconds. */
export interface NbdNetlinkRequest {
  command: number;
  index?: number;
  socket?: number;
  sizeBytes?: number;
  blockSize?: number;
  serverFlags?: number;
  clientFlags?: number;
  timeout?: number;
  deadConnTimeout?: number;
  /** Names who serves the device (sysfs backend); a reconfigure naming another is refused. */
  backend?: string;
}

const require = createRequire(import.meta.url);
const load = require('node-gyp-build') as (root: string) => unknown;
export const native = load(fileURLToPath(new URL('../..', import.meta.url))) as NativeAddon;

/** fallocate(2) as a promise; rejects with a Node-style error carrying `code`. */
export function fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
  return onPool('fallocate', fd, mode, offset, length, false);
}

/** BLKDISCARD of a block device's range, as a promise (on the libuv pool, like fallocate). */
export function blockDiscard(fd: number, offset: number, length: number): Promise<void> {
  return onPool('BLKDISCARD', fd, 0, offset, length, true);
}

function onPool(syscall: string, fd: number, mode: number, offset: number, length: number, discard: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    native.fallocate(fd, mode, offset, length, (errno) => (errno === 0 ? resolve() : reject(errnoError(errno, syscall))), discard);
  });
}

/** An Error as Node's fs makes them: `code` (the errno's name), a negative `errno`, `syscall`. */
export function errnoError(errno: number, syscall: string): NodeJS.ErrnoException {
  const code = errnoName(errno);
  return Object.assign(new Error(`${syscall}: ${code}`), { code, errno: -Math.abs(errno), syscall });
}

const errnoNames = new Map(Object.entries(constants.errno).map(([name, n]) => [n, name]));
export function errnoName(errno: number): string {
  return errnoNames.get(Math.abs(errno)) ?? `E${Math.abs(errno)}`;
}
