/**
 * Cloudflare Workers entry (wrangler.toml `main`). The app is built on the first request of an
 * isolate, from that request's env, and reused; nothing that does I/O lives at module scope
 * (each request gets its own Neon WebSocket pool, ended through ctx.waitUntil).
 */
import * as driver from '@neondatabase/serverless';
import type { ExecutionContext, Hono } from 'hono';
import { ConfigError, parseEdgeConfig } from '../config.js';
import { createEdgeApp } from '../edge-app.js';
import { fitnessRoutes } from '../routes/fitness.js';
import { AppError } from '../errors.js';
import type { AppEnv } from '../routes/types.js';

type Env = Record<string, string | undefined>;

let app: Hono<AppEnv> | undefined;

export default {
  fetch(request: Request, env: Env, ctx: ExecutionContext): Response | Promise<Response> {
    if (!app) {
      try {
        app = createEdgeApp(parseEdgeConfig(env), {
          routes: fitnessRoutes,
          driver,
          scope: 'workerd isolate',
          log: (line) => console.log(line),
        });
      } catch (err) {
        const message = err instanceof ConfigError ? `poolgate is misconfigured: ${err.message}` : 'poolgate failed to start.';
        console.error(message);
        return new AppError(500, 'internal', message).toResponse(request.headers.get('x-request-id') ?? 'unknown');
      }
    }
    return app.fetch(request, env, ctx);
  },
};
