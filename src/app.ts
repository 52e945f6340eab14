/**
 * createPoolgate(deps) → the parts an application mounts (its routes, the ops endpoints, or the
 * whole app). Knows no runtime and no driver: the database backend, the stats registry and (at
 * the edge) the handler for transactional routes are passed in by the runtime entry. Every part
 * carries its own middleware per route, so mounting it in a larger Hono app adds nothing to the
 * application's other routes.
 */
import { Hono, type Context, type ErrorHandler, type Handler, type MiddlewareHandler } from 'hono';
import type { FetchApp, OpenApiInfo, Poolgate, PoolgateApp } from './definition.js';
import { openApiDocument } from './openapi.js';
import { bindToTransaction } from './db/tx-db.js';
import type { Database, Db } from './db/types.js';
import { checkPolicy } from './cache/policy.js';
import { ReadCache } from './cache/read-cache.js';
import type { CacheStore } from './cache/store.js';
import { CONSISTENCY_HEADER, parseToken } from './db/consistency.js';
import { claimNonce } from './idempotency/nonces.js';
import { describeError, toAppError } from './errors.js';
import type { Drain } from './lifecycle/drain.js';
import { connStats, requestIdOf, responseHeaders, type RequestMetrics } from './middleware/conn-stats.js';
import { checkKey, IDEMPOTENCY_HEADER, REPLAYED_HEADER, requestHash, runIdempotent } from './idempotency/idempotency.js';
import type { AppEnv, RouteResult, RouteSpec } from './routes/types.js';
import { jsonBody, parseWith, takeBody } from './routes/input.js';
import { register } from './routes/register.js';
import { routeNotFound } from './routes/not-found.js';
import { opsRoutes, type OpsAccess } from './routes/ops.js';
import type { StatsRegistry } from './stats/registry.js';
import type { Log } from './log/logger.js';
import { RequestLog } from './log/request-log.js';

export interface PoolgateDeps {
  database: Database;
  registry: StatsRegistry;
  bodyLimitBytes: number;
  readyTimeoutMs?: number;
  drain?: Drain;
  /** Where poolgate's log lines go (src/log/logger.ts); none: nothing is logged. */
  log?: Log;
  /**
   * The per-request lines and their interval summary (src/log/request-log.ts); default: one over
   * `log`. The runtime entries pass their own, so that shutting down flushes its counts.
   */
  requestLog?: RequestLog;
  /**
   * How a transactional route is served. Omitted on Node (the route runs here, on the pool);
   * the edge passes the signed forwarder.
   */
  transactional?: (route: RouteSpec) => Handler<AppEnv>;
  /** Runs before every API route (the Node function's forward-signature check). */
  verify?: MiddlewareHandler<AppEnv>;
  /** How long an idempotency record is kept (default 24 h). */
  idempotencyTtlMs?: number;
  /** Each request's deadline (default 15 s). */
  requestTimeoutMs?: number;
  /** A runtime's cheap request-header reader (Node passes one that skips building Headers). */
  readHeader?: (c: Context, name: string) => string | undefined;
  /** Who may read /stats, /metrics and readiness details (src/routes/ops.ts). */
  opsAccess?: OpsAccess;
  /** Serve the live dashboard at /dashboard (DASHBOARD; src/routes/dashboard/). Default off. */
  dashboard?: boolean;
  /** A runtime's cheap "the client went away" (Node's comes from the response; default: the Request's signal). */
  onClientGone?: (c: Context, gone: () => void) => void;
  /** Transactional responses also set the consistency token as a cookie (CONSISTENCY_COOKIE=on). */
  consistencyCookie?: boolean;
  /** The read cache for routes with a cache policy (CACHE=on); none: no route is cached. */
  cache?: { store: CacheStore; maxStalenessMs: number };
}

/** The deps with the one read cache of this instance built. */
interface Parts extends PoolgateDeps {
  readCache?: ReadCache;
}

const BODYLESS = new Set(['GET', 'HEAD']);

/**
 * Runs a route here, on this process's database. A transactional route's work, its idempotency
 * record and (behind a signed forward) its nonce are one transaction: either all of it is
 * written or none. The body was read and parsed before (parseBody), so a transaction that runs
 * again (40001/40P01) sees the same input, and a slow upload holds no connection.
 */
