/**
 * The standalone Node gateway for an application: config → database (embedded PGlite when
 * DATABASE_URL is unset) → poolgate's tables and the app's migrations (+ its demo seed on the
 * embedded default) → warm pg Pool → the app on @hono/node-server, with graceful shutdown on
 * SIGTERM/SIGINT. `runGateway(app)` is a server's whole main; `startGateway` embeds it (tests).
 */
import { serve, type ServerType } from '@hono/node-server';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Context } from 'hono';
import type { AddressInfo, Socket } from 'node:net';
import { ConfigError, databaseTarget, describeDatabase, parseConfig, type Config } from '../config.js';
import type { PgPoolDatabase } from '../db/connectors/pg-pool.js';
import type { StatsRegistry } from '../stats/registry.js';
import type { Queryable } from '../db/types.js';
import { describeError, describeStartupFailure, rootCause, type ErrorCode } from '../errors.js';
import { migrate, MigrationError } from '../db/migrate.js';
import type { PoolgateApp } from '../definition.js';
import { IdempotencyPurger } from '../idempotency/purge.js';
import type { EmbeddedPostgres } from '../local/embedded.js';
import { createNodeApp } from './node-app.js';
import { nodeLog } from './node-log.js';
import type { Log } from '../log/logger.js';

export interface Gateway {
  readonly url: string;
  readonly port: number;
  readonly config: Config;
  readonly database: PgPoolDatabase;
  readonly registry: StatsRegistry;
  /** Its log (LOG_LEVEL, LOG_FORMAT): what the embedding process writes about it goes here too. */
  readonly log: Log;
  /**
   * Drains in-flight requests (up to the shutdown timeout, or `drainTimeoutMs` when what is left of
   * a larger stop's deadline is less), ends the pool, stops the embedded DB. Idempotent.
   */
  close(options?: { drainTimeoutMs?: number }): Promise<{ drained: boolean }>;
}

export interface GatewayOptions {
  /**
   * Where the log's lines go, one string each (JSON, or pretty with LOG_FORMAT=pretty), filtered
   * by LOG_LEVEL; default: stdout.
   */
  log?: (line: string) => void;
}

/** Start-up failures that deserve one clear line rather than a stack. */
export class StartupError extends Error {
  override name = 'StartupError';
}

/** @hono/node-server hands the Node request over as `c.env.incoming`: read it without building a Headers object. */
const readHeader = (c: Context, name: string): string | undefined => {
  const value = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming?.headers[name];
  return Array.isArray(value) ? value[0] : value;
};

/**
 * "The client went away", from Node's response: 'close' before the response finished. Cheaper than
 * the Web Request's signal, which would make @hono/node-server build the whole Request.
 */
const onClientGone = (c: Context, gone: () => void): void => {
  const outgoing = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing;
  outgoing?.once('close', () => {
    if (!outgoing.writableFinished) gone();
  });
};

/** After the drain deadline: how long cut requests get to answer, their answers to flush, and the pool to end (≤ 1 s in all). */
const CUT_ANSWER_MS = 500;
const FLUSH_MS = 100;
const POOL_END_MS = 300;

/**
 * Starts the Node gateway for `app` on PORT, against DATABASE_URL (or the embedded database).
 * @example const gateway = await startGateway(app, process.env); … await gateway.close();
 */
