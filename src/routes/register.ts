/**
 * Registers a route with its whole middleware chain. Hono's typed overloads do not take a spread
 * of middleware, and poolgate's chains are built from parts (stats, drain, signature check, input),
 * so the chain is typed here, once, and handed over as one list.
 */
import type { Handler, Hono, MiddlewareHandler } from 'hono';
import type { AppEnv } from './types.js';

export function register(
  app: Hono<AppEnv>,
  method: string,
  path: string,
  chain: readonly (MiddlewareHandler<AppEnv> | Handler<AppEnv>)[],
): void {
  app.on(method, path, ...(chain as [MiddlewareHandler<AppEnv>]));
}
