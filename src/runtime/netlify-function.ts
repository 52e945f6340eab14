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
import type { Hono } from 'hono';
import { buildOnce, ConfigError, parseConfig } from '../config.js';
import { IdempotencyPurger } from '../idempotency/purge.js';
import type { AppEnv } from '../routes/types.js';
import { createNodeApp } from './node-app.js';

const BASE_PATH = '/.netlify/functions/gateway';

interface Instance {
  app: Hono<AppEnv>;
  purger: IdempotencyPurger;
}

const instanceFor = buildOnce(build);

function build(): Instance {
  const config = parseConfig(process.env);
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'is required for the Node function');
  if (!config.forwardSecret) throw new ConfigError('FORWARD_SECRET', 'is required for the Node function');
  const log = config.logLevel === 'silent' ? () => {} : (line: string) => console.log(line);
  const { app, database, drain } = createNodeApp(config, { scope: 'netlify-function instance', connectionString: config.databaseUrl, log });
  // The platform's stop signal: finish what is in flight (bounded), end the pool, then exit as SIGTERM would.
  process.once('SIGTERM', () => {
    void drain
      .start(config.shutdownTimeoutMs)
      .then(() => database.close())
      .finally(() => process.exit(0));
  });
  return { app, purger: new IdempotencyPurger(database, config.idempotencyPurgeIntervalMs, log) };
}

export default async function gateway(request: Request): Promise<Response> {
  const instance = instanceFor(undefined, request);
  if (instance instanceof Response) return instance;
  // The app's routes are /api/…; strip the function's own prefix (the signature covers /api/…).
  const url = new URL(request.url);
  if (url.pathname.startsWith(BASE_PATH)) url.pathname = url.pathname.slice(BASE_PATH.length) || '/';
  void instance.purger.runIfDue();
  return instance.app.fetch(new Request(url, request));
}
