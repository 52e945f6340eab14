/**
 * A read route's cache policy, declared with the route: how long an answer is fresh, how long a
 * stale one may still be served while it is loaded again, which tables the answer is built from
 * (a committed write to any of them makes it outdated), and which request headers it varies by.
 * Nothing is cached without a policy, so a library user's routes are untouched until they opt in.
 */
import type { RouteSpec } from '../routes/types.js';

export interface CachePolicy {
  /** Seconds an answer is served from the cache (while no write to its tables has committed). */
  ttlSeconds: number;
  /** Seconds past `ttlSeconds` an answer may still be served once while it is loaded again in the background (default 0). */
  staleWhileRevalidateSeconds?: number;
  /**
   * The tables the answer reads. A committed insert, update, delete or truncate on any of them
   * outdates every cached answer of the route (poolgate installs triggers on them when it migrates).
   */
  tables: readonly string[];
  /**
   * Request headers the answer depends on (e.g. `['authorization']`): their values, hashed, are
   * part of the key. A request with `Authorization` or a cookie is never served from or stored in
   * the cache unless the policy names that header (RFC 9111 §3.5: a shared cache must not mix callers).
   */
  vary?: readonly string[];
}

/** A policy's tables as the triggers and generations name them: a table name, optionally schema-qualified. */
const TABLE = /^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$/;
const HEADER = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

/** Throws with one sentence naming the route when its policy cannot work; returns it with header names in lower case. */
export function checkPolicy(route: Pick<RouteSpec, 'method' | 'path' | 'kind'>, policy: CachePolicy): CachePolicy {
  const where = `cache policy of ${route.method} ${route.path}`;
  if (route.kind !== 'read' || route.method !== 'GET') throw new TypeError(`${where}: only GET routes of kind 'read' can be cached`);
  const seconds = (name: string, v: unknown, min: number) => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > 31_536_000)
      throw new TypeError(`${where}: ${name} must be a number of seconds from ${min} to 31536000, got ${String(v)}`);
  };
  seconds('ttlSeconds', policy.ttlSeconds, 0.001);
  if (policy.staleWhileRevalidateSeconds !== undefined) seconds('staleWhileRevalidateSeconds', policy.staleWhileRevalidateSeconds, 0);
  if (!Array.isArray(policy.tables) || policy.tables.length === 0)
    throw new TypeError(`${where}: tables must list the tables the answer reads (writes to them outdate it)`);
  for (const t of policy.tables)
    if (typeof t !== 'string' || !TABLE.test(t))
      throw new TypeError(`${where}: "${String(t)}" is not a table name (table or schema.table)`);
  for (const h of policy.vary ?? [])
    if (typeof h !== 'string' || !HEADER.test(h)) throw new TypeError(`${where}: vary names request headers, got "${String(h)}"`);
  return { ...policy, vary: policy.vary?.map((h) => h.toLowerCase()) };
}

/** Every table any route's policy reads, once each, sorted (what the triggers are installed on). */
export function cachedTables(routes: readonly Pick<RouteSpec, 'cache'>[]): string[] {
  return [...new Set(routes.flatMap((r) => r.cache?.tables ?? []))].sort();
}
