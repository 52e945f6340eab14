/**
 * Netlify Functions (Node) entry: `createNodeFunction(app)` is the target of the edge's signed
 * forwards. The pg Pool lives at module scope, so a warm function container reuses its
 * connections; FORWARD_SECRET is required and checked before any DB work. Like the Node gateway
 * it drains in-flight requests on SIGTERM before ending the pool, and purges expired idempotency
 * records — here when an invocation finds a purge due, since a function has no timer between
 * invocations. Migrations are not run here: run `poolgate migrate --app <module>` once per deploy.
 *
 * Routing. Netlify serves a function that exports no `config.path` at
 * `/.netlify/functions/<file name>`, and the paths below it reach it too: the edge forwards to
 * NODE_FUNCTION_URL + `/api/…`. A `config.path` would replace that URL (Netlify serves such a
 * function only at its path), so export none; the prefix is stripped whatever the file is named.
 */
import { nodeLog } from './node-log.js';
import { buildOnce, ConfigError, parseConfig } from '../config.js';
import type { FetchApp, PoolgateApp } from '../definition.js';
import { IdempotencyPurger } from '../idempotency/purge.js';
import { createNodeApp } from './node-app.js';

export interface NodeFunctionOptions {
  /** The path the function is served at, stripped before routing (default: `/.netlify/functions/<any name>`). */
  basePath?: string;
}

/** Netlify's default URL of a function, `/.netlify/functions/<name>`. */
const DEFAULT_URL = /^\/\.netlify\/functions\/[^/]+/;

/** The app's own path: the request's, without the function's URL (the signature covers /api/…). */
function pathWithin(pathname: string, basePath: string | undefined): string {
  if (basePath === undefined) return pathname.replace(DEFAULT_URL, '') || '/';
  return pathname.startsWith(basePath) ? pathname.slice(basePath.length) || '/' : pathname;
}

interface Instance {
  app: FetchApp;
  purger: IdempotencyPurger;
}

function build(app: PoolgateApp): Instance {
  const config = parseConfig(process.env);
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'is required for the Node function');
  if (!config.forwardSecret) throw new ConfigError('FORWARD_SECRET', 'is required for the Node function');
  const log = nodeLog({ level: config.logLevel, format: config.logFormat });
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
 * @example
 * // netlify/functions/gateway.ts — no `config` export: NODE_FUNCTION_URL = https://<site>/.netlify/functions/gateway
 * export default createNodeFunction(app);
 */
export function createNodeFunction(app: PoolgateApp, options: NodeFunctionOptions = {}): (request: Request) => Promise<Response> {
  const instanceFor = buildOnce(() => build(app));
  return async function gateway(request) {
    const instance = instanceFor(undefined, request);
    if (instance instanceof Response) return instance;
    const url = new URL(request.url);
    url.pathname = pathWithin(url.pathname, options.basePath);
    void instance.purger.runIfDue();
    return instance.app.fetch(new Request(url, request));
  };
}
