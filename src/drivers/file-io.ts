/**
 * A file's reads, writes and fdatasyncs for a driver that keeps its data in files, through
 * io_uring (native/file_io.c) where the kernel offers it, else through Node's fs.
 *
 * Node's fs hands every transfer to libuv's thread pool and back: two context switches per
 * request, which held the file driver to about a fifth of the kernel's loop device on the same
 * file. Through io_uring a loop turn's transfers leave in one system call, those the page cache
 * serves complete inside it, and their completions come back in one batch (docs/performance.md,
 * "The file driver through io_uring"). One FileIo per driver instance: each lane's thread has
 * its own.
 *
 * A file in memory (tmpfs, ramfs) is read and written at once, in the calling thread: nothing
 * there waits for a disk, a transfer is a copy, and tmpfs cannot tell io_uring so (it has no
 * non-blocking reads), which then hands every transfer to a kernel worker: a hand-off and a
 * wake-up per request again, as costly as the thread pool's (4k QD1 about 67 us against 30 done
 * at once).
 *
 * A transfer that the kernel ends early (a short read or write) continues from where it ended;
 * one that reaches the end of the file rejects with EIO. Errors are Node's (`code`, `errno`,
 * `syscall`), as fs gives them.
 */
import { fdatasync, read, readSync, statfsSync, statSync, write, writeSync } from 'node:fs';
import { promisify } from 'node:util';
import { DriverError } from '../driver/errors.js';
import { errnoError, native, type FileIoHandle } from '../native.js';

const readAsync = promisify(read);
const writeAsync = promisify(write);
const fdatasyncAsync = promisify(fdatasync);

/** Operations in flight on one ring at most; more wait their turn in the thread pool. */
const ENTRIES = 128;
const READ = 0;
const WRITE = 1;
const DATASYNC = 2;
const SYSCALLS = ['read', 'write', 'fdatasync'] as const;
const EAGAIN = 11;
const EINTR = 4;
const ECANCELED = 125;
/** The memory of operations in flight when their ring closed: the kernel may still write into it (FileIo.close). */
const abandoned = new Set<Uint8Array>();
/** statfs f_type of the filesystems whose files live in memory: tmpfs (/dev/shm), ramfs. */
const MEMORY_FILESYSTEMS = new Set([0x01021994, 0x858458f6]);

/**
 * Whether the file at `path` is a regular file in memory (tmpfs, ramfs), or a directory whose
 * files are: a FileIo makes its transfers at once, with no ring. Not a block device's node: /dev
 * is devtmpfs, which statfs reports as tmpfs.
 */
export function inMemory(path: string): boolean {
  try {
    const stat = statSync(path);
    return (stat.isFile() || stat.isDirectory()) && MEMORY_FILESYSTEMS.has(statfsSync(path).type);
  } catch {
    return false;
  }
}

export class FileIo {
  /** Whether the file lives in memory (tmpfs, ramfs): its transfers are made at once. */
  readonly inMemory: boolean;

  /**
   * `name` is the file's path, or the directory's whose files it serves: which filesystem they
   * are on. `short` is the EIO's message for a transfer that reaches the end of its file.
   */
  constructor(name: string, private readonly short = `${name} is shorter than the device`) {
    this.inMemory = inMemory(name);
    // A file in memory needs no ring (its rare fdatasync goes to the thread pool).
    this.handle = this.inMemory ? null : this.openRing();
    const c = this.handle?.completions;
    this.completions = c ? new Int32Array(c.buffer, c.byteOffset, 2 * ENTRIES) : new Int32Array(0);
    if (this.handle) for (let tag = ENTRIES - 1; tag >= 0; tag--) this.free.push(tag);
  }

  /** Whether transfers go through io_uring (false: through Node's thread pool). */
  get ring(): boolean {
    return this.handle !== null;
  }

  /** Fills `buffer` from the file at `position` (at once, returning nothing, for a file in memory). */
  read(fd: number, buffer: Uint8Array, position: number): Promise<void> | void {
    return this.inMemory ? this.now(READ, fd, buffer, position) : this.start(READ, fd, buffer, position);
  }

  /** Writes all of `data` to the file at `position` (at once for a file in memory). */
  write(fd: number, data: Uint8Array, position: number): Promise<void> | void {
    return this.inMemory ? this.now(WRITE, fd, data, position) : this.start(WRITE, fd, data, position);
  }

  /** fdatasync(2): every write completed before it is durable. */
  datasync(fd: number): Promise<void> {
    return this.start(DATASYNC, fd, null, 0);
  }

  /**
   * Ends the ring. Meant for once nothing is in flight (a driver's terminate: its callbacks have
   * all settled). An operation still in flight then (a disk that never answered, whose request
   * the request layer gave up on) is left to the kernel: closing the ring cancels it only in
   * time, and until then a read may still land in its memory. So its promise never settles,
   * which keeps its request's buffer out of reuse (a callback that never ends), and its memory
   * stays referenced for the life of the process.
   */
  close(): void {
    if (!this.handle) return;
    native.fileIoClose(this.handle.io);
    this.handle = null;
    for (const data of this.datas) if (data) abandoned.add(data);
  }

