/**
 * What an export lets clients do before they have proven anything, and how much of the server
 * one client may hold: who may connect (an allow-list of addresses), how many at once, how long a
 * client may take over its handshake, and how many bytes one connection's requests and unread
 * replies may pin in memory. docs/nbd.md's security section explains each and its default.
 */
import { BlockList, isIP } from 'node:net';
import { BdusError } from '../driver/errors.js';

export interface ExportLimits {
  /** A client must finish the handshake (TLS's included) within this time from connecting. */
  readonly handshakeTimeoutMs: number;
  /** Connections served at once; more are closed as they arrive. */
  readonly maxConnections: number;
  /**
   * Bytes one connection may hold: its requests' payloads and reply buffers in progress, plus
   * replies the client has not read yet. Past it, no more requests are read from that
   * connection until it falls below (its socket stops being read, so the client's own sends
   * block): a client that pipelines without bound or never reads its replies only slows itself.
   */
  readonly connectionMemory: number;
  /** TCP client addresses allowed (addresses and CIDR ranges); absent: everyone who can reach the port. */
  readonly allow?: ClientFilter;
}

/** Whether a client's address may connect. */
export interface ClientFilter {
  allows(address: string): boolean;
  /** The list as given, for messages. */
  readonly text: string;
}

/** The defaults: qemu-nbd's handshake limit; room for a queue of 32 requests of 1 MiB twice over. */
export const DEFAULT_LIMITS: ExportLimits = {
  handshakeTimeoutMs: 10_000,
  maxConnections: 64,
  connectionMemory: 64 << 20,
};

/**
 * An allow-list from entries such as "127.0.0.1", "192.168.1.0/24", "::1", "fd00::/8"; a clear
 * error names an entry that is neither. An IPv4 client reaching an IPv6 socket
 * ("::ffff:192.168.1.7") is checked as the IPv4 address it is.
 */
export function clientFilter(entries: readonly string[]): ClientFilter {
  if (entries.length === 0) throw new BdusError('EINVAL', 'an allow-list needs at least one address or range');
  const list = new BlockList();
  for (const entry of entries) {
    const [address = '', prefixText, extra] = entry.split('/');
    const family = isIP(address);
    const maxPrefix = family === 4 ? 32 : 128;
    const prefix = prefixText === undefined ? maxPrefix : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
    if (family === 0 || extra !== undefined || !(prefix >= 0 && prefix <= maxPrefix)) {
      throw new BdusError('EINVAL', `invalid allowed client '${entry}': expected an IP address or a CIDR range (192.168.1.0/24, fd00::/8)`);
    }
    list.addSubnet(address, prefix, family === 4 ? 'ipv4' : 'ipv6');
  }
  return {
    text: entries.join(','),
    allows(address: string): boolean {
      const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
      const plain = mapped ? mapped[1]! : address;
      const family = isIP(plain);
      return family !== 0 && list.check(plain, family === 4 ? 'ipv4' : 'ipv6');
    },
  };
}

/** What a user gives for an export's limits (the API's `limits` option): any of them, the rest default. */
export interface LimitSettings {
  handshakeTimeoutMs?: number;
  maxConnections?: number;
  connectionMemory?: number;
  /** Addresses and CIDR ranges ("127.0.0.1", "192.168.1.0/24", "fd00::/8"). */
  allow?: readonly string[];
}

/** Limits from what a user gave, each checked (a BdusError names what is wrong); the rest from DEFAULT_LIMITS. */
export function exportLimits(given: LimitSettings = {}): ExportLimits {
  const positive = (name: string, value: number | undefined, fallback: number): number => {
    if (value === undefined) return fallback;
    if (!Number.isSafeInteger(value) || value <= 0) throw new BdusError('EINVAL', `invalid ${name} ${value}: expected a positive integer`);
    return value;
  };
  return {
    handshakeTimeoutMs: positive('handshake timeout', given.handshakeTimeoutMs, DEFAULT_LIMITS.handshakeTimeoutMs),
    maxConnections: positive('connection limit', given.maxConnections, DEFAULT_LIMITS.maxConnections),
    connectionMemory: positive('connection memory', given.connectionMemory, DEFAULT_LIMITS.connectionMemory),
    ...(given.allow ? { allow: clientFilter(given.allow) } : {}),
  };
}
