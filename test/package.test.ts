// This test ensures that the package works as a user gets it: `npm pack` holds the docs, LICENSE,
// README, types and prebuilt addons for Linux x64 and arm64; installed into a fresh project on a
// PATH with no compiler it loads its prebuild (nothing compiled); a TypeScript driver and its
// test (bdus/testing) compile against its types with TypeScript 5 and 7 and no "types" in the
// project's tsconfig; the test passes; and the installed CLI runs that driver as a real device.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { test } from 'node:test';
import { must, ROOT, scratch, sh } from './helpers.js';

const DRIVER = `import type { Driver, DriverFactory, DriverOptions } from 'bdus';

export const options = { fill: { type: 'string', description: 'the byte every block starts as' } } satisfies DriverOptions;

const make: DriverFactory<Buffer> = (_args, values) => {
  const fill = Number(values.fill ?? 0);
  const driver: Driver<Buffer> = {
    attributes: { size: 16 << 20 },
    initialize(ctx) {
      ctx.state = Buffer.alloc(ctx.attributes.size, fill);
    },
    read(buffer, offset, ctx) {
      ctx.state.copy(buffer, 0, offset, offset + buffer.length);
    },
    write(data, offset, ctx) {
      data.copy(ctx.state, offset);
    },
  };
  return driver;
};
export default make;
`;

// A user's own test of the driver, without a kernel device (docs/testing-drivers.md).
const DRIVER_TEST = `import { test } from 'node:test';
import { checkDriver, testDriver } from 'bdus/testing';
import make from './driver.js';

test('the driver passes the standard checks', async () => {
  const d = await testDriver(await make([], { fill: '7' }));
  await checkDriver(d);
  await d.close();
});
`;

test('npm pack, install into a fresh project without a compiler, compile a TypeScript driver with TS 5 and 7, run it', { timeout: 600_000 }, async (t) => {
  const dir = scratch('package');
  const project = `${dir}/project`;
  const bin = `${dir}/bin`;
  mkdirSync(project, { recursive: true });
  mkdirSync(bin);
  t.after(() => rmSync(dir, { recursive: true, force: true }));

  const packed = await sh('npm', ['pack', '--pack-destination', dir], { timeoutMs: 300_000, cwd: ROOT });
  assert.equal(packed.code, 0, packed.stderr);
  const tarball = `${dir}/${packed.stdout.trim().split('\n').pop()!}`;
  const files = (await must('tar', ['tzf', tarball])).split('\n');
  for (const file of ['LICENSE', 'README.md', 'docs/driver-api.md', 'docs/attributes.md', 'dist/src/index.d.ts', 'prebuilds/linux-x64/node.napi.node', 'prebuilds/linux-arm64/node.napi.node']) {
    assert.ok(files.includes(`package/${file}`), `the package holds ${file}`);
  }
  assert.match(await must('sh', ['-c', `tar xzOf ${tarball} package/prebuilds/linux-arm64/node.napi.node | file -`]), /ARM aarch64/);

  // Only node, npm and sh (npm runs scripts with it) on the PATH: no gcc, make or python for node-gyp.
  symlinkSync(process.execPath, `${bin}/node`);
  symlinkSync('/bin/sh', `${bin}/sh`);
  symlinkSync((await must('sh', ['-c', 'readlink -f "$(command -v npm)"'])).trim(), `${bin}/npm`);
  const env = { ...process.env, PATH: bin };
  assert.notEqual((await sh('sh', ['-c', 'command -v gcc'], { env })).code, 0, 'no compiler on this PATH');
  writeFileSync(`${project}/package.json`, JSON.stringify({ name: 'my-driver', private: true, type: 'module' }));
  const install = await sh('npm', ['install', '--no-audit', '--no-fund', tarball, 'ts5@npm:typescript@5', 'ts7@npm:typescript@7'], {
    timeoutMs: 300_000,
    env,
    cwd: project,
  });
  assert.equal(install.code, 0, install.stderr);
  assert.equal(existsSync(`${project}/node_modules/bdus/build`), false, 'nothing was compiled: the prebuild serves');

  writeFileSync(`${project}/driver.ts`, DRIVER);
  writeFileSync(`${project}/driver.test.ts`, DRIVER_TEST);
  // No "types": TypeScript 7 includes no @types by default; the package's own types must do.
  writeFileSync(
    `${project}/tsconfig.json`,
    JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, outDir: 'out' }, files: ['driver.ts', 'driver.test.ts'] }),
  );
  for (const compiler of ['ts5', 'ts7']) {
    const tsc = await sh(`${project}/node_modules/${compiler}/bin/tsc`, ['-p', '.'], { env, cwd: project, timeoutMs: 120_000 });
    assert.equal(tsc.code, 0, `${compiler}: ${tsc.stdout}${tsc.stderr}`);
  }

  const unit = await sh(process.execPath, ['--test', 'out/driver.test.js'], { env, cwd: project, timeoutMs: 60_000 });
  assert.equal(unit.code, 0, `bdus/testing in the user's project: ${unit.stdout}${unit.stderr}`);

  // Running needs the system's tools (mount, losetup): the whole PATH again.
  const cli = `${project}/node_modules/.bin/bdus`;
  const run = await sh(cli, ['run', './out/driver.js', '--fill', '7'], { cwd: project, timeoutMs: 60_000 });
  assert.equal(run.code, 0, run.stderr);
  const dev = run.stdout.trim();
  t.after(() => sh(cli, ['destroy', '--force', dev]));
  const bytes = await must('sh', ['-c', `dd if=${dev} bs=4096 count=1 iflag=direct status=none | od -An -tu1 -N4`]);
  assert.deepEqual(bytes.trim().split(/\s+/), ['7', '7', '7', '7']);
  const info = await must(cli, ['info', dev, '--driver']);
  assert.match(info, /node_modules|out\/driver\.js --fill 7/);
  assert.equal((await sh(cli, ['destroy', dev])).code, 0);
});
