/**
 * Netlify Edge Functions entry (Deno): `createEdgeFunction(app)` is the edge function's default
 * export. Env comes from `Netlify.env` on Netlify, or `Deno.env` when run under plain Deno
 * (tests, local).
 */
import * as driver from '@neondatabase/serverless';
import { buildOnce, parseEdgeConfig } from '../config.js';
import type { WebCache } from '../cache/store.js';
import type { PoolgateApp } from '../definition.js';
import { createEdgeApp } from '../edge-app.js';
import { denoNeverSent } from './fetch-errors.js';

declare const Netlify: { env: { toObject(): Record<string, string> } } | undefined;
declare const Deno: { env: { toObject(): Record<string, string> } } | undefined;

function readEnv(): Record<string, string> {
  if (typeof Netlify !== 'undefined') return Netlify.env.toObject();
  if (typeof Deno !== 'undefined') return Deno.env.toObject();
  return {};
}

/** Netlify's Cache API (standard CacheStorage, per region) or Deno's; none: the isolate's own LRU only. */
function openCache(): Promise<WebCache> | undefined {
  const storage = (globalThis as { caches?: { open?(name: string): Promise<WebCache> } }).caches;
  return storage?.open ? storage.open('poolgate') : undefined;
}

/** What Netlify passes as the second argument; `waitUntil` lets the request's WebSocket pool end after the response. */
export interface NetlifyContext {
  waitUntil?(promise: Promise<unknown>): void;
}

export type EdgeFunction = (request: Request, context?: NetlifyContext) => Response | Promise<Response>;

/**
 * The Netlify Edge Function for `app` (map it onto your API paths in netlify.toml).
 * @example export default createEdgeFunction(app);
 */
export function createEdgeFunction(app: PoolgateApp): EdgeFunction {
  const appFor = buildOnce(() =>
    createEdgeApp(parseEdgeConfig(readEnv()), {
      app,
      driver,
      neverSent: denoNeverSent,
      scope: 'netlify-edge isolate',
      platformCache: openCache(),
    }),
  );
  return function poolgate(request, context) {
    const built = appFor(undefined, request);
    if (built instanceof Response) return built;
    // `hono/netlify` (deprecated) did only this: hand Netlify's context over as the env.
    const ctx = context?.waitUntil
      ? { waitUntil: (p: Promise<unknown>) => context.waitUntil!(p), passThroughOnException() {}, props: {} }
      : undefined;
    return built.fetch(request, { context }, ctx);
  };
}
