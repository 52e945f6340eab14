/**
 * What a route table is made of, for any API on poolgate: each route says once whether it only
 * reads (`read`: at the edge it runs on Neon, and a lost connection may be retried) or may write
 * (`transactional`: at the edge it is forwarded, signed, to the Node function; retried only as a
 * whole transaction or when it provably never reached the database).
 */
import type { Context } from 'hono';
import type { Db } from '../db/types.js';
import type { ConnStatsVariables } from '../middleware/conn-stats.js';

export type RouteKind = 'read' | 'transactional';

export interface AppEnv {
  Variables: ConnStatsVariables & {
    bodyLimitBytes: number;
    /** The request body, read once (size-capped) before any database work; see takeBody(). */
    rawBody?: Uint8Array<ArrayBuffer>;
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
  /** Runs the route against `db` (the request's Db, or one bound to an idempotency transaction). */
  run: (c: Context<AppEnv>, db: Db) => Promise<RouteResult>;
}
