/**
 * The databases databases.ts puts through crashes: how each is created on a mounted filesystem,
 * started, stopped, loaded, checked, and asked what it holds. PostgreSQL runs as its own user
 * from Debian's packages (data checksums on, fsync and synchronous commit on, its socket in the
 * mount, no TCP); SQLite is the sqlite3 shell on a WAL database with synchronous=FULL.
 */
import { appendFileSync, chownSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { background, must, sh } from './helpers.js';
import { Ledger } from './ledger.js';

export interface Database {
  readonly name: string;
  readonly filesystem: 'ext4' | 'xfs';
  /** Statements the ledger client runs before its first transaction. */
  readonly preamble: string;
  /** Creates the database on the mounted filesystem and leaves it running (if it is a server). */
  create(): Promise<void>;
  start(): Promise<void>;
  /** 'crash': as abrupt as the database allows (PostgreSQL: immediate shutdown); never throws. */
  stop(how: 'crash' | 'clean'): Promise<void>;
  ledger(): Ledger;
  /** Other clients' work for about `seconds`; stop() waits for it and says what it did and met. */
  load?(seconds: number): { stop(): Promise<{ transactions: number; problem: string | undefined }> };
  committedIds(): Promise<Set<number>>;
  /** What the database's own check and its log say is wrong; empty when clean. */
  check(): Promise<string[]>;
  /** Removes what it keeps outside the mount (a log). */
  remove(): void;
}

/** Lines of a database's log, from byte `from` on, that speak of I/O trouble. */
function ioErrorLines(path: string, from = 0): string[] {
  let text = '';
  try {
    text = readFileSync(path).subarray(from).toString('utf8');
  } catch {
    return [];
  }
  return text.split('\n').filter((line) => /I\/O error|could not (read|write|fsync|open)|PANIC|invalid page|checksum|corrupt/i.test(line));
}

function postgresBin(): string {
  const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(a) - Number(b));
  if (versions.length === 0) throw new Error('PostgreSQL is not installed (apt-get install postgresql)');
  return `/usr/lib/postgresql/${versions.at(-1)}/bin`;
}

