/**
 * route(): the public way to declare a route. Its schemas are checked before any database work
 * and its handler receives them parsed and typed, with the request's `Db`.
 */
import type { Context } from 'hono';
import type { z } from 'zod';
import { checkPolicy } from '../cache/policy.js';
import type { Db } from '../db/types.js';
import type { AppEnv, RouteResult, RouteSpec } from './types.js';

type Parsed<S, Otherwise> = S extends z.ZodType ? z.output<S> : Otherwise;

/** What a handler receives: the request's database and its input, parsed with the route's schemas. */
export interface RouteRequest<P, Q, B> {
  /** The request's database: `query`, `readBatch`, `transaction`; bound to the request's transaction where there is one. */
  db: Db;
  params: P;
  query: Q;
  body: B;
  /** The Hono context, for headers and anything else. */
  c: Context<AppEnv>;
}

export interface RouteDeclaration<
  P extends z.ZodType | undefined,
  Q extends z.ZodType | undefined,
  B extends z.ZodType | undefined,
> extends Omit<RouteSpec, 'run' | 'params' | 'query' | 'body'> {
  params?: P;
  query?: Q;
  body?: B;
  handler: (
    request: RouteRequest<Parsed<P, Record<string, string>>, Parsed<Q, Record<string, string>>, Parsed<B, undefined>>,
  ) => Promise<RouteResult>;
}

/**
 * Declares a route: `read` (at the edge it runs on Neon) or `transactional` (at the edge it is
 * forwarded, signed, to the Node function; on Node it runs on the pg Pool).
 * @example
 * route({
 *   method: 'GET', path: '/api/notes/:id', kind: 'read',
 *   params: z.object({ id: z.uuid() }),
 *   handler: async ({ db, params }) => ({ status: 200, body: (await db.query('SELECT * FROM notes WHERE id = $1', [params.id])).rows[0] }),
 * })
 */
export function route<
  P extends z.ZodType | undefined = undefined,
  Q extends z.ZodType | undefined = undefined,
  B extends z.ZodType | undefined = undefined,
>(declaration: RouteDeclaration<P, Q, B>): RouteSpec {
  const { handler, ...spec } = declaration;
  return {
    ...spec,
    ...(spec.cache ? { cache: checkPolicy(spec, spec.cache) } : {}),
    run: (c, db) =>
      handler({
        db,
        c,
        params: (c.get('params') ?? c.req.param()) as Parsed<P, Record<string, string>>,
        query: (c.get('query') ?? c.req.query()) as Parsed<Q, Record<string, string>>,
        body: c.get('body') as Parsed<B, undefined>,
      }),
  };
}