  private handle: FileIoHandle | null;
  private readonly completions: Int32Array;
  /** Free tags, a stack. */
  private readonly free: number[] = [];
  // Each tag's operation in flight, field by field (nothing allocated per operation but its promise).
  private readonly ops = new Uint8Array(ENTRIES);
  private readonly fds = new Int32Array(ENTRIES);
  private readonly datas: (Uint8Array | null)[] = new Array<Uint8Array | null>(ENTRIES).fill(null);
  private readonly positions = new Float64Array(ENTRIES);
  private readonly done = new Uint32Array(ENTRIES);
  private readonly resolves: ((() => void) | null)[] = new Array<(() => void) | null>(ENTRIES).fill(null);
  private readonly rejects: (((error: Error) => void) | null)[] = new Array<((error: Error) => void) | null>(ENTRIES).fill(null);

  private start(op: number, fd: number, data: Uint8Array | null, position: number): Promise<void> {
    const tag = this.free.pop();
    if (tag === undefined || !this.handle) return this.onPool(op, fd, data, position);
    this.ops[tag] = op;
    this.fds[tag] = fd;
    this.datas[tag] = data;
    this.positions[tag] = position;
    this.done[tag] = 0;
    const result = native.fileIoQueue(this.handle.io, op as 0 | 1 | 2, fd, data, 0, data ? data.length : 0, position, tag);
    if (result < 0) {
      this.datas[tag] = null;
      this.free.push(tag);
      return this.onPool(op, fd, data, position);
    }
    return new Promise((resolve, reject) => {
      this.resolves[tag] = resolve;
      this.rejects[tag] = reject;
    });
  }

  private completed(count: number): void {
    const completions = this.completions;
    for (let i = 0; i < count; i++) {
      const tag = completions[2 * i]!;
      const result = completions[2 * i + 1]!;
      const op = this.ops[tag]!;
      if (result < 0) {
        if (result === -EAGAIN || result === -EINTR) this.continue(tag);
        else this.settle(tag, errnoError(result, SYSCALLS[op]!));
        continue;
      }
      const data = this.datas[tag];
      if (!data) {
        this.settle(tag, null);
        continue;
      }
      if (result === 0 && data.length > 0) {
        this.settle(tag, new DriverError('EIO', this.short));
        continue;
      }
      this.done[tag]! += result;
      if (this.done[tag]! >= data.length) this.settle(tag, null);
      else this.continue(tag);
    }
  }

  /** Queues the rest of a transfer the kernel ended early (or asked to repeat). */
  private continue(tag: number): void {
    const op = this.ops[tag]!;
    if (!this.handle) return this.settle(tag, errnoError(ECANCELED, SYSCALLS[op]!));
    const data = this.datas[tag] ?? null;
    const done = this.done[tag]!;
    const result = native.fileIoQueue(this.handle.io, op as 0 | 1 | 2, this.fds[tag]!, data, done, data ? data.length - done : 0, this.positions[tag]! + done, tag);
    if (result < 0) this.settle(tag, errnoError(result, SYSCALLS[op]!));
  }

  private settle(tag: number, error: Error | null): void {
    const resolve = this.resolves[tag]!;
    const reject = this.rejects[tag]!;
    this.resolves[tag] = this.rejects[tag] = null;
    this.datas[tag] = null;
    this.free.push(tag);
    if (error) reject(error);
    else resolve();
  }

  private openRing(): FileIoHandle | null {
    try {
      return native.fileIo(ENTRIES, (count) => this.completed(count));
    } catch {
      return null; // no io_uring here (kernel.io_uring_disabled, a seccomp filter): Node's fs does it all
    }
  }

  /** A transfer made at once, in this thread. */
  private now(op: number, fd: number, data: Uint8Array, position: number): void {
    for (let done = 0; done < data.length; ) {
      const n = op === WRITE ? writeSync(fd, data, done, data.length - done, position + done) : readSync(fd, data, done, data.length - done, position + done);
      if (n === 0) throw new DriverError('EIO', this.short);
      done += n;
    }
  }

  /** The same operation through Node's fs (its thread pool). */
  private async onPool(op: number, fd: number, data: Uint8Array | null, position: number): Promise<void> {
    if (op === DATASYNC || !data) return fdatasyncAsync(fd);
    for (let done = 0; done < data.length; ) {
      const n = op === WRITE
        ? (await writeAsync(fd, data, done, data.length - done, position + done)).bytesWritten
        : (await readAsync(fd, data, done, data.length - done, position + done)).bytesRead;
      if (n === 0) throw new DriverError('EIO', this.short);
      done += n;
    }
  }
}
