/**
 * HTTP endpoints: /metrics (Prometheus text format) on the metrics port, /healthz and /readyz
 * on the health port (two listeners, like controller-runtime's metrics and probe servers).
 *
 * - /healthz: liveness. 200 while the process is alive and its event loop responsive: a
 *   heartbeat timer ticks every 250 ms and measures how late it fires; if the loop was blocked
 *   longer than `maxEventLoopLagMs` (default 5 s) within the last `lagWindowMs` (default 10 s),
 *   or the last tick is that overdue now, the probe answers 500.
 * - /readyz: readiness. 200 when every named readiness check passes; the body lists each check
 *   (`[+]name ok` / `[-]name failed: reason`) like kube-apiserver's verbose probes.
 *
 * Readiness choice with leader election (see `leaderAwareReadiness`): a standby replica is
 * READY once it takes part in the election (it has talked to the API server about the Lease
 * recently); the leader is ready once its informers have synced. So a standby is not
 * restarted or held back by a rollout, and a leader that cannot sync its caches is not ready.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { errorMessage, type Logger } from '../log.ts';

/** A readiness check: true = ok; false or a string (the reason) = not ready. */
export type Check = () => boolean | string;

export interface RunningServer {
  /** The bound port (useful with port 0). */
  readonly port: number;
  readonly server: Server;
  close(): Promise<void>;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

async function listen(
  port: number,
  host: string | undefined,
  routes: Record<string, Handler>,
  logger?: Logger,
): Promise<RunningServer> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const handler = routes[path];
    if (handler === undefined || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    Promise.resolve(handler(req, res)).catch((err: unknown) => {
      logger?.error({ err, path }, 'http handler failed');
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error\n');
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  logger?.info({ port: bound, host, paths: Object.keys(routes) }, 'http server listening');
  return {
    port: bound,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

export interface MetricsServerOptions {
  readonly port: number;
  readonly host?: string;
  readonly registry: Registry;
  readonly logger?: Logger;
}

export function startMetricsServer(options: MetricsServerOptions): Promise<RunningServer> {
  return listen(
    options.port,
    options.host,
    {
      '/metrics': async (_req, res) => {
        const body = await options.registry.metrics();
        res.writeHead(200, { 'content-type': options.registry.contentType }).end(body);
      },
    },
    options.logger,
  );
}

export interface HealthServerOptions {
  readonly port: number;
  readonly host?: string;
  /** Named readiness checks for /readyz; all must pass. */
  readonly readiness: Readonly<Record<string, Check>>;
  /** /healthz fails when the event loop has been blocked longer than this. Default 5000. */
  readonly maxEventLoopLagMs?: number;
  /** ... within this recent window. Default 10000. */
  readonly lagWindowMs?: number;
  readonly logger?: Logger;
}

export interface HealthServer extends RunningServer {
  /** Evaluate the readiness checks as /readyz does. */
  readiness(): { ok: boolean; text: string };
}

function runChecks(checks: Readonly<Record<string, Check>>): { ok: boolean; text: string } {
  let ok = true;
  const lines: string[] = [];
  for (const [name, check] of Object.entries(checks)) {
    let result: boolean | string;
    try {
      result = check();
    } catch (err) {
      result = errorMessage(err);
    }
    if (result === true) {
      lines.push(`[+]${name} ok`);
    } else {
      ok = false;
      lines.push(`[-]${name} failed${typeof result === 'string' ? `: ${result}` : ''}`);
    }
  }
  lines.push(ok ? 'readyz check passed' : 'readyz check failed');
  return { ok, text: lines.join('\n') + '\n' };
}

export async function startHealthServer(options: HealthServerOptions): Promise<HealthServer> {
  const maxLag = options.maxEventLoopLagMs ?? 5_000;
  const tickMs = 250;
  const window = options.lagWindowMs ?? 10_000;
  let lastTick = performance.now();
  let lastBlock = { at: -Infinity, lagMs: 0 };
  const heartbeat = setInterval(() => {
    const now = performance.now();
    const lag = now - lastTick - tickMs;
    if (lag > maxLag) lastBlock = { at: now, lagMs: lag };
    lastTick = now;
  }, tickMs);
  heartbeat.unref();
  const readiness = () => runChecks(options.readiness);
  const running = await listen(
    options.port,
    options.host,
    {
      '/healthz': (_req, res) => {
        const now = performance.now();
        const current = now - lastTick - tickMs;
        const lag = current > maxLag ? current : now - lastBlock.at < window ? lastBlock.lagMs : 0;
        if (lag > maxLag) {
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`event loop blocked for ${Math.round(lag)} ms\n`);
        } else {
          res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        }
      },
      '/readyz': (_req, res) => {
        const r = readiness();
        res.writeHead(r.ok ? 200 : 503, { 'content-type': 'text/plain' }).end(r.text);
      },
    },
    options.logger,
  ).catch((err: unknown) => {
    clearInterval(heartbeat);
    throw err;
  });
  return {
    ...running,
    readiness,
    close: async () => {
      clearInterval(heartbeat);
      await running.close();
    },
  };
}

/** What leaderAwareReadiness needs to know about the elector (LeaderElector implements it). */
export interface ElectionState {
  isLeader(): boolean;
  /** True when the last attempt to read/acquire/renew the Lease succeeded recently. */
  isParticipating(): boolean;
}

/**
 * The operator's /readyz check: without leader election, informers synced; with it, the
 * leader needs synced informers and a standby needs to be taking part in the election.
 */
export function leaderAwareReadiness(election: ElectionState | undefined, informersSynced: () => boolean): Check {
  return () => {
    if (election === undefined) return informersSynced() || 'informers not synced';
    if (election.isLeader()) return informersSynced() || 'leader: informers not synced';
    return election.isParticipating() || 'standby: cannot reach the leader Lease';
  };
}
