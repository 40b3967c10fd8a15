/**
 * A database client that commits one transaction at a time and records each one the database
 * acknowledged: the witness of what a database through crashes must still hold. It drives a
 * database's own command-line client (psql, sqlite3) over a pipe: a statement, then a marker
 * the client prints only after the statement's commit returned. stdbuf makes the client's
 * output line-buffered, so a marker arrives as soon as it is printed.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

export class Ledger {
  /** Transaction numbers whose commit the database acknowledged, in order. */
  readonly committed: number[] = [];
  private readonly child: ChildProcessWithoutNullStreams;
  private stderrText = '';
  private stopping = false;
  private readonly exited: Promise<number>;

  /**
   * `statement(n)` must commit transaction n and then print a line "ok n"; the client stops at
   * its first error (psql's ON_ERROR_STOP, sqlite3's -bail).
   */
  constructor(
    command: string,
    args: readonly string[],
    private readonly statement: (n: number) => string,
    options: { uid?: number; gid?: number; env?: NodeJS.ProcessEnv } = {},
  ) {
    this.child = spawn('stdbuf', ['-oL', '-eL', command, ...args], { ...options, stdio: 'pipe' });
    this.exited = new Promise((resolve) => this.child.on('close', (code) => resolve(code ?? 128)));
    this.child.stderr.on('data', (d) => (this.stderrText = (this.stderrText + d).slice(-20_000)));
    this.child.stdin.on('error', () => undefined); // the client ended: its exit says why
    let pending = '';
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (chunk: string) => {
      pending += chunk;
      for (let at = pending.indexOf('\n'); at >= 0; at = pending.indexOf('\n')) {
        const line = pending.slice(0, at).trim();
        pending = pending.slice(at + 1);
        const match = /^ok (\d+)$/.exec(line);
        if (!match) continue;
        const n = Number(match[1]);
        this.committed.push(n);
        if (this.stopping) this.child.stdin.end();
        else this.child.stdin.write(this.statement(n + 1));
      }
    });
  }

  /** Sends the first transaction; the rest follow each acknowledgement. */
  start(preamble = ''): this {
    this.child.stdin.write(`${preamble}${this.statement(1)}`);
    return this;
  }

  /** Whether the client is still committing (it stops at its first error). */
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  get stderr(): string {
    return this.stderrText;
  }

  /** Ends after the transaction in progress; resolves with the client's exit code. */
  async stop(timeoutMs = 120_000): Promise<number> {
    this.stopping = true;
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}
