// This test ensures that a device can grow and shrink while it runs on FUSE+loop: clients see
// the new size at once, a mounted filesystem on it grows with its data intact, the daemon's
// record follows (what a rerun must fit), and a driver without a resize callback, an invalid
// size or a refusal keep the size, with a clear error.
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { test } from 'node:test';
import { resizeDevice } from '../src/index.js';
import { bdus, device, DRIVERS, image, info, mounted, must, sh } from './helpers.js';

const MiB = 1 << 20;

async function size(dev: string): Promise<number> {
  return Number((await must('blockdev', ['--getsize64', dev])).trim());
}

async function fsSize(mnt: string): Promise<number> {
  return Number((await must('df', ['--output=size', '-B1', mnt])).split('\n')[1]);
}

// ext4 grows online only with CAP_SYS_RESOURCE, which this sandbox withholds (resize2fs:
// "Permission denied"): a mounted XFS grows here, ext4 offline; the VM's kernel NBD test grows
// a mounted ext4.
test('bdus resize grows a device under a mounted XFS, which xfs_growfs then grows, data intact', async (t) => {
  const dev = await device(t, ['ram', '--size', '320M']);
  await must('mkfs.xfs', ['-q', dev]);
  const mnt = await mounted(t, dev);
  await must('sh', ['-c', `head -c 8M /dev/urandom > ${mnt}/data && sha256sum ${mnt}/data > ${mnt}.sum`]);
  t.after(() => sh('rm', ['-f', `${mnt}.sum`]));
  const before = await fsSize(mnt);

  const grown = await bdus(['resize', dev, '640M']);
  assert.equal(grown.code, 0, grown.stderr);
  assert.equal(grown.stdout, `${dev}: ${640 * MiB} bytes (640 MiB)\n`);
  assert.equal(await size(dev), 640 * MiB, 'clients see the new size');
  assert.equal(await info(dev, 'size'), String(640 * MiB), 'so does the registry');
  await must('xfs_growfs', [mnt]);
  const after = await fsSize(mnt);
  assert.ok(after > before * 1.8, `the mounted filesystem grew (${before} -> ${after})`);
  await must('sha256sum', ['-c', `${mnt}.sum`]);
  await must('umount', [mnt]);
  await must('xfs_repair', ['-n', dev]);
});

test('ext4 grows offline with resize2fs; shrinking and growing again read zeros past the old end', async (t) => {
  const dev = await device(t, ['ram', '--size', '64M']);
  await must('mkfs.ext4', ['-q', dev]);
  assert.equal((await bdus(['resize', dev, '256M'])).code, 0);
  await must('resize2fs', [dev]);
  await must('e2fsck', ['-fn', dev]);
  const mnt = await mounted(t, dev);
  assert.ok((await fsSize(mnt)) > 200 * MiB);
  await must('umount', [mnt]);

  // Shrinking below the filesystem is the user's call; the device does it (API this time).
  const shrunk = await resizeDevice(dev, 32 * MiB);
  assert.equal(shrunk.attributes.size, 32 * MiB);
  assert.equal(await size(dev), 32 * MiB);
  assert.equal((await bdus(['resize', dev, '64M'])).code, 0);
  assert.equal((await sh('cmp', ['-n', String(32 * MiB), '-i', `${32 * MiB}:0`, dev, '/dev/zero'])).code, 0, 'grown space reads as zeros');
});

test('the loop example resizes its file; a rerun must then fit the new size', async (t) => {
  const img = image(t, 16 * MiB);
  const dev = await device(t, ['loop', img]);
  assert.equal((await bdus(['resize', dev, '48M'])).code, 0);
  assert.equal(statSync(img).size, 48 * MiB, 'the file grew');
  assert.equal(await size(dev), 48 * MiB);
  const rerun = await bdus(['rerun', dev, 'loop', img], { timeoutMs: 60_000 });
  assert.equal(rerun.code, 0, rerun.stderr);
});

test('resize refusals keep the size and say why', async (t) => {
  const dev = await device(t, [`${DRIVERS}/options.js`, '--size', '16M']);
  const none = await bdus(['resize', dev, '32M']);
  assert.equal(none.code, 1);
  assert.match(none.stderr, new RegExp(`^bdus: error: ${dev} keeps its size \\(16777216 bytes\\): its driver has no resize callback, so its size cannot change$`, 'm'));
  const ram = await device(t, ['ram', '--size', '16M', '--logical-block-size', '4096']);
  const odd = await bdus(['resize', ram, '1001K']);
  assert.equal(odd.code, 1);
  assert.match(odd.stderr, /keeps its size \(16777216 bytes\): invalid size 1025024: must be a positive multiple of the physical block size \(4096\)/);
  const bad = await bdus(['resize', ram, 'huge']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /invalid size 'huge'/);
  for (const dev2 of [dev, ram]) assert.equal(await size(dev2), 16 * MiB);
});
