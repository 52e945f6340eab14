/**
 * Netlify Functions (Node) entry: the target of the edge's signed forwards. Built by
 * `npm run build` into dist/netlify/functions/gateway.mjs, served at
 * /.netlify/functions/gateway/*. The pg Pool lives at module scope, so a warm function
 * container reuses its connections; FORWARD_SECRET is required and checked before any DB work.
 * Like the Node gateway it drains in-flight requests on SIGTERM before ending the pool, and
 * purges expired idempotency records — here when an invocation finds a purge due, since a
 * function has no timer between invocations. Migrations are not run here: run
 * `DATABASE_URL=… npm run migrate` (after `npm run build`) once per deploy.
 */
import pg from 'pg';
import type { Hono } from 'hono';
import { createApp } from '../app.js';
import { fitnessRoutes } from '../routes/fitness.js';
import { ConfigError, parseConfig } from '../config.js';
import { createPgPoolDatabase } from '../db/connectors/pg-pool.js';
import { AppError } from '../errors.js';
import { IdempotencyPurger } from '../idempotency/purge.js';
import { Drain } from '../lifecycle/drain.js';
import { verifyForward } from '../middleware/verify-forward.js';
import type { AppEnv } from '../routes/types.js';
import { StatsRegistry } from '../stats/registry.js';

const BASE_PATH = '/.netlify/functions/gateway';

interface Instance {
  app: Hono<AppEnv>;
  purger: IdempotencyPurger;
}
let instance: Instance | undefined;

function build(): Instance {
  const config = parseConfig(process.env);
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'is required for the Node function');
  if (!config.forwardSecret) throw new ConfigError('FORWARD_SECRET', 'is required for the Node function');
  const log = config.logLevel === 'silent' ? () => {} : (line: string) => console.log(line);
  const database = createPgPoolDatabase(
    { ...config.pool, connectionString: config.databaseUrl, requestTimeoutMs: config.requestTimeoutMs },
    { Pool: pg.Pool, Client: pg.Client, log },
  );
  const registry = new StatsRegistry({
    scope: 'netlify-function instance',
    pool: () => database.stats(),
    breakers: () => database.breakers(),
  });
  const drain = new Drain();
  // The platform's stop signal: finish what is in flight (bounded), end the pool, then exit as SIGTERM would.
  process.once('SIGTERM', () => {
    void drain
      .start(config.shutdownTimeoutMs)
      .then(() => database.close())
      .finally(() => process.exit(0));
  });
  const verify = verifyForward({ secret: config.forwardSecret, onReject: (reason) => log(`poolgate: refused forward (${reason})`) });
  const app = createApp({
    routes: fitnessRoutes,
    database,
    registry,
    drain,
    bodyLimitBytes: config.bodyLimitBytes,
    idempotencyTtlMs: config.idempotencyTtlMs,
    requestTimeoutMs: config.requestTimeoutMs,
    log,
    verify,
  });
  return { app, purger: new IdempotencyPurger(database, config.idempotencyPurgeIntervalMs, log) };
}

export default async function gateway(request: Request): Promise<Response> {
  try {
    instance ??= build();
  } catch (err) {
    const message = err instanceof ConfigError ? `poolgate is misconfigured: ${err.message}` : 'poolgate failed to start.';
    console.error(message);
    return new AppError(500, 'internal', message).toResponse('unknown');
  }
  // The app's routes are /api/…; strip the function's own prefix (the signature covers /api/…).
  const url = new URL(request.url);
  if (url.pathname.startsWith(BASE_PATH)) url.pathname = url.pathname.slice(BASE_PATH.length) || '/';
  void instance.purger.runIfDue();
  return instance.app.fetch(new Request(url, request));
}
