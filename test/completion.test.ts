// This test ensures that shell completion works in real bash, zsh and fish: commands, flags,
// flag values, device paths and example drivers, all from the one `bdus __complete`.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { BIN, device, must, scratch } from './helpers.js';

/** A PATH whose `bdus` is this build's CLI. */
function pathWithBdus(t: { after(fn: () => void): void }): string {
  const dir = scratch('completion-bin');
  mkdirSync(dir);
  writeFileSync(`${dir}/bdus`, `#!/bin/sh\nexec "${process.execPath}" "${BIN}" "$@"\n`, { mode: 0o755 });
  symlinkSync(process.execPath, `${dir}/node`);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return `${dir}:${process.env.PATH}`;
}

async function script(shell: string): Promise<string> {
  const file = `${scratch(`completion`)}.${shell}`;
  writeFileSync(file, await must(process.execPath, [BIN, 'completion', shell]));
  return file;
}

function bash(file: string, path: string, line: string[]): Promise<string> {
  const words = line.map((w) => `'${w}'`).join(' ');
  return must('bash', ['-c', `source ${file}; COMP_WORDS=(${words}); COMP_CWORD=${line.length - 1}; _bdus; printf '%s\\n' "\${COMPREPLY[@]}"`], {
    env: { ...process.env, PATH: path },
  });
}

function zsh(file: string, path: string, line: string[]): Promise<string> {
  // Outside an interactive completion, compadd and _files are stand-ins that print what they get.
  const fake = 'compadd() { if [[ $1 == -a ]]; then print -l -- ${(P@)2}; else print -l -- "$@"; fi }; _files() { print -l -- ${words[CURRENT]}*(N) }; compdef() { : }';
  const words = line.map((w) => `'${w}'`).join(' ');
  return must('zsh', ['-c', `${fake}; source ${file}; words=(${words}); CURRENT=${line.length}; _bdus`], { env: { ...process.env, PATH: path } });
}

function fish(file: string, path: string, line: string): Promise<string> {
  return must('fish', ['-c', `source ${file}; complete -C '${line}'`], { env: { ...process.env, PATH: path } });
}

test('bash, zsh and fish complete commands, flags, values, devices and drivers', async (t) => {
  const path = pathWithBdus(t);
  const dev = await device(t, ['ram', '--size', '16M']);
  const files = await Promise.all(['bash', 'zsh', 'fish'].map(script));
  t.after(() => files.forEach((f) => rmSync(f, { force: true })));
  const [bashFile, zshFile, fishFile] = files as [string, string, string];

  const lines = (text: string) => text.split('\n').map((l) => l.split('\t')[0]!).filter(Boolean).sort();
  const cases: Array<[string[], string[]]> = [
    [['bdus', 'rer'], ['rerun']],
    [['bdus', 'run', 'ra'], ['ram']],
    [['bdus', 'run', 'ram', '--front'], ['--frontend']],
    [['bdus', 'run', 'ram', '--frontend', 'n'], ['nbd']],
    [['bdus', 'run', 'ram', '--recovery-mode', 'fail-'], ['fail-all', 'fail-received']],
    [['bdus', 'destroy', '--fo'], ['--force']],
    [['bdus', 'destroy', '/dev/bdus-'], [dev]],
    [['bdus', 'daemon', 'st'], ['start', 'status', 'stop']],
  ];
  for (const [line, expected] of cases) {
    assert.deepEqual(lines(await bash(bashFile, path, line)), expected, `bash: ${line.join(' ')}`);
    assert.deepEqual(lines(await zsh(zshFile, path, line)), expected, `zsh: ${line.join(' ')}`);
    assert.deepEqual(lines(await fish(fishFile, path, line.join(' '))), expected, `fish: ${line.join(' ')}`);
  }
  // A driver module path completes as a file name.
  const dir = scratch('drivers');
  mkdirSync(dir);
  writeFileSync(`${dir}/mydriver.js`, '');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  assert.deepEqual(lines(await bash(bashFile, path, ['bdus', 'run', `${dir}/my`])), [`${dir}/mydriver.js`]);
  assert.deepEqual(lines(await fish(fishFile, path, `bdus run ${dir}/my`)), [`${dir}/mydriver.js`]);
  assert.deepEqual(lines(await zsh(zshFile, path, ['bdus', 'run', `${dir}/my`])), [`${dir}/mydriver.js`]);
});
