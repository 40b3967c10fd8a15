/**
 * An export's lanes (src/lane; `bdus export --lanes N`): NBD multi-conn served by several
 * threads. The main thread listens and accepts; each accepted connection goes to one lane in
 * turn, the main thread (lane 0) included, which does its handshake and transmission on its own
 * event loop, through its own driver instance and request layer: a connection never changes
 * thread, so nothing crosses threads on the request path. A client that opens several
 * connections (nbdcopy, qemu with multi-conn, fio's nbd engine with several jobs) so has its
 * requests served by several cores; one connection is served by one.
 *
 * The export advertises NBD_FLAG_CAN_MULTI_CONN (a flush on any connection covers the writes
 * completed on all): with lanes that holds because a lane-safe driver promises it (a flush on
 * one instance covers the writes of all: docs/driver-api.md, "Lanes").
 */
import { closeSync } from 'node:fs';
import type { EffectiveAttributes } from '../driver/attributes.js';
import type { RequestCallback } from '../driver/callbacks.js';
import type { LaneKind, LaneServer } from '../frontend/frontend.js';
import type { Connection } from './connection.js';
import type { NbdExport } from './export-spec.js';
import type { ExportLimits } from './limits.js';
import { connectionOn } from './server.js';
import { loadTls, type TlsOptions } from './tls.js';

/** The name the lanes' worker knows an export's lanes by (LaneData.frontend). */
export const EXPORT_LANES = 'export';

/** What an export's lanes take from it (structured-clonable): the export, less what cannot cross threads. */
export interface ExportLaneShare {
  readonly name: string;
  readonly description: string;
  readonly attributes: EffectiveAttributes;
  readonly readOnly: boolean;
  readonly callbacks: readonly RequestCallback[];
  /** The limits a connection applies itself (who may connect is decided where it is accepted). */
  readonly limits: Omit<ExportLimits, 'allow'>;
  /** TLS, loaded again from its files in each lane (a secure context cannot cross threads). */
  readonly tls?: TlsOptions;
  /** Connections the lanes serve right now, counted for maxConnections: +1 by the main thread as it hands one over, -1 by the lane once it closes. */
  readonly open: Int32Array;
}

/** What a lane is handed: an accepted connection's descriptor, its own now. */
export interface ExportLaneConnection {
  readonly fd: number;
}

export const exportLanes: LaneKind = {
  serve(share, _lane, requests, log): LaneServer {
    const s = share as ExportLaneShare;
    const exported: NbdExport = {
      name: s.name,
      description: s.description,
      attributes: s.attributes,
      readOnly: s.readOnly,
      callbacks: s.callbacks,
      requests,
      log,
      limits: s.limits,
      ...(s.tls ? { tls: loadTls(s.tls) } : {}),
    };
    const connections = new Set<Connection>();
    let stopped = false;
    let endWith!: (error: Error | undefined) => void;
    const ended = new Promise<Error | undefined>((resolve) => (endWith = resolve));
    const closed = () => Atomics.sub(s.open, 0, 1);
    return {
      deliver(message) {
        const { fd } = message as ExportLaneConnection;
        if (stopped) {
          closeSync(fd);
          closed();
          return;
        }
        const connection = connectionOn(fd, exported, () => {
          connections.delete(connection);
          closed();
        });
        connections.add(connection);
      },
      // Requests in progress are answered, then each connection ends (as a server's close()).
      stop() {
        stopped = true;
        for (const connection of connections) void connection.shutdown();
      },
      close() {
        stopped = true;
        for (const connection of connections) connection.hangUp('the export ends');
        endWith(undefined);
      },
      resize: () => undefined,
      ended,
    };
  },
};