export async function startGateway(
  app: PoolgateApp,
  env: Record<string, string | undefined>,
  options: GatewayOptions = {},
): Promise<Gateway> {
  const config = parseConfig(env);
  const log = nodeLog({ level: config.logLevel, format: config.logFormat, sink: options.log });

  let embedded: EmbeddedPostgres | undefined;
  let connectionString = config.databaseUrl;
  if (!connectionString) {
    embedded = await startEmbedded(config.embeddedDataDir);
    connectionString = embedded.url;
    // One backend serves every connection there: a lane's read batch would share it with others' statements.
    config.pool.pipelineLanes = 0;
    config.pool.budget.mode = 'off'; // one process on its own embedded server: nothing to share
    log(`poolgate: embedded PGlite on 127.0.0.1:${embedded.port} (data in ${config.embeddedDataDir})`, {
      event: 'embedded.started',
      port: embedded.port,
    });
  }

  const built = createNodeApp(config, { app, scope: 'node', connectionString, log, readHeader, onClientGone });
  const { database, registry, drain } = built;
  let server: ServerType | undefined;

  try {
    const setup = database.forRequest({ acquired() {}, queried() {}, served() {}, internal: true });
    const runTx = <T>(fn: (tx: Queryable) => Promise<T>) => setup.transaction(fn);
    const { applied, warnings } = await migrate(runTx, app);
    if (applied.length) log(`poolgate: applied migrations ${applied.join(', ')}`, { event: 'migrations.applied', applied });
    for (const warning of warnings) log(`poolgate: warning: ${warning}`, { event: 'migrations.warning' }, 'warn');
    if (app.seed && (embedded || env.SEED === 'true')) {
      const seeded = await runTx((tx) => app.seed!(tx));
      if (seeded) log(`poolgate: ${seeded}`, { event: 'seeded' });
    }
    await database.warm(config.pool.min);

    server = await new Promise<ServerType>((resolve, reject) => {
      const s = serve({ fetch: (request, env) => built.app.fetch(request, env), port: config.port, hostname: config.host }, () =>
        resolve(s),
      );
      s.once('error', reject);
    });
    // Slow clients must not hold sockets forever (slowloris); keep-alive a little above typical LB idle.
    const http = server as Server;
    http.headersTimeout = 10_000;
    http.requestTimeout = 30_000;
    http.keepAliveTimeout = 65_000;
    http.on('clientError', answerClientError);
  } catch (err) {
    await database.close().catch(() => {});
    await embedded?.stop();
    if (err instanceof ConfigError || err instanceof MigrationError) throw err; // one line that names the fix
    if ((err as { code?: string }).code === 'EADDRINUSE')
      throw new StartupError(`port ${config.port} on ${config.host} is in use; set PORT`);
    // The cause and its fix (an open breaker: what opened it), where the database is, never a secret.
    const line = describeStartupFailure(err, databaseTarget(connectionString));
    throw new StartupError(line ?? `start-up failed (${describeError(rootCause(err))})`);
  }

  const port = (server.address() as AddressInfo).port;
  const url = `http://${config.host}:${port}`;
  // What it runs with, once it runs (a start-up that fails is one line naming the fix, nothing before it);
  // secrets left out: they are non-enumerable (config.ts), and the database is named by describeDatabase.
  const target = describeDatabase(config.databaseUrl);
  log(`poolgate: configuration (${target}): ${JSON.stringify(config)}`, { event: 'config', database: target, config });
  log(
    `poolgate: Node gateway on ${url} → ${target} (Node ${process.version}, pool max ${config.pool.max}, ${config.pool.min} warm${config.forwardSecret ? ', signed forwards only' : ''})`,
    { event: 'gateway.started', url, node: process.version },
  );

  const stopPurging = new IdempotencyPurger(database, config.idempotencyPurgeIntervalMs, log).start();

  let closing: Promise<{ drained: boolean }> | undefined;
  const close = ({ drainTimeoutMs = config.shutdownTimeoutMs } = {}) =>
    (closing ??= (async () => {
      stopPurging();
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      const drained = await drain.start(drainTimeoutMs);
      // Cut at the deadline: the requests still running were cancelled and answer 503 now.
      if (!drained) await drain.settled(CUT_ANSWER_MS);
      // The last responses may not be written yet: they carry Connection: close and end their
      // sockets themselves. Cut what is left (a client that never finishes its request) after a grace.
      const cut = setTimeout(() => (server as Server).closeAllConnections(), drained ? 1_000 : FLUSH_MS);
      await stopped;
      clearTimeout(cut);
      // A database that no longer answers must not hold the exit: the pool gets a bounded while.
      try {
        await Promise.race([database.close(), new Promise((resolve) => setTimeout(resolve, POOL_END_MS).unref())]);
        await embedded?.stop();
      } finally {
        built.requestLog.close(); // its last summary, whatever the database did
      }
      return { drained };
    })());

  return { url, port, config, database, registry, log, close };
}

