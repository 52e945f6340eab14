/**
 * Netlify Edge Functions entry (Deno). Built by `npm run build` into
 * dist/netlify/edge-functions/poolgate.js, which netlify.toml maps onto the API paths. Env comes
 * from `Netlify.env` on Netlify, or `Deno.env` when run under plain Deno (tests, local).
 */
import * as driver from '@neondatabase/serverless';
import { buildOnce, parseEdgeConfig } from '../config.js';
import { createEdgeApp } from '../edge-app.js';
import { fitnessRoutes } from '../routes/fitness.js';
import { denoNeverSent } from './fetch-errors.js';

declare const Netlify: { env: { toObject(): Record<string, string> } } | undefined;
declare const Deno: { env: { toObject(): Record<string, string> } } | undefined;

function readEnv(): Record<string, string> {
  if (typeof Netlify !== 'undefined') return Netlify.env.toObject();
  if (typeof Deno !== 'undefined') return Deno.env.toObject();
  return {};
}

/** What Netlify passes as the second argument; `waitUntil` lets the request's WebSocket pool end after the response. */
interface NetlifyContext {
  waitUntil?(promise: Promise<unknown>): void;
}

const appFor = buildOnce(() =>
  createEdgeApp(parseEdgeConfig(readEnv()), {
    routes: fitnessRoutes,
    driver,
    neverSent: denoNeverSent,
    scope: 'netlify-edge isolate',
    log: (line) => console.log(line),
  }),
);

export default function poolgate(request: Request, context?: NetlifyContext): Response | Promise<Response> {
  const app = appFor(undefined, request);
  if (app instanceof Response) return app;
  // `hono/netlify` (deprecated) did only this: hand Netlify's context over as the env.
  const ctx = context?.waitUntil
    ? { waitUntil: (p: Promise<unknown>) => context.waitUntil!(p), passThroughOnException() {}, props: {} }
    : undefined;
  return app.fetch(request, { context }, ctx);
}
