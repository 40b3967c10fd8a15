/** Running the system tools bdus relies on for set-up and tear-down (never on the request path). */
import { spawn, type StdioOptions } from 'node:child_process';

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(`${command} failed${exitCode === null ? '' : ` (exit ${exitCode})`}${stderr ? `: ${stderr.trim()}` : ''}`);
    this.name = 'CommandError';
  }
}

/** Runs `file args`; resolves with its stdout, rejects with a CommandError carrying stderr. */
export function execute(file: string, args: readonly string[], options: { stdio?: StdioOptions; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: options.stdio ?? ['ignore', 'pipe', 'pipe'], ...(options.env ? { env: options.env } : {}) });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (error) => reject(new CommandError(`${file} ${args.join(' ')}`, null, error.message)));
    child.on('close', (code) => {
      if (code === 0) resolve(stdout);
      else reject(new CommandError(`${file} ${args.join(' ')}`, code, stderr));
    });
  });
}