/**
 * The embedded PGlite is an optional peer: an application installs it for development (a
 * production install lacks it), so it is loaded only when DATABASE_URL is unset, and its
 * absence names both ways out.
 */
async function startEmbedded(dataDir: string): Promise<EmbeddedPostgres> {
  let embedded: typeof import('../local/embedded.js');
  try {
    embedded = await import('../local/embedded.js');
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_MODULE_NOT_FOUND') throw err;
    throw new ConfigError(
      'DATABASE_URL',
      'is required (a postgres:// URL); or, for local development, install the embedded PGlite: npm i -D @electric-sql/pglite @electric-sql/pglite-socket',
    );
  }
  return embedded.startEmbeddedPostgres({ dataDir });
}

/** The one line printed when start-up fails: names the variable or the cause, never a secret. */
export function startupErrorLine(err: unknown): string {
  if (err instanceof ConfigError) return `poolgate: invalid configuration: ${err.message}`;
  if (err instanceof StartupError) return `poolgate: ${err.message}`;
  return `poolgate: start-up failed (${describeError(rootCause(err))})`;
}

const CLIENT_ERRORS: Record<string, [status: number, reason: string, code: ErrorCode, message: string]> = {
  HPE_HEADER_OVERFLOW: [431, 'Request Header Fields Too Large', 'payload_too_large', 'The request headers are too large.'],
  HPE_CHUNK_EXTENSIONS_OVERFLOW: [413, 'Payload Too Large', 'payload_too_large', 'The chunk extensions are too large.'],
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'Request Timeout', 'timeout', 'The request was not received in time.'],
};

/**
 * Requests Node's HTTP parser refuses (a bogus Content-Length, broken chunked framing) never reach
 * the app, and Node would answer them with a bare status line: answer in the API's error shape.
 * Like Node's own handler, only when no response has started on the socket.
 */
function answerClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  const inFlight = (socket as unknown as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (socket.writable && !inFlight?.headersSent && err.code !== 'ECONNRESET') {
    const [status, reason, code, message] = CLIENT_ERRORS[err.code ?? ''] ?? [
      400,
      'Bad Request',
      'validation_failed',
      'The request is not valid HTTP; check its Content-Length and chunked framing.',
    ];
    const body = JSON.stringify({ error: { code, message, requestId: crypto.randomUUID() } });
    socket.write(
      `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(err);
}

/**
 * A server's whole main: starts the gateway from process.env (one line and exit 1 when it cannot),
 * drains on SIGTERM/SIGINT and exits.
 * @example await runGateway(app);
 */
export async function runGateway(app: PoolgateApp): Promise<void> {
  let gateway: Gateway;
  try {
    gateway = await startGateway(app, process.env);
  } catch (err) {
    console.error(startupErrorLine(err));
    process.exit(1);
  }
  let signals = 0;
  const onSignal = (signal: string) => {
    const { log } = gateway;
    if (signals++ > 0) {
      log(`poolgate: ${signal} again; already shutting down`, { event: 'gateway.signal', signal });
      return;
    }
    log(`poolgate: ${signal}, draining (up to ${gateway.config.shutdownTimeoutMs} ms)`, { event: 'gateway.signal', signal });
    gateway.close().then(
      ({ drained }) => {
        log(`poolgate: stopped${drained ? '' : ' (drain deadline passed)'}`, { event: 'gateway.stopped', drained });
        process.exit(0);
      },
      (err) => {
        log(`poolgate: shutdown failed (${describeError(err)})`, { event: 'gateway.stopped', error: describeError(err) }, 'error');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
}
