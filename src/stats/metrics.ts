/**
 * The daemon's Prometheus endpoint (`bdus daemon --metrics HOST:PORT`): every device's
 * statistics (snapshot.ts) as metrics, with prom-client's names, types and text format. Each
 * scrape reads the stats files once; nothing is kept between scrapes, so a device that is gone
 * is gone from the next scrape. The daemon's own process metrics come with them (prom-client's
 * defaults). Names and labels: docs/observability.md.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type MetricType } from 'prom-client';
import type { DeviceStatsEntry } from '../control/protocol.js';
import { bucketEnd } from './layout.js';
import type { MetricsAddress } from './metrics-address.js';
import type { DeviceStats, OperationStats } from './snapshot.js';

/** Histogram bounds: powers of two of microseconds (the stats buckets' own edges), 16 µs to ~16.8 s. */
const BOUNDS_US = Array.from({ length: 21 }, (_, i) => 2 ** (i + 4));

type Read = () => DeviceStatsEntry[];

/** The metrics of the devices `read` returns, in a registry of their own. */
export interface DeviceMetrics {
  readonly registry: Registry;
  /** Reads every device once, then renders every metric from that read. */
  scrape(): Promise<string>;
}

export function deviceMetrics(read: Read): DeviceMetrics {
  const registry = new Registry();
  let entries: DeviceStatsEntry[] = [];
  const registers = [registry];
  const perDevice = (stats: (e: DeviceStatsEntry, s: DeviceStats) => number) => function (this: Gauge | Counter) {
    this.reset();
    for (const e of entries) if (e.stats) set(this, { device: deviceName(e) }, stats(e, e.stats));
  };
  const perOperation = (value: (o: OperationStats) => number) => function (this: Gauge | Counter) {
    this.reset();
    for (const e of entries) {
      for (const [operation, o] of Object.entries(e.stats?.operations ?? {})) set(this, { device: deviceName(e), operation }, value(o));
    }
  };
  new Gauge({
    name: 'bdus_device_info',
    help: 'A bdus device (value 1), with its id, path, kernel node, frontend, state and driver pid as labels.',
    labelNames: ['device', 'id', 'path', 'kernel_path', 'frontend', 'state', 'pid'],
    registers,
    collect() {
      this.reset();
      for (const e of entries) {
        const r = e.record;
        this.set({ device: deviceName(e), id: r.id, path: r.path, kernel_path: r.kernelPath, frontend: r.frontend, state: r.state, pid: String(r.pid) }, 1);
      }
    },
  });
  new Gauge({
    name: 'bdus_device_size_bytes',
    help: 'The size of the device.',
    labelNames: ['device'],
    registers,
    collect() {
      this.reset();
      for (const e of entries) this.set({ device: deviceName(e) }, e.record.attributes.size);
    },
  });
  new Counter({ name: 'bdus_requests_total', help: 'Requests answered, by request type.', labelNames: ['device', 'operation'], registers, collect: perOperation((o) => o.requests) });
  new Counter({ name: 'bdus_request_bytes_total', help: 'Bytes of the requests that succeeded.', labelNames: ['device', 'operation'], registers, collect: perOperation((o) => o.bytes) });
  new Gauge({ name: 'bdus_requests_in_flight', help: 'Requests admitted and not yet answered.', labelNames: ['device', 'operation'], registers, collect: perOperation((o) => o.inFlight) });
  new Counter({
    name: 'bdus_request_errors_total',
    help: 'Requests answered with an error, by errno name (timeouts are ETIMEDOUT).',
    labelNames: ['device', 'operation', 'errno'],
    registers,
    collect() {
      this.reset();
      for (const e of entries) {
        for (const [operation, o] of Object.entries(e.stats?.operations ?? {})) {
          for (const [errno, n] of Object.entries(o.errnos)) this.inc({ device: deviceName(e), operation, errno }, n);
        }
      }
    },
  });
  const DURATION = 'bdus_request_duration_seconds';
  const DURATION_HELP = 'Latency of the requests that succeeded, from admission to answer.';
  new (class extends Histogram {
    /** What the registry renders (prom-client's own observations stay empty). */
    getForPromString() {
      return this.get();
    }

    /** The stored histograms, cut to BOUNDS_US. */
    override async get() {
      const values: Awaited<ReturnType<Histogram['get']>>['values'] = [];
      for (const e of entries) {
        for (const [operation, o] of Object.entries(e.stats?.operations ?? {})) {
          const labels = { device: deviceName(e), operation };
          let count = 0;
          let next = 0;
          for (const bound of BOUNDS_US) {
            for (; next < o.histogram.length && bucketEnd(o.histogram[next]![0]) <= bound; next++) count += o.histogram[next]![1];
            values.push({ metricName: `${DURATION}_bucket`, labels: { ...labels, le: bound / 1e6 }, value: count });
          }
          for (; next < o.histogram.length; next++) count += o.histogram[next]![1];
          values.push({ metricName: `${DURATION}_bucket`, labels: { ...labels, le: '+Inf' }, value: count });
          values.push({ metricName: `${DURATION}_sum`, labels, value: o.latencySumUs / 1e6 });
          values.push({ metricName: `${DURATION}_count`, labels, value: count });
        }
      }
      // prom-client's typings declare `type` a numeric enum; at run time it is the type's name.
      const type = 'histogram' as unknown as MetricType;
      return { name: DURATION, help: DURATION_HELP, type, aggregator: 'sum' as const, collect: () => undefined, values };
    }
  })({
    name: DURATION,
    help: DURATION_HELP,
    labelNames: ['device', 'operation'],
    buckets: BOUNDS_US.map((us) => us / 1e6),
    registers,
  });
  new Counter({ name: 'bdus_request_timeouts_total', help: 'Requests answered ETIMEDOUT because requestTimeout passed.', labelNames: ['device'], registers, collect: perDevice((_, s) => s.timeouts) });
  new Counter({ name: 'bdus_transfer_retries_total', help: 'Read and write callbacks called again after an EIO (transferTries).', labelNames: ['device'], registers, collect: perDevice((_, s) => s.transferRetries) });
  new Counter({ name: 'bdus_resent_requests_total', help: 'Requests the kernel sent again after a driver died.', labelNames: ['device'], registers, collect: perDevice((_, s) => s.resent) });
  new Counter({ name: 'bdus_restart_limit_failures_total', help: 'Re-sent requests failed alone with EIO at restartLimit.', labelNames: ['device'], registers, collect: perDevice((_, s) => s.restartFailures) });
  new Gauge({ name: 'bdus_callbacks_running', help: 'Driver callbacks in progress.', labelNames: ['device'], registers, collect: perDevice((_, s) => s.callbacks) });
  new Gauge({ name: 'bdus_callbacks_waiting', help: 'Callbacks waiting for a slot (maxConcurrentCallbacks).', labelNames: ['device'], registers, collect: perDevice((_, s) => s.waiting) });
  const changes = (key: 'count' | 'totalMs' | 'lastMs', scale: number) => function (this: Gauge | Counter) {
    this.reset();
    for (const e of entries) {
      if (!e.stats) continue;
      set(this, { device: deviceName(e), kind: 'swap' }, e.stats.swaps[key] * scale);
      set(this, { device: deviceName(e), kind: 'recovery' }, e.stats.recoveries[key] * scale);
    }
  };
  new Counter({ name: 'bdus_driver_changes_total', help: 'Hot swaps (kind="swap") and recoveries after a driver died (kind="recovery").', labelNames: ['device', 'kind'], registers, collect: changes('count', 1) });
  new Counter({ name: 'bdus_driver_change_seconds_total', help: 'Time the driver changes took, summed: from the rerun (swap) or the death (recovery) until the new driver served.', labelNames: ['device', 'kind'], registers, collect: changes('totalMs', 1e-3) });
  new Gauge({ name: 'bdus_driver_change_last_seconds', help: 'Time the last driver change of its kind took.', labelNames: ['device', 'kind'], registers, collect: changes('lastMs', 1e-3) });
  collectDefaultMetrics({ register: registry });
  return {
    registry,
    scrape() {
      entries = read();
      return registry.metrics();
    },
  };
}

/** The device label: the stable name, as node_exporter names disks ("bdus-0"). */
function deviceName(e: DeviceStatsEntry): string {
  return e.record.path.replace(/^\/dev\//, '');
}

function set(metric: Gauge | Counter, labels: Record<string, string>, value: number): void {
  if (metric instanceof Gauge) metric.set(labels, value);
  else metric.inc(labels, value);
}

/** Serves `metrics` at http://HOST:PORT/metrics; resolves once listening. */
export async function serveMetrics(address: MetricsAddress, metrics: DeviceMetrics): Promise<Server> {
  const server = createServer((request, response) => {
    if (request.method !== 'GET' || (request.url !== '/metrics' && request.url !== '/')) {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('bdus: the metrics are at /metrics\n');
      return;
    }
    metrics.scrape().then(
      (text) => response.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
      (error: Error) => response.writeHead(500, { 'content-type': 'text/plain' }).end(`bdus: ${error.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(address.port, address.host, resolve));
  return server;
}
