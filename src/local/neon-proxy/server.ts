/**
 * A local stand-in for Neon's serverless proxy, so the real `@neondatabase/serverless` driver
 * (HTTP `neon()` and WebSocket `Pool`) runs offline against any Postgres — PostgreSQL or the
 * embedded PGlite. Node-only (node:http, ws, pg); nothing in the core imports it.
 *
 * Routes: `POST /sql` (see http-sql.ts), WebSocket `/v2?address=host:port` (see ws-pipe.ts),
 * `OPTIONS *` (CORS preflight); anything else is a 404 in Neon's JSON error shape. A browser's
 * request from an origin it was not given, or for a Host that is not this machine, is refused
 * first (browser-access.ts).
 */
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { now } from '../../stats/clock.js';
import { browserAccess } from './browser-access.js';
import { handleSql, type SqlResponse } from './http-sql.js';
import { PoolRegistry } from './pools.js';
import { parseAllowedTargets } from './targets.js';
import { WsPipes } from './ws-pipe.js';

export interface NeonProxyOptions {
  /** The database(s) this proxy may connect to (postgres:// URLs); only their host:port matter. */
  databaseUrls: string[];
  /** Default 4444; 0 picks a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Request bodies above this get 413 (Neon's default cap: 10 MiB). */
  maxRequestBytes?: number;
  /** Results above this get 507 "response is too large (max is N bytes)" (default 10 MiB). */
  maxResponseBytes?: number;
  /** pg pool size per (server, database, user, password, options) key; default 10. */
  poolMaxPerTarget?: number;
  /**
   * Backends the HTTP path may hold open in total, over every key; default 20. A key is a pool, and
   * a password is part of the key: without this bound, requests with ever new passwords (ignored by
   * a trust server) would each open a backend until Postgres had none left for anyone.
   */
  maxBackends?: number;
  /** How long opening a database connection may take, TCP to ReadyForQuery (HTTP) or AuthenticationOk (WebSocket); default 5000. */
  connectTimeoutMs?: number;
  /**
   * Browser origins allowed to call the proxy (CORS, and WebSocket upgrades), e.g. the local edge's
   * `http://127.0.0.1:8787`; default none. Requests without an Origin (servers) are always served.
   */
  allowedOrigins?: string[];
  /** Where log lines go; never given a password or connection string. */
  log?: (line: string) => void;
  /**
   * As LOG_LEVEL: `info` (default) logs refusals and failures (5xx, a lost database, a vanished
   * WebSocket client); `debug` adds one line per request and per WebSocket session; `silent` none.
   */
  logLevel?: 'silent' | 'info' | 'debug';
}

export interface NeonProxyStats {
  httpRequestCount: number;
  /** HTTP answers with status ≥ 400 (SQL errors included). */
  httpErrorCount: number;
  /** HTTP requests and WebSocket upgrades refused because the target is not allowed. */
  refusedCount: number;
  wsOpenedCount: number;
  wsActiveCount: number;
  poolCount: number;
  /** Backends the HTTP path holds open or is opening, over every pool. */
  backendCount: number;
}

export interface NeonProxy {
  /** `http://host:port` */
  readonly url: string;
  readonly port: number;
  readonly host: string;
  /** Stops listening, drops WebSockets, waits briefly for in-flight HTTP requests, ends the pools. Idempotent. */
  close(): Promise<void>;
  stats(): NeonProxyStats;
}

const MiB = 1024 * 1024;
/** How long close() lets in-flight HTTP requests finish before cutting their connections. */
const CLOSE_GRACE_MS = 5_000;

const PREFLIGHT_HEADERS = {
  'Access-Control-Allow-Methods': 'POST, OPTIONS',
  'Access-Control-Allow-Headers': [
    'Authorization',
    'Content-Type',
    'Neon-Connection-String',
    'Neon-Raw-Text-Output',
    'Neon-Array-Mode',
    'Neon-Pool-Opt-In',
    'Neon-Batch-Isolation-Level',
    'Neon-Batch-Read-Only',
    'Neon-Batch-Deferrable',
  ].join(', '),
  'Access-Control-Max-Age': '86400',
};

/**
 * Starts the proxy. Point the driver at it with test/helpers/neon.ts, or by hand:
 * @example
 * const proxy = await startNeonProxy({ databaseUrls: [process.env.DATABASE_URL!], port: 0 });
 * neonConfig.fetchEndpoint = () => `${proxy.url}/sql`;
 * neonConfig.wsProxy = (host, port) => `${proxy.host}:${proxy.port}/v2?address=${host}:${port}`;
 * neonConfig.useSecureWebSocket = false; neonConfig.pipelineTLS = false; // pipelineConnect 'password' (the default) works
 * … await proxy.close();
 */
