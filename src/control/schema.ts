/**
 * Every control message's fields, declared once, and the one check that holds a message to
 * them before the daemon dispatches it. A field the schema does not name is ignored (a newer
 * client may send more); a field it names must have its type. Ids are canonicalised.
 */
import { BdusError } from '../driver/errors.js';
import type { Operation, Requests } from './protocol.js';
import { parseId } from './registry.js';

/**
 * id: a device id (decimal string); uint: a non-negative safe integer; uints: an array of at
 * most 64 of them; name: a non-empty string; text: any string; flag: a boolean; names: an array
 * of strings; object: a JSON object. A trailing '?' makes the field optional.
 */
type FieldType = 'id' | 'uint' | 'uints' | 'name' | 'text' | 'flag' | 'names' | 'object';
type Field = FieldType | `${FieldType}?`;

export const SCHEMA: { readonly [O in Operation]: { readonly [K in keyof Requests[O]['args']]-?: Field } } = {
  version: {},
  list: {},
  info: { id: 'id?', major: 'uint?', minor: 'uint?' } as never,
  destroy: { id: 'id', force: 'flag?' },
  wait: { id: 'id' },
  shutdown: {},
  create: { pid: 'uint', frontend: 'name', readOnly: 'flag', attributes: 'object', callbacks: 'names', command: 'names?' },
  available: { id: 'id', kernelPath: 'name', major: 'uint', minor: 'uint', kernelFd: 'uint?', modes: 'names?' },
  laneEnds: { id: 'id', fds: 'uints' },
  terminating: { id: 'id' },
  gone: { id: 'id' },
  attach: { id: 'id', pid: 'uint', kernelFd: 'uint?' },
  rerun: { id: 'id', pid: 'uint', attributes: 'object', callbacks: 'names', command: 'names?' },
  handover: { id: 'id', ok: 'flag', message: 'text' },
  resize: { id: 'id', size: 'uint' },
  resized: { id: 'id', ok: 'flag', message: 'text', size: 'uint' },
  stats: { id: 'id?' },
};

/** A message held to its schema: `args` has the fields its operation declares, with their types. */
export interface CheckedMessage {
  readonly seq: number;
  readonly op: Operation;
  readonly args: Record<string, unknown>;
}

/** Parses one message line; EPROTO if it is no message at all, EINVAL if its fields are off. */
export function checkMessage(line: string): CheckedMessage {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new BdusError('EPROTO', 'malformed message: not JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new BdusError('EPROTO', 'malformed message: not a JSON object');
  }
  const m = value as Record<string, unknown>;
  if (!Number.isSafeInteger(m.seq) || typeof m.op !== 'string') {
    throw new BdusError('EPROTO', 'malformed message: needs an integer "seq" and a string "op"');
  }
  const seq = m.seq as number;
  const op = m.op;
  if (!Object.hasOwn(SCHEMA, op)) throw Object.assign(new BdusError('EINVAL', `unknown operation ${JSON.stringify(op)}`), { seq });
  const args: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(SCHEMA[op as Operation] as Record<string, Field>)) {
    const optional = field.endsWith('?');
    const type = (optional ? field.slice(0, -1) : field) as FieldType;
    const v = m[name];
    if (v === undefined) {
      if (!optional) throw Object.assign(new BdusError('EINVAL', `${op}: "${name}" is missing`), { seq });
      continue;
    }
    try {
      args[name] = checked(type, v);
    } catch (error) {
      throw Object.assign(new BdusError('EINVAL', `${op}: "${name}" ${(error as Error).message}`), { seq });
    }
  }
  return { seq, op: op as Operation, args };
}

function checked(type: FieldType, v: unknown): unknown {
  switch (type) {
    case 'id':
      return parseId(v);
    case 'uint':
      if (!Number.isSafeInteger(v) || (v as number) < 0) throw new Error('must be a non-negative integer');
      return v;
    case 'uints':
      if (!Array.isArray(v) || v.length > 64 || !v.every((item) => Number.isSafeInteger(item) && item >= 0)) throw new Error('must be an array of at most 64 non-negative integers');
      return v;
    case 'name':
      if (typeof v !== 'string' || v === '') throw new Error('must be a non-empty string');
      return v;
    case 'text':
      if (typeof v !== 'string') throw new Error('must be a string');
      return v;
    case 'flag':
      if (typeof v !== 'boolean') throw new Error('must be true or false');
      return v;
    case 'names':
      if (!Array.isArray(v) || !v.every((item) => typeof item === 'string')) throw new Error('must be an array of strings');
      return v;
    case 'object':
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('must be an object');
      return v;
  }
}

/** A checked message's arguments, typed by its operation. */
export function argsOf<O extends Operation>(m: CheckedMessage, _op: O): Requests[O]['args'] {
  return m.args as Requests[O]['args'];
}
