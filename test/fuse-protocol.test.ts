// This test ensures that our FUSE struct layouts match include/uapi/linux/fuse.h.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as P from '../src/frontend/fuse/protocol.js';

test('struct sizes match the kernel header', () => {
  assert.equal(P.InHeader.SIZE, 40);
  assert.equal(P.OutHeader.SIZE, 16);
  assert.equal(P.InitIn.SIZE, 64);
  assert.equal(P.InitOut.SIZE, 64);
  assert.equal(P.Attr.SIZE, 88);
  assert.equal(P.AttrOut.SIZE, 104);
  assert.equal(P.OpenOut.SIZE, 16);
  assert.equal(P.ReadIn.SIZE, 40);
  assert.equal(P.WriteIn.SIZE, 40);
  assert.equal(P.WriteOut.SIZE, 8);
  assert.equal(P.FsyncIn.SIZE, 16);
  assert.equal(P.FallocateIn.SIZE, 32);
  assert.equal(P.StatfsOut.SIZE, 80);
});

test('the reply header reuses the request header\'s unique in place', () => {
  // Replies are built in the request's buffer: `unique` must sit at the same offset in both.
  assert.equal(P.InHeader.unique, P.OutHeader.unique);
});

test('opcode names come from the opcode table', () => {
  assert.equal(P.opcodeName(P.Opcode.FALLOCATE), 'FALLOCATE');
  assert.equal(P.opcodeName(999), 'OPCODE_999');
});
