// This test ensures that src/ has no import cycle (type-only imports included) and no module a
// reader cannot hold in one sitting: dpdm walks every module reachable from the package's
// entry points and the CLI.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ROOT, sh } from './helpers.js';

test('no import cycle in src/', async () => {
  const r = await sh(`${ROOT}node_modules/.bin/dpdm`, ['--no-warning', '--no-tree', '--exit-code', 'circular:1', 'src/index.ts', 'src/cli/bin.ts'], {
    cwd: ROOT,
  });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /no circular dependency/);
});

test('source files report their size (the ones over 400 lines are listed)', (t) => {
  const long: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (path.endsWith('.ts') && readFileSync(path, 'utf8').split('\n').length > 400) long.push(path.slice(ROOT.length));
    }
  };
  walk(`${ROOT}src`);
  t.diagnostic(long.length ? `over 400 lines: ${long.join(', ')}` : 'every module is 400 lines or fewer');
});
