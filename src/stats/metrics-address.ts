/** Where the daemon serves metrics (`--metrics`): parsed apart from the endpoint, which loads prom-client only when asked for. */
export interface MetricsAddress {
  host: string;
  port: number;
}

/** "9477", "127.0.0.1:9477", "[::1]:9477", "0.0.0.0:9477": loopback unless a host is given. */
export function parseMetricsAddress(text: string): MetricsAddress {
  const match = /^(?:(\[[0-9a-fA-F:.]+\]|[\w.-]+):)?(\d{1,5})$/.exec(text);
  const port = Number(match?.[2]);
  if (!match || port < 1 || port > 65535) throw new Error(`invalid metrics address '${text}': expected PORT or HOST:PORT`);
  return { host: match[1]?.replace(/^\[|\]$/g, '') ?? '127.0.0.1', port };
}
