/**
 * Encoders and decoders for the NBD structs whose layouts protocol.ts defines: every struct is
 * written or read here and nowhere else, and test/nbd-codec.test.ts pins them with fixture
 * buffers. Names for log lines come from the constant tables.
 */
import {
  ChunkHeader,
  Command,
  Info,
  OPTION_REPLY_MAGIC,
  Option,
  OptionReplyHeader,
  Reply,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_MAGIC,
  SimpleReply,
  STRUCTURED_REPLY_MAGIC,
} from './protocol.js';

/** A request's cookie, echoed in its reply: two 32-bit halves (no BigInt per request). */
export type Cookie = { readonly high: number; readonly low: number };

export function writeCookie(buffer: Buffer, cookie: Cookie, at: number): void {
  buffer.writeUInt32BE(cookie.high, at);
  buffer.writeUInt32BE(cookie.low, at + 4);
}

/** A simple reply: magic, error, cookie. Every byte is written: from Node's pool, not zeroed memory. */
export function simpleReply(cookie: Cookie, error: number): Buffer {
  const reply = Buffer.allocUnsafe(SimpleReply.SIZE);
  writeSimpleReply(reply, 0, cookie, error);
  return reply;
}

/** A simple reply at `at` in `buffer` (a read's reply header, or one of a turn's replies side by side). */
export function writeSimpleReply(buffer: Buffer, at: number, cookie: Cookie, error: number): void {
  buffer.writeUInt32BE(SIMPLE_REPLY_MAGIC, at + SimpleReply.magic);
  buffer.writeUInt32BE(error, at + SimpleReply.error);
  writeCookie(buffer, cookie, at + SimpleReply.cookie);
}

export function writeChunkHeader(buffer: Buffer, cookie: Cookie, flags: number, type: number, length: number): void {
  buffer.writeUInt32BE(STRUCTURED_REPLY_MAGIC, ChunkHeader.magic);
  buffer.writeUInt16BE(flags, ChunkHeader.flags);
  buffer.writeUInt16BE(type, ChunkHeader.type);
  writeCookie(buffer, cookie, ChunkHeader.cookie);
  buffer.writeUInt32BE(length, ChunkHeader.length);
}

/** A structured error chunk: error u32, message length u16 (0: no message). */
export function errorChunk(cookie: Cookie, error: number): Buffer {
  const reply = Buffer.allocUnsafe(ChunkHeader.SIZE + 6);
  writeChunkHeader(reply, cookie, ReplyFlag.DONE, ReplyType.ERROR, 6);
  reply.writeUInt32BE(error, ChunkHeader.SIZE);
  reply.writeUInt16BE(0, ChunkHeader.SIZE + 4);
  return reply;
}

/** An option reply: magic u64, option u32, reply type u32, length u32, then the payload. */
export function optionReply(option: number, type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const reply = Buffer.alloc(OptionReplyHeader.SIZE + payload.length);
  reply.writeBigUInt64BE(OPTION_REPLY_MAGIC, OptionReplyHeader.magic);
  reply.writeUInt32BE(option, OptionReplyHeader.option);
  reply.writeUInt32BE(type >>> 0, OptionReplyHeader.type);
  reply.writeUInt32BE(payload.length, OptionReplyHeader.length);
  payload.copy(reply, OptionReplyHeader.SIZE);
  return reply;
}

/** NBD_INFO_EXPORT: type u16, size u64, transmission flags u16. */
export function exportInfo(size: number, flags: number): Buffer {
  const info = Buffer.alloc(12);
  info.writeUInt16BE(Info.EXPORT, 0);
  info.writeBigUInt64BE(BigInt(size), 2);
  info.writeUInt16BE(flags, 10);
  return info;
}

/** NBD_INFO_BLOCK_SIZE: type u16, minimum, preferred, maximum u32. */
export function blockSizeInfo(minimum: number, preferred: number, maximum: number): Buffer {
  const info = Buffer.alloc(14);
  info.writeUInt16BE(Info.BLOCK_SIZE, 0);
  info.writeUInt32BE(minimum, 2);
  info.writeUInt32BE(preferred, 6);
  info.writeUInt32BE(maximum, 10);
  return info;
}

/** NBD_INFO_NAME or _DESCRIPTION: type u16, then the text. */
export function infoString(type: number, text: string): Buffer {
  const bytes = Buffer.from(text);
  const info = Buffer.alloc(2 + bytes.length);
  info.writeUInt16BE(type, 0);
  bytes.copy(info, 2);
  return info;
}

/** The answer to EXPORT_NAME: size u64, flags u16, and 124 zero bytes unless NO_ZEROES. */
export function exportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const reply = Buffer.alloc(noZeroes ? 10 : 134);
  reply.writeBigUInt64BE(BigInt(size), 0);
  reply.writeUInt16BE(flags, 8);
  return reply;
}

/** A u32, then text: a server in a LIST reply (the name's length, the name), a metadata context (its id, its name). */
function u32AndText(value: number | undefined, text: string): Buffer {
  const bytes = Buffer.from(text);
  const reply = Buffer.alloc(4 + bytes.length);
  reply.writeUInt32BE(value ?? bytes.length, 0);
  bytes.copy(reply, 4);
  return reply;
}

export const serverReply = (name: string): Buffer => u32AndText(undefined, name);
export const metaContextReply = (id: number, name: string): Buffer => u32AndText(id, name);

/** INFO/GO data: u32 name length, name, u16 count, count x u16 info types. */
export function parseInfoRequest(data: Buffer): { name: string; requests: number[] } | undefined {
  if (data.length < 6) return undefined;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) return undefined;
  const name = data.toString('utf8', 4, 4 + nameLength);
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 6 + nameLength + 2 * count) return undefined;
  const requests = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(6 + nameLength + 2 * i));
  return { name, requests };
}

/** LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, count x (u32 length, query). */
export function parseMetaContextRequest(data: Buffer): { name: string; queries: string[] } | undefined {
  if (data.length < 8) return undefined;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) return undefined;
  const name = data.toString('utf8', 4, 4 + nameLength);
  let at = 4 + nameLength;
  const count = data.readUInt32BE(at);
  at += 4;
  const queries = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return undefined;
    const length = data.readUInt32BE(at);
    if (length > data.length - at - 4) return undefined;
    queries.push(data.toString('utf8', at + 4, at + 4 + length));
    at += 4 + length;
  }
  return at === data.length ? { name, queries } : undefined;
}

function namer(table: Readonly<Record<string, number>>, prefix: string): (value: number) => string {
  const names = new Map(Object.entries(table).map(([name, value]) => [value, `${prefix}${name}`]));
  return (value) => names.get(value) ?? `${prefix}${value}`;
}

/** "NBD_OPT_GO", "NBD_CMD_WRITE", "NBD_REP_ERR_UNSUP" for log lines. */
export const optionName = namer(Option, 'NBD_OPT_');
export const commandName = namer(Command, 'NBD_CMD_');
export const replyName = namer(Reply, 'NBD_REP_');
