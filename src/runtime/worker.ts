/**
 * Cloudflare Workers (workerd) entry: `createWorker(app)` is the module's default export. The
 * app is built on the first request of an isolate, from that request's env, and reused; nothing
 * that does I/O lives at module scope (each request gets its own Neon WebSocket pool, ended
 * through ctx.waitUntil).
 */
import * as driver from '@neondatabase/serverless';
import type { ExecutionContext } from 'hono';
import { buildOnce, parseEdgeConfig } from '../config.js';
import type { WebCache } from '../cache/store.js';
import type { PoolgateApp } from '../definition.js';
import { createEdgeApp } from '../edge-app.js';

type Env = Record<string, string | undefined>;

/** What a Worker module exports: its fetch handler. */
export interface Worker {
  fetch(request: Request, env: Env, ctx: ExecutionContext): Response | Promise<Response>;
}

/** workerd's shared cache of this location (`caches.default`); absent where a test runtime has none. */
const workerdCache = (): WebCache | undefined => (globalThis as { caches?: { default?: WebCache } }).caches?.default;

/**
 * The Worker for `app`: reads on Neon (DATABASE_URL), transactional routes forwarded, signed
 * (FORWARD_SECRET), to NODE_FUNCTION_URL.
 * @example export default createWorker(app);
 */
export function createWorker(app: PoolgateApp): Worker {
  const appFor = buildOnce((env: Env) =>
    createEdgeApp(parseEdgeConfig(env), {
      app,
      driver,
      scope: 'workerd isolate',
      platformCache: workerdCache(),
    }),
  );
  return {
    fetch(request, env, ctx) {
      const built = appFor(env, request);
      return built instanceof Response ? built : built.fetch(request, env, ctx);
    },
  };
}
