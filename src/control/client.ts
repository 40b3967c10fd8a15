/**
 * A connection to the control daemon, used by the CLI, the management API and driver processes.
 * Opening one starts the daemon when it is not running (as libbdus loads kbdus), unless told not
 * to; starting twice at once is harmless (the daemon's lock lets one win, the other exits).
 */
import { spawn } from 'node:child_process';
import { closeSync, fstatSync, mkdirSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { BdusError } from '../driver/errors.js';
import { RUN_DIR } from '../util/paths.js';
import { sleep } from '../util/process.js';
import { DAEMON_LOG_PATH, encode, LineReader, LOCK_PATH, PROTOCOL_VERSION, SOCKET_PATH, type DaemonEvent, type Operation, type Reply, type Requests } from './protocol.js';

/**
 * How long a daemon that runs but does not listen yet is waited for. Generous: a Node process
 * starts in well under a second on an idle machine, but in tens of seconds on a loaded small one
 * (the emulated test VM took over 10). One that ends without listening fails the wait at once.
 */
const START_TIMEOUT_MS = 60_000;
const CLI = fileURLToPath(new URL('../cli/bin.js', import.meta.url));

export interface OpenOptions {
  /** Start the daemon if it is not running (default true). */
  start?: boolean;
  /** Accept a daemon of another protocol version (only `version` and `shutdown` are then safe). */
  anyProtocol?: boolean;
}

export class ControlConnection {
  /** Called for each event the daemon sends (to a driver's connection). */
  onEvent: (event: DaemonEvent) => void = () => undefined;
  /** Resolves when the connection has ended, from either side. */
  readonly closed: Promise<void>;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private seq = 0;
  private ended = false;

  private constructor(private readonly socket: Socket) {
    const reader = new LineReader(
      (line) => this.receive(line),
      () => socket.destroy(new Error('the daemon sent a message that is too long')),
    );
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => reader.push(chunk));
    socket.on('error', () => undefined); // 'close' follows and fails what is pending
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.ended = true;
        for (const { reject } of this.pending.values()) reject(new BdusError('ECONNRESET', 'the bdus daemon went away'));
        this.pending.clear();
        resolve();
      }),
    );
  }

  /** Connects to the daemon, starting it if needed, and checks that it speaks our protocol. */
  static async open(options: OpenOptions = {}): Promise<ControlConnection> {
    let socket = await tryConnect();
    if (!socket) {
      if (options.start === false) throw new BdusError('ECONNREFUSED', 'the bdus daemon is not running');
      if (process.geteuid?.() !== 0) {
        throw new BdusError('EPERM', 'the bdus daemon is not running, and only root can start it (try sudo)');
      }
      socket = await startDaemon([]);
    }
    const connection = new ControlConnection(socket);
    const { protocol, version } = await connection.request('version', {});
    if (protocol !== PROTOCOL_VERSION && !options.anyProtocol) {
      connection.close();
      throw new BdusError(
        'EPROTO',
        `the running bdus daemon (version ${version}) speaks control protocol ${protocol}, this library ${PROTOCOL_VERSION}: stop it with 'bdus daemon stop'`,
      );
    }
    return connection;
  }

  request<O extends Operation>(op: O, args: Requests[O]['args']): Promise<Requests[O]['result']> {
    if (this.ended) return Promise.reject(new BdusError('ECONNRESET', 'the bdus daemon went away'));
    const seq = ++this.seq;
    this.socket.write(encode({ seq, op, ...args }));
    return new Promise((resolve, reject) => this.pending.set(seq, { resolve: resolve as (v: unknown) => void, reject }));
  }

  close(): void {
    this.socket.end();
  }

  private receive(line: string): void {
    let message: Reply | DaemonEvent;
    try {
      message = JSON.parse(line) as Reply | DaemonEvent;
    } catch {
      // Never let a bad line become an exception in a driver process: drop the connection.
      this.socket.destroy();
      return;
    }
    if ('event' in message) return this.onEvent(message);
    const waiter = this.pending.get(message.seq);
    if (!waiter) return;
    this.pending.delete(message.seq);
    if (message.ok) waiter.resolve(message.result);
    else waiter.reject(new BdusError(message.code, message.message));
  }
}

