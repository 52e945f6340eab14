/**
 * Netlify Functions (Node) entry: `createNodeFunction(app)` is the target of the edge's signed
 * forwards. The pg Pool lives at module scope, so a warm function container reuses its
 * connections; FORWARD_SECRET is required and checked before any DB work. Like the Node gateway
 * it drains in-flight requests on SIGTERM before ending the pool, and purges expired idempotency
 * records — here when an invocation finds a purge due, since a function has no timer between
 * invocations. Migrations are not run here: run `poolgate migrate --app <module>` once per deploy.
 */
import { buildOnce, ConfigError, parseConfig } from '../config.js';
import type { FetchApp, PoolgateApp } from '../definition.js';
import { IdempotencyPurger } from '../idempotency/purge.js';
import { createNodeApp } from './node-app.js';

export interface NodeFunctionOptions {
  /** The path the function is served at; stripped before routing (default `/.netlify/functions/gateway`). */
  basePath?: string;
}

interface Instance {
  app: FetchApp;
  purger: IdempotencyPurger;
}

function build(app: PoolgateApp): Instance {
  const config = parseConfig(process.env);
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'is required for the Node function');
  if (!config.forwardSecret) throw new ConfigError('FORWARD_SECRET', 'is required for the Node function');
  const log = config.logLevel === 'silent' ? () => {} : (line: string) => console.log(line);
  const built = createNodeApp(config, { app, scope: 'netlify-function instance', connectionString: config.databaseUrl, log });
  // The platform's stop signal: finish what is in flight (bounded), end the pool, then exit as SIGTERM would.
  process.once('SIGTERM', () => {
    void built.drain
      .start(config.shutdownTimeoutMs)
      .then(() => built.database.close())
      .finally(() => process.exit(0));
  });
  return { app: built.app, purger: new IdempotencyPurger(built.database, config.idempotencyPurgeIntervalMs, log) };
}

/**
 * The Netlify Function (Node) for `app`: the edge forwards transactional routes here, signed.
 * @example export default createNodeFunction(app); export const config = { path: '/.netlify/functions/gateway/*' };
 */
export function createNodeFunction(app: PoolgateApp, options: NodeFunctionOptions = {}): (request: Request) => Promise<Response> {
  const basePath = options.basePath ?? '/.netlify/functions/gateway';
  const instanceFor = buildOnce(() => build(app));
  return async function gateway(request) {
    const instance = instanceFor(undefined, request);
    if (instance instanceof Response) return instance;
    // The app's routes are /api/…; strip the function's own prefix (the signature covers /api/…).
    const url = new URL(request.url);
    if (url.pathname.startsWith(basePath)) url.pathname = url.pathname.slice(basePath.length) || '/';
    void instance.purger.runIfDue();
    return instance.app.fetch(new Request(url, request));
  };
}
