/**
 * docs/tutorial.md, as a reader would follow it: its code blocks, compiled with TypeScript
 * against this package in a project of their own; the first driver fails `bdus check` the way
 * the tutorial says, the write-through one passes, and the unit test with bdus/testing passes.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { BIN, ROOT, image, must, scratch, sh } from './helpers.js';

/** The tutorial's TypeScript blocks, in order: the first driver, the write-through callbacks, the attributes, the test. */
function blocks(): string[] {
  const text = readFileSync(`${ROOT}docs/tutorial.md`, 'utf8');
  return [...text.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

function writeThrough(first: string, callbacks: string, attributes: string): string {
  const start = first.indexOf('    async initialize(ctx)');
  const end = first.indexOf('  };\n}');
  return (first.slice(0, start) + callbacks + first.slice(end))
    .replace(/ {2}pending: Map<number, Buffer>;.*\n/, '')
    .replace(/ {4}attributes: .*\n/, `${attributes}`);
}

interface Report {
  recoverable: boolean;
  properties: Array<{ property: string; verdict: string }>;
}

test('docs/tutorial.md: its drivers compile, bdus check judges them as the tutorial says, its unit test passes', async (t) => {
  const [first, callbacks, attributes, unitTest] = blocks();
  assert.ok(first && callbacks && attributes && unitTest, 'the tutorial has its four TypeScript blocks');
  const project = scratch('tutorial');
  t.after(() => rmSync(project, { recursive: true, force: true }));
  mkdirSync(`${project}/src`, { recursive: true });
  mkdirSync(`${project}/node_modules`);
  symlinkSync(ROOT.replace(/\/$/, ''), `${project}/node_modules/bdus`);
  writeFileSync(`${project}/package.json`, JSON.stringify({ type: 'module' }));
  writeFileSync(
    `${project}/tsconfig.json`,
    JSON.stringify({ compilerOptions: { module: 'nodenext', target: 'es2022', strict: true, outDir: 'dist', rootDir: 'src', skipLibCheck: true } }),
  );
  const tsc = (file: string) => sh(process.execPath, [`${ROOT}node_modules/typescript/bin/tsc`, '-p', '.'], { cwd: project, timeoutMs: 120_000 }).then((r) => {
    assert.equal(r.code, 0, `${file}: ${r.stdout}${r.stderr}`);
  });
  const check = async (img: string): Promise<Report> => {
    const r = await sh(process.execPath, [BIN, 'check', '--seconds', '10', '--json', '-q', `${project}/dist/disk.js`, img], { timeoutMs: 180_000 });
    return JSON.parse(r.stdout) as Report;
  };
  const verdict = (report: Report, property: string) => report.properties.find((p) => p.property === property)?.verdict;

  writeFileSync(`${project}/src/disk.ts`, first);
  await tsc('the first driver');
  const before = await check(image(t, 256 << 20));
  assert.equal(before.recoverable, false);
  assert.equal(verdict(before, 'acknowledged-writes'), 'fail', 'its pending writes die with it');
  assert.equal(verdict(before, 'never-written'), 'pass');

  writeFileSync(`${project}/src/disk.ts`, writeThrough(first, callbacks, attributes));
  await tsc('the write-through driver, recoverable');
  const after = await check(image(t, 256 << 20));
  assert.deepEqual(after.properties.filter((p) => p.verdict !== 'pass'), [], 'every property passes');
  assert.equal(after.recoverable, true);

  writeFileSync(`${project}/src/disk.test.ts`, unitTest);
  await tsc('the unit test');
  await must(process.execPath, ['--test', 'dist/'], { cwd: project });
});
