/**
 * What an application on poolgate is: its routes, its schema and, optionally, its own Hono app
 * around poolgate's parts. The same definition is handed to every runtime entry (Node gateway,
 * Netlify function, Netlify Edge, workerd) and to `poolgate migrate`.
 */
import type { Hono } from 'hono';
import { checkAppName } from './db/migrate.js';
import type { Queryable } from './db/types.js';
import type { AppEnv, RouteSpec } from './routes/types.js';

/** One step of the application's schema, applied once, in `id` order, in its own transaction. */
export interface Migration {
  id: number;
  name: string;
  sql: string;
}

/** The document's `info` (title and version are required by OpenAPI). */
export interface OpenApiInfo {
  title: string;
  version: string;
  description?: string;
}

/**
 * What a runtime entry gives the application: poolgate's parts for this runtime (at the edge,
 * reads on Neon and transactional routes forwarded; on Node, everything on the pg Pool).
 */
export interface Poolgate {
  /** Where this instance runs: `edge` (workerd, Netlify Edge) or `node` (gateway, Netlify function). */
  readonly runtime: 'edge' | 'node';
  /** A Hono app serving `routes` with stats, deadlines, input checks and idempotency keys; mount it where you like. */
  routes(routes: readonly RouteSpec[]): Hono<AppEnv>;
  /** `/health`, `/health/ready`, `/stats`, `/metrics`, relative to where it is mounted. */
  ops(): Hono<AppEnv>;
  /** The whole app: the ops endpoints, the routes, `/openapi.json` when `openapi` is given, 404/405 as JSON. */
  app(routes: readonly RouteSpec[], options?: { openapi?: OpenApiInfo }): Hono<AppEnv>;
}

/** Anything with Hono's fetch: the application's own app. */
export interface FetchApp {
  fetch(request: Request, env?: unknown, ctx?: unknown): Response | Promise<Response>;
}

/**
 * An application: its routes and parts, and — when it has migrations — its name, which its
 * migrations are recorded under (so apps sharing a database each have their own ids).
 */
export type PoolgateApp = PoolgateAppParts & (NamedSchema | NoSchema);

/** An app with migrations, and its name. */
interface NamedSchema {
  /** A short identifier (`fitness`, `notes-api`): a lowercase letter, then up to 39 lowercase letters, digits, `_` or `-`. */
  name: string;
  /** The application's schema; applied by `poolgate migrate` and by the Node gateway at start. */
  migrations?: readonly Migration[] | undefined;
}

/** An app without migrations needs no name. */
interface NoSchema {
  name?: string | undefined;
  migrations?: undefined;
}

interface PoolgateAppParts {
  /** Every route poolgate serves, each declared `read` or `transactional`. */
  routes: readonly RouteSpec[];
  /** Demo data for the embedded database (or SEED=true); returns a line to log when it inserted something. */
  seed?: (tx: Queryable) => Promise<string | undefined>;
  /** Served at /openapi.json by the default app. */
  openapi?: OpenApiInfo;
  /** Your own Hono app around poolgate's parts; by default `pg.app(routes, { openapi })`. */
  hono?: (pg: Poolgate) => FetchApp;
}

/**
 * Declares an application (the definition is plain data); throws a MigrationError when its name
 * is not a short identifier, or missing while it has migrations.
 * @example export default defineApp({ name: 'notes', routes: [getNote, createNote], migrations });
 */
export function defineApp(app: PoolgateApp): PoolgateApp {
  checkAppName(app.name, (app.migrations?.length ?? 0) > 0);
  return app;
}
