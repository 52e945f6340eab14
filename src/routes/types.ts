/**
 * What a route table is made of, for any API on poolgate: each route says once whether it only
 * reads (`read`: at the edge it runs on Neon, and a lost connection may be retried) or may write
 * (`transactional`: at the edge it is forwarded, signed, to the Node function; retried only as a
 * whole transaction or when it provably never reached the database). Its params, query and body
 * schemas are checked before any database work (and at the edge before forwarding), and describe
 * the route in the OpenAPI document with its response schema.
 */
import type { Context } from 'hono';
import type { z } from 'zod';
import type { CachePolicy } from '../cache/policy.js';
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
    /** The path parameters parsed with the route's `params` schema (else Hono's strings). */
    params?: unknown;
    /** The query string parsed with the route's `query` schema (else the last value of each name). */
    query?: unknown;
    /** The verified forward's nonce (Node side of a signed forward), recorded in the route's transaction. */
    forward?: ForwardNonce;
  };
}

/** What a route produces: a status and a JSON body (none for 204). Kept as data so an idempotent replay can store it. */
export interface RouteResult {
  status: 200 | 201 | 204;
  body?: unknown;
}

/** The success answer of a route, for its OpenAPI document. */
export interface RouteResponse {
  status: RouteResult['status'];
  /** The JSON body's schema (none for 204). */
  body?: z.ZodType;
  description?: string;
}

export type RouteMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface RouteSpec {
  method: RouteMethod;
  /** Hono path syntax: `/api/things/:id`. */
  path: string;
  kind: RouteKind;
  /** Schema of the path parameters (an object keyed by parameter name). Failures answer 400 `validation_failed`. */
  params?: z.ZodType;
  /** Schema of the query string (an object; each name's last value, a string). Failures answer 400. */
  query?: z.ZodType;
  /** The JSON body's schema: checked before any database work, and at the edge before forwarding. */
  body?: z.ZodType;
  /** The success answer (status and body schema), for the OpenAPI document. */
  response?: RouteResponse;
  /** Error statuses the route itself can answer (e.g. 404, 409), besides those poolgate adds. */
  errors?: readonly number[];
  /**
   * A `read` GET route's answers cached (cache/policy.ts): ttl, stale-while-revalidate, the
   * tables it reads (a committed write to them outdates it), the headers it varies by. None: never cached.
   */
  cache?: CachePolicy;
  /** One line for the OpenAPI document. */
  summary?: string;
  tags?: readonly string[];
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
