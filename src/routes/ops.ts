/**
 * Operational endpoints: liveness (no I/O), readiness (a short DB ping and pool state), stats
 * JSON and Prometheus metrics, and the live dashboard over the stats (dashboard/). None of them names the database host, user or URL. Who may read
 * them (opsAccessFor, the one rule for every runtime): /health anyone; /stats, /metrics and
 * readiness details whoever sends OPS_TOKEN as a bearer token — and, where no token is set,
 * anyone only in development or on a Node gateway open to unsigned traffic. Readiness without the
 * token still answers its status code with a bare body, so load balancers need no secret.
 */
import { Hono, type Context, type Handler, type MiddlewareHandler } from 'hono';
import { register } from './register.js';
import { AppError } from '../errors.js';
import type { Database } from '../db/types.js';
import type { Drain } from '../lifecycle/drain.js';
import { DASHBOARD_CSP, dashboardFiles } from './dashboard/page.js';
import { PROMETHEUS_CONTENT_TYPE, renderPrometheus } from '../stats/prometheus.js';
import type { StatsRegistry } from '../stats/registry.js';
import type { AppEnv } from './types.js';

export interface OpsAccess {
  /** OPS_TOKEN; when set, required for the details. */
  token?: string | undefined;
  /** Without a token, the details are refused (a gateway that accepts only signed traffic). */
  locked?: boolean;
}

/**
 * The one rule for who reads the figures. `exposed`: the app faces callers it does not know —
 * the edge always, a Node gateway once it accepts only signed traffic (a gateway without
 * FORWARD_SECRET is a development or private one and stays open). Outside development, an
 * exposed app without OPS_TOKEN shows its figures to no one.
 * @example createPoolgate({ …, opsAccess: opsAccessFor({ token: config.opsToken, development: config.development, exposed: true }) })
 */
export function opsAccessFor({
  token,
  development,
  exposed,
}: {
  token: string | undefined;
  development: boolean;
  exposed: boolean;
}): OpsAccess {
  return { token, locked: exposed && !development };
}

export interface OpsOptions {
  database: Database;
  registry: StatsRegistry;
  drain?: Drain;
  readyTimeoutMs: number;
  access?: OpsAccess;
  /**
   * Serve the live dashboard (GET /dashboard; DASHBOARD=on|off, on by default in development). The
   * page itself holds no figures and cannot send a bearer header from a link, so it is served
   * wherever /stats could be read by someone — not where no one may (an exposed app outside
   * development without OPS_TOKEN) — and asks for OPS_TOKEN when /stats answers 401.
   */
  dashboard?: boolean;
  /** Middleware each endpoint runs first (the request's stats), so mounting them adds nothing to other routes. */
  before?: MiddlewareHandler<AppEnv>[];
}

const sha256 = async (text: string) => new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text)));

/** Compares digests, not the strings, so the time taken says nothing about the token. */
async function sameSecret(given: string, expected: string): Promise<boolean> {
  const [a, b] = await Promise.all([sha256(given), sha256(expected)]);
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

function opsGuard(access: OpsAccess): (c: Context) => Promise<boolean> {
  const { token, locked = false } = access;
  return async (c) => {
    if (token === undefined) return !locked;
    const header = c.req.header('authorization') ?? '';
    return header.startsWith('Bearer ') && sameSecret(header.slice('Bearer '.length), token);
  };
}

export function opsRoutes({
  database,
  registry,
  drain,
  readyTimeoutMs,
  access = {},
  dashboard = false,
  before = [],
}: OpsOptions): Hono<AppEnv> {
  const ops = new Hono<AppEnv>();
  const allowed = opsGuard(access);
  const refuse = () =>
    new AppError(
      401,
      'unauthorized',
      access.token === undefined
        ? 'Outside development the figures need OPS_TOKEN: set it, then send Authorization: Bearer <OPS_TOKEN>.'
        : 'Send Authorization: Bearer <OPS_TOKEN> to read this.',
    );
  const get = (path: string, handler: Handler<AppEnv>) =>
    register(ops, 'GET', path, [
      ...before,
      async function routePattern(c, next) {
        c.set('routePattern', path);
        await next();
      },
      handler,
    ]);

  get('/health', (c) => c.json({ status: 'ok' }));

  get('/health/ready', async (c) => {
    if (drain?.draining) {
      c.header('retry-after', '1');
      return c.json({ status: 'draining', database: { ok: false, reason: 'shutting_down' } }, 503);
    }
    const db = await database.ping(readyTimeoutMs);
    const pool = database.stats();
    const breakers = registry.snapshot().breakers;
    const ok = db.ok && !breakers.some((b) => b.state === 'open');
    const body = {
      status: ok ? 'ready' : 'unavailable',
      client: database.kind,
      database: { ok: db.ok, latencyMs: Math.round(db.latencyMs * 100) / 100, ...(db.reason ? { reason: db.reason } : {}) },
      ...(pool ? { pool: { max: pool.max, total: pool.total, active: pool.active, idle: pool.idle, waiting: pool.waiting } } : {}),
      breakers: breakers.map((b) => ({ upstream: b.name, state: b.state })),
    };
    if (!ok) c.header('retry-after', '2');
    return c.json((await allowed(c)) ? body : { status: body.status }, ok ? 200 : 503);
  });

  get('/stats', async (c) => {
    if (!(await allowed(c))) throw refuse();
    return c.json(registry.snapshot());
  });

  get('/metrics', async (c) => {
    if (!(await allowed(c))) throw refuse();
    return c.body(renderPrometheus(registry.snapshot({ histograms: true })), 200, { 'content-type': PROMETHEUS_CONTENT_TYPE });
  });

  if (dashboard) {
    const readableBySomeone = access.token !== undefined || !access.locked;
    for (const [path, file] of Object.entries(dashboardFiles))
      get(path, (c) => {
        if (!readableBySomeone) throw refuse();
        return c.body(file.body, 200, {
          'content-type': file.type,
          'cache-control': file.cacheControl,
          'content-security-policy': DASHBOARD_CSP,
          'x-content-type-options': 'nosniff',
          'referrer-policy': 'no-referrer',
        });
      });
  }
  return ops;
}
