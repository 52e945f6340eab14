/**
 * What a route table is made of, for any API on poolgate: each route says once whether it only
 * reads (`read`: at the edge it runs on Neon, and a lost connection may be retried) or may write
 * (`transactional`: at the edge it is forwarded, signed, to the Node function; retried only as a
 * whole transaction or when it provably never reached the database).
 */
import type { Context } from 'hono';
import type { z } from 'zod';
import type { Db } from '../db/types.js';
import type { ForwardNonce } from '../idempotency/nonces.js';
import type { ConnStatsVariables } from '../middleware/conn-stats.js';

export type RouteKind = 'read' | 'transactional';

export interface AppEnv {
  Variables: ConnStatsVariables & {
    bodyLimitBytes: number;
    /** The request body, read once (size-capped) before any database work; see takeBody(). */
    rawBody?: Uint8Array<ArrayBuffer>;
    /** The body parsed with the route's `body` schema, before any database work (and at the edge, before signing). */
    body?: unknown;
    /** The verified forward's nonce (Node side of a signed forward), recorded in the route's transaction. */
    forward?: ForwardNonce;
  };
}

/** What a route produces: a status and a JSON body (none for 204). Kept as data so an idempotent replay can store it. */
export interface RouteResult {
  status: 200 | 201 | 204;
  body?: unknown;
}

export interface RouteSpec {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  path: string;
  kind: RouteKind;
  /** The JSON body's schema: checked before any database work, and at the edge before forwarding. */
  body?: z.ZodType;
  /** Runs the route against `db` (the request's Db, or one bound to the request's transaction). */
  run: (c: Context<AppEnv>, db: Db) => Promise<RouteResult>;
}

/**
 * A route's `body` schema and a `run` that receives the parsed body, typed.
 * @example { method: 'POST', path: '/api/things', kind: 'transactional', ...withBody(thing, (c, db, input) => …) }
 */
export function withBody<S extends z.ZodType>(
  schema: S,
  run: (c: Context<AppEnv>, db: Db, body: z.infer<S>) => Promise<RouteResult>,
): Pick<RouteSpec, 'body' | 'run'> {
  return { body: schema, run: (c, db) => run(c, db, c.get('body') as z.infer<S>) };
}