/** Opens a connection, runs `work` with it, and closes it. */
export async function withDaemon<T>(work: (connection: ControlConnection) => Promise<T>, options?: OpenOptions): Promise<T> {
  const connection = await ControlConnection.open(options);
  try {
    return await work(connection);
  } finally {
    connection.close();
  }
}

/** A connected socket, or undefined if no daemon listens. */
function tryConnect(): Promise<Socket | undefined> {
  return new Promise((resolve, reject) => {
    const socket = connect(SOCKET_PATH);
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') return resolve(undefined);
      if (error.code === 'EACCES' || error.code === 'EPERM') {
        return reject(new BdusError('EACCES', `permission denied: the bdus control socket (${SOCKET_PATH}) is for root only (try sudo)`));
      }
      reject(new BdusError(error.code ?? 'EIO', `cannot reach the bdus daemon at ${SOCKET_PATH}: ${error.message}`));
    });
  });
}

/**
 * Whether a daemon holds its lock (it runs, or is starting). Read from /proc/locks rather than
 * tried: taking the lock even for a moment could make a daemon starting right then give up.
 */
function lockHeld(): boolean {
  let inode: number;
  try {
    inode = statSync(LOCK_PATH).ino;
  } catch {
    return false;
  }
  // "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF": the file is MAJOR:MINOR:INODE.
  return readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .some((line) => line.includes(' FLOCK ') && line.split(/\s+/).some((field) => field.endsWith(`:${inode}`)));
}

/** The daemon log's last line (what a daemon that could not start said), as ": ..." or "". */
function lastWords(): string {
  let fd: number | undefined;
  try {
    fd = openSync(DAEMON_LOG_PATH, 'r');
    const buffer = Buffer.alloc(2000);
    const bytes = readSync(fd, buffer, 0, buffer.length, Math.max(0, fstatSync(fd).size - buffer.length));
    const tail = buffer.toString('utf8', 0, bytes).trimEnd();
    const line = tail.slice(tail.lastIndexOf('\n') + 1).replace(/^bdus: error: /, '');
    return line ? `: ${line}` : '';
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Starts a daemon in the background (`bdus daemon run ARGS`, its output to DAEMON_LOG_PATH) and
 * returns a connection to it, or to whichever daemon won a race to start.
 */
export async function startDaemon(args: readonly string[]): Promise<Socket> {
  mkdirSync(`${RUN_DIR}/log`, { recursive: true, mode: 0o700 });
  const log = openSync(DAEMON_LOG_PATH, 'a', 0o600);
  let ended: string | undefined;
  try {
    const child = spawn(process.execPath, [CLI, 'daemon', 'run', ...args], { detached: true, stdio: ['ignore', log, log] });
    child.once('exit', (code, signal) => (ended = signal ?? `exit status ${code}`));
    child.unref();
  } finally {
    closeSync(log);
  }
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (let wait = 5; Date.now() < deadline; wait = Math.min(wait * 2, 100)) {
    await sleep(wait);
    const socket = await tryConnect();
    if (socket) return socket;
    // Ours ended without listening: only a daemon that won the race to start (and holds the
    // lock) may still come.
    if (ended !== undefined && !lockHeld()) {
      throw new BdusError('EIO', `the bdus daemon ended (${ended}) before it listened${lastWords()} (see ${DAEMON_LOG_PATH})`);
    }
  }
  throw new BdusError('ETIMEDOUT', `the bdus daemon did not start within ${START_TIMEOUT_MS / 1000} s (see ${DAEMON_LOG_PATH})`);
}
