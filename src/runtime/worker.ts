/**
 * Cloudflare Workers entry (wrangler.toml `main`). The app is built on the first request of an
 * isolate, from that request's env, and reused; nothing that does I/O lives at module scope
 * (each request gets its own Neon WebSocket pool, ended through ctx.waitUntil).
 */
import * as driver from '@neondatabase/serverless';
import type { ExecutionContext } from 'hono';
import { buildOnce, parseEdgeConfig } from '../config.js';
import { createEdgeApp } from '../edge-app.js';
import { fitnessRoutes } from '../routes/fitness.js';

type Env = Record<string, string | undefined>;

const appFor = buildOnce((env: Env) =>
  createEdgeApp(parseEdgeConfig(env), { routes: fitnessRoutes, driver, scope: 'workerd isolate', log: (line) => console.log(line) }),
);

export default {
  fetch(request: Request, env: Env, ctx: ExecutionContext): Response | Promise<Response> {
    const app = appFor(env, request);
    return app instanceof Response ? app : app.fetch(request, env, ctx);
  },
};
