/**
 * createApp(deps) → the Hono app. Knows no runtime and no driver: the database backend, the
 * stats registry and (at the edge) the handler for transactional routes are passed in.
 */
import { Hono, type Context, type Handler, type MiddlewareHandler } from 'hono';
import { bindToTransaction } from './db/tx-db.js';
import type { Database, Db } from './db/types.js';
import { claimNonce } from './idempotency/nonces.js';
import { AppError, describeError, toAppError } from './errors.js';
import type { Drain } from './lifecycle/drain.js';
import { connStats, requestIdOf, responseHeaders } from './middleware/conn-stats.js';
import { checkKey, IDEMPOTENCY_HEADER, REPLAYED_HEADER, requestHash, runIdempotent } from './idempotency/idempotency.js';
import type { AppEnv, RouteResult, RouteSpec } from './routes/types.js';
import { jsonBody, takeBody } from './routes/input.js';
import { opsRoutes, type OpsAccess } from './routes/ops.js';
import type { StatsRegistry } from './stats/registry.js';

export interface AppDeps {
  /** The API: each route declared once as `read` or `transactional`. */
  routes: readonly RouteSpec[];
  database: Database;
  registry: StatsRegistry;
  bodyLimitBytes: number;
  readyTimeoutMs?: number;
  drain?: Drain;
  log?: (line: string) => void;
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
  /** A runtime's signal for "the client went away" (Node's comes from the socket; default: the Request's). */
  clientSignal?: (c: Context) => AbortSignal | undefined;
}

const BODYLESS = new Set(['GET', 'HEAD']);

/**
 * Runs a route here, on this process's database. A transactional route's work, its idempotency
 * record and (behind a signed forward) its nonce are one transaction: either all of it is
 * written or none. The body was read and parsed before (parseBody), so a transaction that runs
 * again (40001/40P01) sees the same input, and a slow upload holds no connection.
 */
function runHere(route: RouteSpec, ttlMs: number): Handler<AppEnv> {
  return async function runRoute(c) {
    const key = route.kind === 'transactional' ? c.req.header(IDEMPOTENCY_HEADER) : undefined;
    if (key !== undefined) checkKey(key);
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

/** Reads the body once (size-capped) and parses it with the route's schema: 4xx before any database work, or any forward. */
function parseBody(route: RouteSpec): MiddlewareHandler<AppEnv> {
  return async function parseBody(c, next) {
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

/** The methods the routes (and the ops endpoints, GET) serve on a concrete path, for 405's Allow header. */
function methodsByPath(routes: readonly RouteSpec[]): (path: string) => string[] {
  const OPS = ['/health', '/health/ready', '/stats', '/metrics'].map((path) => ({ method: 'GET', path }));
  const patterns = [...routes, ...OPS].map((r) => ({
    method: r.method,
    re: new RegExp(`^${r.path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/:\w+/g, '[^/]+')}$`),
  }));
  return (path) => {
    const methods = new Set(patterns.filter((p) => p.re.test(path)).map((p) => p.method));
    if (methods.has('GET')) methods.add('HEAD');
    return [...methods];
  };
}

export function createApp(deps: AppDeps): Hono<AppEnv> {
  const log = deps.log ?? (() => {});
  const app = new Hono<AppEnv>();

  // Outermost safety net for what onlyErrors (on each route) did not see: never the runtime's own 500.
  app.use('*', onlyErrors);
  app.use(
    '*',
    connStats({
      registry: deps.registry,
      database: deps.database,
      requestTimeoutMs: deps.requestTimeoutMs ?? 15_000,
      readHeader: deps.readHeader,
      clientSignal: deps.clientSignal,
    }),
  );
  app.use('*', async (c, next) => {
    c.set('bodyLimitBytes', deps.bodyLimitBytes);
    await next();
  });

  app.route(
    '/',
    opsRoutes({
      database: deps.database,
      registry: deps.registry,
      drain: deps.drain,
      readyTimeoutMs: deps.readyTimeoutMs ?? 1000,
      access: deps.opsAccess,
    }),
  );

  for (const route of deps.routes) {
    const handler: Handler<AppEnv> =
      route.kind === 'transactional' && deps.transactional
        ? deps.transactional(route)
        : runHere(route, deps.idempotencyTtlMs ?? 86_400_000);
    app.on(
      route.method,
      route.path,
      async (c, next) => {
        c.set('routePattern', route.path);
        c.get('metrics').intent = route.kind;
        await next();
      },
      // Health and stats keep answering while draining (readiness then says so); the routes refuse.
      ...(deps.drain ? [deps.drain.middleware] : []),
      ...(deps.verify ? [deps.verify] : []),
      parseBody(route),
      onlyErrors,
      handler,
    );
  }

  const allowedOn = methodsByPath(deps.routes);
  app.notFound((c) => {
    const allow = allowedOn(c.req.path);
    if (allow.length === 0)
      return new AppError(404, 'route_not_found', `No route for ${c.req.method} ${c.req.path}.`).toResponse(requestIdOf(c));
    const res = new AppError(405, 'method_not_allowed', `${c.req.method} is not allowed here; use ${allow.join(', ')}.`).toResponse(
      requestIdOf(c),
    );
    res.headers.set('allow', allow.join(', '));
    return res;
  });

  app.onError((err, c) => {
    const appErr = toAppError(err);
    if (appErr.status >= 500) {
      const cause = appErr.extra.cause ?? err;
      const detail = cause instanceof Error && !('code' in cause) ? `${cause.name}: ${cause.message}` : describeError(cause);
      log(`request ${requestIdOf(c)} ${c.req.method} ${c.get('routePattern') ?? c.req.path} → ${appErr.status} ${appErr.code} (${detail})`);
    }
    const res = appErr.toResponse(requestIdOf(c));
    // The rest of an oversized body is never read and the server closes the socket soon after:
    // a keep-alive client must not send its next request on it (that request would be lost).
    if (appErr.status === 413) res.headers.set('connection', 'close');
    return res;
  });

  return app;
}
