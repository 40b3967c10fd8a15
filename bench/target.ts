/**
 * What a one-system measurement runs fio against (bench/ab.ts, bench/profile.ts): a device made
 * by `bdus run`, or an export by `bdus export` on a Unix socket, from the CLI at `bin` (a
 * checkout's: bench/ab.ts compares two).
 */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { execute as sh } from '../src/util/exec.js';

export interface Target {
  /** fio's arguments that point it at the device or export. */
  readonly target: string[];
  /** Destroys the device, or ends the export. */
  readonly end: () => Promise<unknown>;
}

/** `bdus run DRIVER... --frontend FRONTEND`, or with frontend `export`, `bdus export DRIVER...` on `socket`. */
export async function driverTarget(bin: string, driver: readonly string[], frontend: string, socket: string): Promise<Target> {
  if (frontend !== 'export') {
    const device = (await sh(process.execPath, [bin, 'run', ...driver, '--frontend', frontend])).trim();
    return { target: [`--filename=${device}`, '--ioengine=libaio'], end: () => sh(process.execPath, [bin, 'destroy', '--force', '--no-flush', device]) };
  }
  const child = spawn(process.execPath, [bin, 'export', ...driver, '--listen', `unix:${socket}`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const uri = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    void exited.then(() => reject(new Error('bdus export ended before it listened')));
  });
  return {
    target: ['--ioengine=nbd', `--uri=${uri}`],
    end: async () => {
      child.kill('SIGTERM');
      await exited;
      rmSync(socket, { force: true });
    },
  };
}
