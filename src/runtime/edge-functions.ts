/**
 * `poolgate/edge`: the guide's API in workerd and Deno (Netlify Edge, Cloudflare Workers), on the
 * Neon driver only — no Node import, no pg. executeQuery, `sql` and readBatch are Neon HTTP round
 * trips; executeTransaction runs on a WebSocket session from a pool made for that one call and
 * ended before it returns (workerd forbids reusing an I/O object across requests, so nothing that
 * holds a socket outlives a call). The client itself holds no I/O: build it once per isolate.
 */
import * as driver from '@neondatabase/serverless';
import { createClient, type PoolgateClient } from '../client.js';
import { validateDatabaseUrl } from '../config.js';
import { createNeonDatabase, useLocalNeonProxy } from '../db/connectors/neon.js';

export { AppError, toAppError } from '../errors.js';
export { statement } from '../client.js';
export type * from '../client.js';

export interface EdgeClientOptions {
  /** The Neon (or local proxy's) postgres:// URL. */
  connectionString: string;
  /** Development only: a local Neon-compatible proxy (`npm run neon-proxy`) to send the driver to. */
  neonProxyUrl?: string;
  /** Every call's deadline unless it sets its own (default 15 s); also the bound of one HTTP round trip. */
  timeoutMs?: number;
  /** Names this isolate in getStats() (default "edge isolate"). */
  scope?: string;
  log?: (line: string) => void;
}

/** The escape hatch: it bypasses the core (no breaker, retries or deadline). */
export interface EdgeExtras {
  /** The Neon driver's own HTTP `sql` function for the same database. */
  getNeonClient(): driver.NeonQueryFunction<false, false>;
}

export type EdgeClient = PoolgateClient & EdgeExtras;

const DEFAULT_TIMEOUT_MS = 15_000;

/**
 * A client over Neon HTTP (statements, read batches) and Neon WebSocket (transactions).
 * @example
 * import { createEdgeClient } from 'poolgate/edge';
 * export default async (request: Request) => {
 *   const db = createEdgeClient({ connectionString: Netlify.env.get('DATABASE_URL')! });
 *   const users = await db.sql.read`SELECT id, name FROM users WHERE active = ${true}`;
 *   return Response.json(users);
 * };
 */
export function createEdgeClient(options: EdgeClientOptions): EdgeClient {
  const connectionString = validateDatabaseUrl('connectionString', options.connectionString);
  if (options.neonProxyUrl) useLocalNeonProxy(driver.neonConfig, options.neonProxyUrl);
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const database = createNeonDatabase({ connectionString, driver, queryTimeoutMs: timeoutMs, log: options.log });
  let neonClient: driver.NeonQueryFunction<false, false> | undefined;
  return createClient(database, {
    scope: options.scope ?? 'edge isolate',
    timeoutMs,
    extras: { getNeonClient: () => (neonClient ??= driver.neon(connectionString)) } satisfies EdgeExtras,
  });
}
