/**
 * The NBD wire format (NetworkBlockDevice/nbd, doc/proto.md), as far as a server of one export
 * needs it: the fixed newstyle handshake, options and their replies, requests, simple and
 * structured replies. Every integer is big-endian (network byte order).
 */
import { constants } from 'node:os';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags. */
export const HandshakeFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
export const ClientFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;

export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

const ERR = 0x8000_0000;
export const Reply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: ERR + 1,
  ERR_POLICY: ERR + 2,
  ERR_INVALID: ERR + 3,
  ERR_PLATFORM: ERR + 4,
  ERR_TLS_REQD: ERR + 5,
  ERR_UNKNOWN: ERR + 6,
  ERR_SHUTDOWN: ERR + 7,
  ERR_BLOCK_SIZE_REQD: ERR + 8,
  ERR_TOO_BIG: ERR + 9,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags. */
export const Flag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

/** base:allocation extent flags. */
export const State = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;
export const CommandFlag = { FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3, FAST_ZERO: 1 << 4 } as const;

/** The flags each command may carry (as nbdkit checks them); any other flag is refused with EINVAL. */
export const COMMAND_FLAGS: Readonly<Record<number, number>> = {
  [Command.READ]: CommandFlag.DF,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.FLUSH]: 0,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.CACHE]: 0,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO,
  [Command.BLOCK_STATUS]: CommandFlag.REQ_ONE,
};

export const ReplyFlag = { DONE: 1 << 0 } as const;
export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: (1 << 15) + 1,
  ERROR_OFFSET: (1 << 15) + 2,
} as const;

/** base:allocation status bits. */
export const Allocation = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;
export const BASE_ALLOCATION = 'base:allocation';
/** The id this server gives its one metadata context, base:allocation. */
export const BASE_ALLOCATION_ID = 1;

/** Request header: magic u32, flags u16, type u16, cookie u64, offset u64, length u32. */
export const RequestHeader = { magic: 0, flags: 4, type: 6, cookie: 8, offset: 16, length: 24, SIZE: 28 } as const;
/** Simple reply: magic u32, error u32, cookie u64. */
export const SimpleReply = { magic: 0, error: 4, cookie: 8, SIZE: 16 } as const;
/** Structured reply chunk header: magic u32, flags u16, type u16, cookie u64, length u32. */
export const ChunkHeader = { magic: 0, flags: 4, type: 6, cookie: 8, length: 16, SIZE: 20 } as const;
/** Option header (client): magic u64, option u32, length u32. */
export const OptionHeader = { magic: 0, option: 8, length: 12, SIZE: 16 } as const;
/** Option reply header: magic u64, option u32, reply type u32, length u32. */
export const OptionReplyHeader = { magic: 0, option: 8, type: 12, length: 16, SIZE: 20 } as const;
/** The server's greeting: NBDMAGIC u64, IHAVEOPT u64, handshake flags u16. */
export const Greeting = { magic: 0, ihaveopt: 8, flags: 16, SIZE: 18 } as const;

/** NBD's error numbers (fixed by the protocol, not the host's errno values). */
export const NbdError = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

const { EPERM, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, EOPNOTSUPP, ENOTSUP, EROFS } = constants.errno;

/** The NBD error for a host errno from the request layer; what NBD cannot say becomes EIO. */
export function nbdError(errno: number): number {
  switch (errno) {
    case 0:
      return 0;
    case EPERM:
    case EROFS:
      return NbdError.EPERM;
    case ENOMEM:
      return NbdError.ENOMEM;
    case EINVAL:
      return NbdError.EINVAL;
    case ENOSPC:
      return NbdError.ENOSPC;
    case EOVERFLOW:
      return NbdError.EOVERFLOW;
    case EOPNOTSUPP:
    case ENOTSUP:
      return NbdError.ENOTSUP;
    default:
      return NbdError.EIO;
  }
}