function runHere(route: RouteSpec, ttlMs: number, cache: ReadCache | undefined): Handler<AppEnv> {
  const policy = route.cache && cache ? checkPolicy(route, route.cache) : undefined;
  if (policy && cache) return async (c) => answer(c, await cache.serve(c, route, policy));
  return async function runRoute(c) {
    const key = route.kind === 'transactional' ? c.req.header(IDEMPOTENCY_HEADER) : undefined;
    const forward = route.kind === 'transactional' ? c.get('forward') : undefined;
    const db = c.get('db');
    const work = async (tx: Db): Promise<RouteResult & { replayed?: boolean }> => {
      if (forward) await claimNonce(tx, forward);
      if (key === undefined) return route.run(c, tx);
      const url = new URL(c.req.url);
      const hash = await requestHash(c.req.method, url.pathname + url.search, c.get('rawBody') ?? new Uint8Array());
      // Scoped to the route: the same key on two routes names two requests.
      return runIdempotent(tx, { key: `${route.method} ${route.path} ${key}`, hash, ttlMs }, (inner) => route.run(c, inner));
    };
    const result = forward ? await db.transaction((tx) => work(bindToTransaction(tx, db.kind))) : await work(db);
    if (result.replayed) c.get('metrics').replayed = true;
    const headers = responseHeaders(c);
    if (result.replayed) headers[REPLAYED_HEADER] = 'true';
    if (result.status === 204) return new Response(null, { status: 204, headers });
    headers['content-type'] = 'application/json';
    return new Response(JSON.stringify(result.body), { status: result.status, headers });
  };
}

/** A cached route's answer, with the request's headers and its Cache-Status (RFC 9211). */
function answer(c: Context<AppEnv>, served: { status: number; body: string | undefined; cacheStatus: string }): Response {
  const headers = responseHeaders(c);
  headers['cache-status'] = served.cacheStatus;
  if (served.body === undefined) return new Response(null, { status: served.status, headers });
  headers['content-type'] = 'application/json';
  return new Response(served.body, { status: served.status, headers });
}

/** After a transactional route: the write's position (its own, or the forwarded answer's token), so this instance's cache view is read again. */
function noteWrite(cache: ReadCache): MiddlewareHandler<AppEnv> {
  return async function noteWrite(c, next) {
    await next();
    const lsn = c.get('metrics').position ?? tokenPosition(c.res.headers.get(CONSISTENCY_HEADER));
    if (lsn !== undefined) cache.noteWrite(lsn);
  };
}

function tokenPosition(raw: string | null): string | undefined {
  try {
    return parseToken(raw ?? undefined)?.lsn;
  } catch {
    return undefined;
  }
}

/**
 * Parses the route's params and query with its schemas, checks a transactional route's
 * Idempotency-Key, reads the body once (size-capped) and parses it: 4xx before any database
 * work, or any forward (the edge refuses what the Node side would, before signing anything).
 */
function parseInput(route: RouteSpec): MiddlewareHandler<AppEnv> {
  return async function parseInput(c, next) {
    const key = route.kind === 'transactional' ? c.req.header(IDEMPOTENCY_HEADER) : undefined;
    if (key !== undefined) checkKey(key);
    if (route.params) c.set('params', parseWith(route.params, c.req.param()));
    if (route.query) c.set('query', parseWith(route.query, c.req.query()));
    if (route.body) c.set('body', await jsonBody(c, route.body));
    else if (!BODYLESS.has(c.req.method)) await takeBody(c);
    await next();
  };
}

/**
 * Hono hands only Error instances to onError; anything else thrown (a socket's ErrorEvent) would
 * pass the stats middleware as a raw throw and escape the app as the runtime's own 500. On each
 * route, just around its handler, it becomes an Error, so onError answers and the stats see it.
 */
async function onlyErrors(_c: Context, next: () => Promise<void>): Promise<void> {
  try {
    await next();
  } catch (err) {
    throw err instanceof Error ? err : new Error('A non-Error value was thrown.', { cause: err });
  }
}

/** The middleware every part of poolgate runs first: errors as JSON, the request's stats and Db. */
function commonMiddleware(deps: Parts): MiddlewareHandler<AppEnv>[] {
  const stats = connStats({
    requestLog: deps.requestLog,
    registry: deps.registry,
    database: deps.database,
    requestTimeoutMs: deps.requestTimeoutMs ?? 15_000,
    readHeader: deps.readHeader,
    onClientGone: deps.onClientGone,
    consistencyCookie: deps.consistencyCookie,
  }) as unknown as MiddlewareHandler<AppEnv>;
  return [onlyErrors, stats];
}

/**
 * The one mapping of errors to responses: JSON with a stable code; a 5xx's cause is logged, never
 * answered. The request's own line carries both (conn-stats → RequestLog, bounded under load);
 * only an error outside it (no metrics: it never ran) is logged here.
 */
function answerError(log: Log | undefined): ErrorHandler<AppEnv> {
  return (err, c) => {
    const appErr = toAppError(err);
    const cause = appErr.status >= 500 ? describeCause(appErr.extra.cause ?? err) : undefined;
    const metrics = c.get('metrics') as RequestMetrics | undefined;
    if (metrics) metrics.failure = { code: appErr.code, cause };
    else if (cause !== undefined)
      log?.(
        `request ${requestIdOf(c)} ${c.req.method} ${c.req.path} → ${appErr.status} ${appErr.code} (${cause})`,
        {
          event: 'request',
          requestId: requestIdOf(c),
          method: c.req.method,
          route: c.req.path,
          status: appErr.status,
          code: appErr.code,
          cause,
        },
        'error',
      );
    const res = appErr.toResponse(requestIdOf(c));
    // The rest of an oversized body is never read and the server closes the socket soon after:
    // a keep-alive client must not send its next request on it (that request would be lost).
    if (appErr.status === 413) res.headers.set('connection', 'close');
    return res;
  };
}