export function postgresql(mountpoint: string): Database {
  const bin = postgresBin();
  const data = `${mountpoint}/data`;
  const sockets = `${mountpoint}/run`;
  // Outside the device: the log must outlive a filesystem that fails.
  const logFile = `/dev/shm/${mountpoint.split('/').pop()}.postgresql.log`;
  const port = String(5500 + (process.pid % 400));
  const asPostgres = (command: string, args: readonly string[]) => must('runuser', ['-u', 'postgres', '--', `${bin}/${command}`, ...args], { timeoutMs: 180_000 });
  const client = ['-h', sockets, '-p', port, '-U', 'postgres'];
  const psql = (database: string, sql: string) => must(`${bin}/psql`, ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', ...client, '-d', database, '-c', sql]);
  let running = false;
  /** Where the log stood at the last start: check() reads what was logged since. */
  let logStart = 0;

  const db: Database = {
    name: 'postgresql',
    filesystem: 'ext4',
    preamble: '',
    async create() {
      const { uid, gid } = idsOf('postgres');
      for (const dir of [data, sockets]) {
        mkdirSync(dir, { recursive: true });
        chownSync(dir, uid, gid);
      }
      writeFileSync(logFile, '');
      chownSync(logFile, uid, gid);
      await asPostgres('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '--data-checksums', '--no-instructions']);
      appendFileSync(
        `${data}/postgresql.conf`,
        [
          `port = ${port}`,
          "listen_addresses = ''",
          `unix_socket_directories = '${sockets}'`,
          'fsync = on',
          'synchronous_commit = on',
          'full_page_writes = on',
          'shared_buffers = 32MB',
          'max_wal_size = 64MB',
          'checkpoint_timeout = 30s',
          // After a PANIC (a failed fsync) it stays down until started: the run decides when.
          'restart_after_crash = off',
          '',
        ].join('\n'),
      );
      // PostgreSQL never fsyncs its configuration: were these lines still in the page cache when
      // the run makes writes fail, their writeback would fail and the restart read zeros.
      const conf = openSync(`${data}/postgresql.conf`, 'r');
      fsyncSync(conf);
      closeSync(conf);
      await db.start();
      await psql('postgres', 'CREATE DATABASE bench');
      await must(`${bin}/pgbench`, ['-i', '-q', '-s', '5', ...client, 'bench'], { timeoutMs: 180_000 });
      await psql('bench', 'CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())');
    },
    async start() {
      logStart = existsSync(logFile) ? readFileSync(logFile).length : 0;
      await asPostgres('pg_ctl', ['-D', data, '-l', logFile, '-w', '-t', '170', 'start']).catch((error: Error) => {
        // The server's own reason is in its log, which remove() deletes: said here.
        const logged = readFileSync(logFile, 'utf8').slice(logStart).trim().split('\n').slice(-15).join('\n');
        throw new Error(`${error.message}\nPostgreSQL's log:\n${logged}`);
      });
      running = true;
    },
    async stop(how) {
      if (!running && !existsSync(`${data}/postmaster.pid`)) return;
      const stopped = await sh('runuser', ['-u', 'postgres', '--', `${bin}/pg_ctl`, '-D', data, '-m', how === 'crash' ? 'immediate' : 'fast', '-w', '-t', '60', 'stop'], { timeoutMs: 90_000 });
      // A server pg_ctl cannot stop (its data directory unreadable on a failed filesystem) is killed: nothing may outlive the run.
      if (stopped.code !== 0 && how === 'crash') await sh('pkill', ['-KILL', '-f', `postgres -D ${data}`]);
      running = false;
    },
    ledger() {
      return new Ledger(`${bin}/psql`, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', ...client, '-d', 'bench'], (n) => `INSERT INTO ledger (id) VALUES (${n});\n\\echo ok ${n}\n`);
    },
    load(seconds) {
      const pgbench = background(`${bin}/pgbench`, ['-n', '-c', '4', '-j', '2', '-T', String(seconds), ...client, 'bench']);
      return {
        async stop() {
          // It ends on its own with the run; SIGINT only if it does not.
          const timer = setTimeout(() => pgbench.stop(), 60_000);
          const result = await pgbench.done;
          clearTimeout(timer);
          const count = (label: string) => Number(new RegExp(`${label}: (\\d+)`).exec(result.stdout)?.[1] ?? NaN);
          const errors = result.stderr.split('\n').filter((line) => /error|abort|fatal/i.test(line));
          return {
            transactions: count('number of transactions actually processed'),
            problem: result.code !== 0 || errors.length ? `pgbench (${result.code}): ${errors.slice(0, 5).join(' | ')}` : undefined,
          };
        },
      };
    },
    async committedIds() {
      const ids = await psql('bench', 'SELECT id FROM ledger');
      return new Set(ids.split('\n').filter(Boolean).map(Number));
    },
    async check() {
      const problems: string[] = [];
      const amcheck = await sh(`${bin}/pg_amcheck`, [...client, '--install-missing', '--heapallindexed', '--rootdescend', 'bench'], { timeoutMs: 300_000 });
      if (amcheck.code !== 0) problems.push(`pg_amcheck (${amcheck.code}): ${amcheck.stdout}${amcheck.stderr}`);
      const logged = ioErrorLines(logFile, logStart);
      if (logged.length) problems.push(`PostgreSQL logged: ${logged.slice(0, 5).join(' | ')}`);
      return problems;
    },
    remove() {
      rmSync(logFile, { force: true });
    },
  };
  return db;
}

export function sqlite(mountpoint: string): Database {
  const file = `${mountpoint}/ledger.db`;
  const sql = (statement: string) => must('sqlite3', ['-bail', '-batch', file, statement]);
  return {
    name: 'sqlite',
    filesystem: 'xfs',
    preamble: 'PRAGMA journal_mode=WAL;\nPRAGMA synchronous=FULL;\nPRAGMA busy_timeout=60000;\n',
    async create() {
      await sql('PRAGMA journal_mode=WAL; CREATE TABLE ledger (id INTEGER PRIMARY KEY, pad BLOB NOT NULL);');
    },
    async start() {},
    async stop() {},
    ledger() {
      // 1 KiB a row (a long run fits the image), and a checkpoint every 500: the WAL and the database file both see writes.
      return new Ledger('sqlite3', ['-bail', '-batch', file], (n) =>
        `INSERT INTO ledger VALUES (${n}, randomblob(1000));\n${n % 500 === 0 ? 'PRAGMA wal_checkpoint(TRUNCATE);\n' : ''}SELECT 'ok ${n}';\n`,
      );
    },
    async committedIds() {
      return new Set((await sql('SELECT id FROM ledger;')).split('\n').filter(Boolean).map(Number));
    },
    async check() {
      const result = (await sh('sqlite3', ['-batch', file, 'PRAGMA integrity_check;'])).stdout.trim();
      return result === 'ok' ? [] : [`PRAGMA integrity_check: ${result}`];
    },
    remove() {},
  };
}

function idsOf(user: string): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${user}:`));
  if (!line) throw new Error(`no user ${user}`);
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}
