// This test ensures that every NBD struct has the size and bytes the protocol (doc/proto.md)
// gives it, that names for log lines come from the constant tables, that malformed option data
// is refused, and that messages split across socket chunks (or several in one chunk) come out
// whole, in order, for the NBD input and for the control protocol's line reader.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  blockSizeInfo,
  commandName,
  errorChunk,
  exportInfo,
  exportNameReply,
  optionName,
  optionReply,
  parseInfoRequest,
  parseMetaContextRequest,
  replyName,
  simpleReply,
} from '../src/nbd/codec.js';
import { MessageInput } from '../src/nbd/input.js';
import { ChunkHeader, Greeting, OptionHeader, OptionReplyHeader, Reply, RequestHeader, SimpleReply } from '../src/nbd/protocol.js';
import { LineReader, MAX_MESSAGE } from '../src/control/protocol.js';

const hex = (text: string) => Buffer.from(text.replace(/\s+/g, ''), 'hex');
const cookie = { high: 0x01020304, low: 0x05060708 };

test('struct sizes are the protocol\'s', () => {
  assert.equal(RequestHeader.SIZE, 28);
  assert.equal(SimpleReply.SIZE, 16);
  assert.equal(ChunkHeader.SIZE, 20);
  assert.equal(OptionHeader.SIZE, 16);
  assert.equal(OptionReplyHeader.SIZE, 20);
  assert.equal(Greeting.SIZE, 18);
});

test('replies encode to the protocol\'s bytes', () => {
  assert.deepEqual(simpleReply(cookie, 22), hex('67446698 00000016 0102030405060708'));
  assert.deepEqual(errorChunk(cookie, 5), hex('668e33ef 0001 8001 0102030405060708 00000006 00000005 0000'));
  assert.deepEqual(optionReply(7, Reply.ACK), hex('0003e889045565a9 00000007 00000001 00000000'));
  assert.deepEqual(optionReply(7, Reply.ERR_UNSUP, Buffer.from('no')), hex('0003e889045565a9 00000007 80000001 00000002 6e6f'));
  assert.deepEqual(exportInfo(1 << 20, 0x0103), hex('0000 0000000000100000 0103'));
  assert.deepEqual(blockSizeInfo(512, 4096, 32 << 20), hex('0003 00000200 00001000 02000000'));
  assert.equal(exportNameReply(4096, 1, true).length, 10);
  assert.equal(exportNameReply(4096, 1, false).length, 134);
});

test('option data: well-formed parses, malformed is refused', () => {
  assert.deepEqual(parseInfoRequest(hex('00000003 616263 0002 0001 0003')), { name: 'abc', requests: [1, 3] });
  assert.equal(parseInfoRequest(hex('00000009 616263 0000')), undefined, 'name longer than the data');
  assert.equal(parseInfoRequest(hex('00000000 0002 0001')), undefined, 'fewer info requests than counted');
  const meta = Buffer.concat([hex('00000000 00000001 0000000f'), Buffer.from('base:allocation')]);
  assert.deepEqual(parseMetaContextRequest(meta), { name: '', queries: ['base:allocation'] });
  assert.equal(parseMetaContextRequest(hex('00000000 00000002 00000001 61')), undefined, 'a query missing');
});

test('names for log lines come from the tables', () => {
  assert.equal(optionName(7), 'NBD_OPT_GO');
  assert.equal(commandName(1), 'NBD_CMD_WRITE');
  assert.equal(replyName(Reply.ERR_TLS_REQD), 'NBD_REP_ERR_TLS_REQD');
  assert.equal(optionName(99), 'NBD_OPT_99');
});

test('NBD input: messages split across chunks, and several in one chunk, come out whole and in order', () => {
  const input = new MessageInput();
  const got: string[] = [];
  const header = (n: number) => Buffer.alloc(RequestHeader.SIZE, n);
  const next = () => input.expect(RequestHeader.SIZE, (data) => {
    got.push(`${data.length}:${data[0]}`);
    next();
  });
  next();
  const stream = Buffer.concat([header(1), header(2), header(3)]);
  for (const cut of [[0, 5], [5, 30], [30, 31], [31, 84]]) input.push(stream.subarray(cut[0], cut[1]));
  assert.deepEqual(got, ['28:1', '28:2', '28:3']);
  // A large payload split in three is gathered into one pooled buffer.
  const payload = Buffer.alloc(256 << 10, 7);
  const delivered: Buffer[] = [];
  input.expect(payload.length, (data) => delivered.push(data));
  input.push(payload.subarray(0, 1000));
  input.push(payload.subarray(1000, 200_000));
  assert.equal(delivered.length, 0, 'not before it is complete');
  input.push(payload.subarray(200_000));
  assert.ok(delivered[0]?.equals(payload));
  assert.ok(input.gathered, 'gathered into a pooled buffer');
});

test('control line reader: lines split across chunks and several per chunk; an oversized line is refused once', () => {
  const lines: string[] = [];
  let overflows = 0;
  const reader = new LineReader((line) => lines.push(line), () => overflows++);
  reader.push('{"seq":1');
  reader.push(',"op":"list"}\n{"seq":2,"op":"version"}\n{"se');
  reader.push('q":3,"op":"list"}\n\n');
  assert.deepEqual(lines, ['{"seq":1,"op":"list"}', '{"seq":2,"op":"version"}', '{"seq":3,"op":"list"}']);
  reader.push('x'.repeat(MAX_MESSAGE + 1));
  reader.push('\n{"seq":4}\n');
  assert.equal(overflows, 1);
  assert.equal(lines.length, 3, 'nothing more after an overflow');
});
