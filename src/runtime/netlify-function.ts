/**
 * Netlify Functions (Node) entry: the target of the edge's signed forwards. Built by
 * `npm run build` into dist/netlify/functions/gateway.mjs, served at
 * /.netlify/functions/gateway/*. The pg Pool lives at module scope, so a warm function
 * container reuses its connections; FORWARD_SECRET is required and checked before any DB work.
 * Migrations are not run here: run `npm run migrate` against the database once per deploy.
 */
import pg from 'pg';
import type { Hono } from 'hono';
import { createApp } from '../app.js';
import { fitnessRoutes } from '../routes/fitness.js';
import { ConfigError, parseConfig } from '../config.js';
import { createPgPoolDatabase } from '../db/connectors/pg-pool.js';
import { AppError } from '../errors.js';
import { verifyForward } from '../middleware/verify-forward.js';
import type { AppEnv } from '../routes/types.js';
import { StatsRegistry } from '../stats/registry.js';

const BASE_PATH = '/.netlify/functions/gateway';
let app: Hono<AppEnv> | undefined;

function build(): Hono<AppEnv> {
  const config = parseConfig(process.env);
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'is required for the Node function');
  if (!config.forwardSecret) throw new ConfigError('FORWARD_SECRET', 'is required for the Node function');
  const log = (line: string) => console.log(line);
  const database = createPgPoolDatabase(
    { ...config.pool, connectionString: config.databaseUrl, requestTimeoutMs: config.requestTimeoutMs },
    { Pool: pg.Pool, Client: pg.Client, log },
  );
  const registry = new StatsRegistry({
    scope: 'netlify-function instance',
    pool: () => database.stats(),
    breakers: () => database.breakers(),
  });
  const verify = verifyForward({ secret: config.forwardSecret, onReject: (reason) => log(`poolgate: refused forward (${reason})`) });
  return createApp({
    routes: fitnessRoutes,
    database,
    registry,
    bodyLimitBytes: config.bodyLimitBytes,
    idempotencyTtlMs: config.idempotencyTtlMs,
    requestTimeoutMs: config.requestTimeoutMs,
    log,
    verify,
  });
}

export default async function gateway(request: Request): Promise<Response> {
  try {
    app ??= build();
  } catch (err) {
    const message = err instanceof ConfigError ? `poolgate is misconfigured: ${err.message}` : 'poolgate failed to start.';
    console.error(message);
    return new AppError(500, 'internal', message).toResponse('unknown');
  }
  // The app's routes are /api/…; strip the function's own prefix (the signature covers /api/…).
  const url = new URL(request.url);
  if (url.pathname.startsWith(BASE_PATH)) url.pathname = url.pathname.slice(BASE_PATH.length) || '/';
  return app.fetch(new Request(url, request));
}