export async function startNeonProxy(opts: NeonProxyOptions): Promise<NeonProxy> {
  const allowed = parseAllowedTargets(opts.databaseUrls);
  const level = opts.logLevel ?? 'info';
  const sink = opts.log ?? (() => {});
  const log = level === 'silent' ? () => {} : sink;
  const debug = level === 'debug' ? sink : () => {};
  const host = opts.host ?? '127.0.0.1';
  const access = browserAccess(opts.allowedOrigins ?? [], host);
  const connectTimeoutMs = opts.connectTimeoutMs ?? 5_000;
  const pools = new PoolRegistry({
    maxPerTarget: opts.poolMaxPerTarget ?? 10,
    maxBackends: opts.maxBackends ?? 20,
    connectTimeoutMs,
    idleTimeoutMs: 30_000,
    log,
  });
  const pipes = new WsPipes({ allowed, connectTimeoutMs, log, debug });
  const sqlContext = {
    allowed,
    pools,
    maxRequestBytes: opts.maxRequestBytes ?? 10 * MiB,
    maxResponseBytes: opts.maxResponseBytes ?? 10 * MiB,
    log,
  };
  const counts = { httpRequestCount: 0, httpErrorCount: 0, refusedCount: 0 };
  let closing: Promise<void> | undefined;

  const server = createServer((req, res) => {
    counts.httpRequestCount++;
    const started = now();
    const send = (answer: SqlResponse, err?: unknown) => {
      if (answer.status >= 400) counts.httpErrorCount++;
      if (answer.refused) counts.refusedCount++;
      const ms = (now() - started).toFixed(1);
      // A refusal or a failure of the proxy or the database is news; a request that went as asked is not.
      (answer.refused || answer.status >= 500 || err ? log : debug)(
        `neon-proxy: ${req.method} ${pathOf(req)} ${answer.status} ${ms}ms${answer.target ? ` ${answer.target}` : ''}${err ? ` (${reasonText(err)})` : ''}`,
      );
      if (res.headersSent || res.destroyed) return;
      const body = Buffer.from(answer.body);
      res.writeHead(answer.status, {
        ...answer.headers,
        ...access.corsHeaders(req),
        'Content-Type': 'application/json',
        'Content-Length': body.length,
        ...(closing ? { Connection: 'close' } : {}),
      });
      res.end(body);
    };
    // The client went away before its answer was written: /sql cancels the running statement.
    const gone = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) gone.abort();
    });
    route(req, gone.signal).then(
      (answer) => send(answer),
      (err: unknown) => send({ status: 500, body: JSON.stringify({ message: 'internal proxy error' }), headers: {} }, err),
    );
  });

  async function route(req: IncomingMessage, signal: AbortSignal): Promise<SqlResponse> {
    const path = pathOf(req);
    const refusal = access.refusal(req);
    if (refusal) return { status: 403, body: JSON.stringify({ message: refusal }), headers: {}, refused: true };
    if (req.method === 'OPTIONS') return { status: 204, body: '', headers: req.headers.origin ? PREFLIGHT_HEADERS : {} };
    if (path === '/sql' && req.method === 'POST') return handleSql(req, sqlContext, signal);
    if (path === '/sql')
      return { status: 405, body: JSON.stringify({ message: 'use POST for /sql' }), headers: { Allow: 'POST, OPTIONS' } };
    return { status: 404, body: JSON.stringify({ message: `no route for ${req.method} ${path}` }), headers: {} };
  }

  server.on('upgrade', (req, socket, head) => {
    const refusal = access.refusal(req);
    if (refusal) return pipes.refuse(socket, refusal);
    if (pathOf(req) === '/v2') return pipes.upgrade(req, socket, head, closing !== undefined);
    socket.on('error', () => {});
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  server.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 4444, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = host.includes(':') ? `[${host}]` : host;

  return {
    url: `http://${urlHost}:${port}`,
    port,
    host,
    close() {
      closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        pipes.closeAll();
        server.closeIdleConnections();
        let timer: ReturnType<typeof setTimeout> | undefined;
        const grace = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, CLOSE_GRACE_MS);
          timer.unref();
        });
        try {
          await Promise.race([stopped, grace]);
        } finally {
          clearTimeout(timer);
        }
        server.closeAllConnections();
        await pools.end();
      })();
      return closing;
    },
    stats: () => ({
      ...counts,
      refusedCount: counts.refusedCount + pipes.refusedCount,
      wsOpenedCount: pipes.openedCount,
      wsActiveCount: pipes.activeCount,
      poolCount: pools.poolCount,
      backendCount: pools.backendCount,
    }),
  };
}

function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

/** A rejection reason as log text: an Error prints as `Name: message`, anything else as String() makes it. */
function reasonText(err: unknown): string {
  return err instanceof Error ? err.toString() : String(err);
}