const describeCause = (cause: unknown): string =>
  cause instanceof Error && !('code' in cause) ? `${cause.name}: ${cause.message}` : describeError(cause);

function routesApp(routes: readonly RouteSpec[], deps: Parts, common: MiddlewareHandler<AppEnv>[], mounted: boolean): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  for (const route of routes) {
    const handler: Handler<AppEnv> =
      route.kind === 'transactional' && deps.transactional
        ? deps.transactional(route)
        : runHere(route, deps.idempotencyTtlMs ?? 86_400_000, deps.readCache);
    register(app, route.method, route.path, [
      ...common,
      async function declaredRoute(c, next) {
        c.set('routePattern', route.path);
        c.set('bodyLimitBytes', deps.bodyLimitBytes);
        c.get('metrics').intent = route.kind;
        await next();
      },
      // Health and stats keep answering while draining (readiness then says so); the routes refuse.
      ...(deps.drain ? [deps.drain.middleware] : []),
      ...(deps.verify ? [deps.verify] : []),
      ...(deps.readCache && route.kind === 'transactional' ? [noteWrite(deps.readCache)] : []),
      parseInput(route),
      onlyErrors,
      handler,
    ]);
  }
  // Mounted in the application's own app, the part answers its own errors. Inside the whole app
  // the app's handler does (a part's own handler would wrap every middleware of every route).
  if (mounted) app.onError(answerError(deps.log));
  return app;
}

function opsApp(deps: Parts, common: MiddlewareHandler<AppEnv>[], mounted: boolean): Hono<AppEnv> {
  const ops = opsRoutes({
    database: deps.database,
    registry: deps.registry,
    drain: deps.drain,
    readyTimeoutMs: deps.readyTimeoutMs ?? 1000,
    access: deps.opsAccess,
    dashboard: deps.dashboard,
    before: common,
  });
  if (mounted) ops.onError(answerError(deps.log));
  return ops;
}

function wholeApp(routes: readonly RouteSpec[], deps: Parts, options: { openapi?: OpenApiInfo }): Hono<AppEnv> {
  const common = commonMiddleware(deps);
  const app = new Hono<AppEnv>();
  // Outermost, once for every request: unmatched ones (404/405) get a request id and are counted
  // too, so the parts inside carry no middleware of their own.
  app.use('*', ...common);
  app.route('/', opsApp(deps, [], false));
  app.route('/', routesApp(routes, deps, [], false));
  if (options.openapi) {
    const document = openApiDocument(routes, options.openapi);
    app.get('/openapi.json', (c) => {
      c.set('routePattern', '/openapi.json');
      return c.json(document);
    });
  }
  app.notFound(routeNotFound(app));
  app.onError(answerError(deps.log));
  return app;
}

/**
 * poolgate's parts for one runtime, for the application to mount.
 * @example const pg = createPoolgate({ database, registry, bodyLimitBytes: 65536 }); app.route('/', pg.routes(myRoutes));
 */
export function createPoolgate(options: PoolgateDeps): Poolgate {
  const requestLog = options.requestLog ?? (options.log && new RequestLog({ log: options.log }));
  const deps: Parts = { ...options, requestLog, readCache: readCacheFor(options) };
  return {
    runtime: deps.transactional ? 'edge' : 'node',
    routes: (routes) => routesApp(routes, deps, commonMiddleware(deps), true),
    ops: () => opsApp(deps, commonMiddleware(deps), true),
    app: (routes, options = {}) => wholeApp(routes, deps, options),
  };
}

function readCacheFor(deps: PoolgateDeps): ReadCache | undefined {
  if (!deps.cache) return undefined;
  return new ReadCache({
    database: deps.database,
    store: deps.cache.store,
    maxStalenessMs: deps.cache.maxStalenessMs,
    requestTimeoutMs: deps.requestTimeoutMs ?? 15_000,
    log: deps.log,
  });
}

export interface AppDeps extends PoolgateDeps {
  /** The API: each route declared once as `read` or `transactional`. */
  routes: readonly RouteSpec[];
  openapi?: OpenApiInfo;
}

/** The whole app over `deps.routes` (what the runtime entries serve when the application brings no Hono app of its own). */
export function createApp(deps: AppDeps): Hono<AppEnv> {
  return createPoolgate(deps).app(deps.routes, { openapi: deps.openapi });
}

/** The application's own Hono app around poolgate's parts, or poolgate's whole app over its routes. */
export function buildApp(app: PoolgateApp, pg: Poolgate): FetchApp {
  return app.hono ? app.hono(pg) : pg.app(app.routes, { openapi: app.openapi });
}
