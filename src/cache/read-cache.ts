/**
 * The read cache: serves a cached read route's answer from a store when nothing it was built
 * from has changed since, and loads it otherwise. An entry records the generation of each of its
 * route's tables and the WAL position its data is at least as new as, both taken from the
 * process's generation view before the load began. It is served when
 *   - its generations are at least the view's (no write to its tables committed since it was
 *     built, as far as a view at most CACHE_MAX_STALENESS_MS old knows), and
 *   - where the request carries a consistency token, its position is at least the token's
 *     (the writer never reads its own write stale, whatever the view says),
 * and its age is within the policy's ttl (or stale-while-revalidate, served once while loaded
 * again in the background). A load reads data at or past the view's position (with replicas,
 * only a replica that has replayed that far serves it), so an entry is never older than the
 * generations it claims; a load that began before a write carries the older generations and
 * cannot pass for newer, whenever it is stored (the fence).
 */
import type { Log } from '../log/logger.js';
import type { Context } from 'hono';
import { CONSISTENCY_COOKIE, hasReplayed } from '../db/consistency.js';
import type { Database, Db } from '../db/types.js';
import { newMetrics, type RequestMetrics } from '../middleware/conn-stats.js';
import type { AppEnv, RouteSpec } from '../routes/types.js';
import { now } from '../stats/clock.js';
import { Generations, sees, type GenerationView } from './generations.js';
import type { CachePolicy } from './policy.js';
import type { CacheEntry, CacheStore } from './store.js';

/** What the cache did for one request: served fresh, served stale (and loaded again), loaded (no entry / an outdated one), or stood aside. */
export type CacheOutcome = 'hit' | 'stale' | 'miss' | 'invalidated' | 'bypass';

export interface ReadCacheOptions {
  database: Database;
  store: CacheStore;
  /** The longest a committed write may go unseen by readers without its token (CACHE_MAX_STALENESS_MS). */
  maxStalenessMs: number;
  /** The deadline of a background load (stale-while-revalidate). */
  requestTimeoutMs: number;
  log?: Log;
}

/** What the route answers: status and the JSON text of its body, the same whether cached or loaded. */
export interface CachedAnswer {
  status: number;
  body: string | undefined;
  cacheStatus: string;
}

/** Runs `promise` past the response where the runtime would otherwise stop (workerd's waitUntil). */
export function keepAlive(c: Context, promise: Promise<unknown>): void {
  const quiet = promise.catch(() => {});
  try {
    c.executionCtx.waitUntil(quiet);
  } catch {
    // No execution context (Node, Deno): the promise runs on by itself.
  }
}

export class ReadCache {
  readonly generations: Generations;
  /** Keys being loaded again in the background, and when that began: one at a time per key, and a load the runtime cancelled (its request's I/O) stops counting at its deadline. */
  readonly #revalidating = new Map<string, number>();

  constructor(readonly options: ReadCacheOptions) {
    this.generations = new Generations({
      database: options.database,
      maxStalenessMs: options.maxStalenessMs,
      clock: now,
      log: options.log,
    });
  }

  /** A write this process saw commit (Node: its own; the edge: a forward's answer): views from before it are read again first. */
  noteWrite(lsn: string): void {
    this.generations.noteWrite(lsn);
  }

  async serve(c: Context<AppEnv>, route: RouteSpec, policy: CachePolicy): Promise<CachedAnswer> {
    const metrics = c.get('metrics');
    const started = now();
    const bypass = this.#bypassReason(c, policy);
    const token = bypass ? undefined : metrics.consistency; // a malformed token answers 400 here, as on any read
    const view = bypass ? undefined : await this.#view(c, metrics, token);
    if (!view) return this.#load(c, route, metrics, { outcome: 'bypass', status: `fwd=${bypass ?? 'bypass'}` });
    const key = await cacheKey(c, route, policy);
    const need = pick(view.gens, policy.tables);
    const fresh = c.req.header('cache-control')?.toLowerCase().includes('no-cache');
    const entry = fresh ? undefined : await this.options.store.get(key);
    const timing = now() - started;
    if (entry && usable(entry, need, token)) {
      const age = Date.now() - entry.storedAt;
      const ttlMs = policy.ttlSeconds * 1000;
      if (age < ttlMs) return this.#served(metrics, entry, 'hit', `hit; ttl=${Math.floor((ttlMs - age) / 1000)}`, timing);
      if (age < ttlMs + (policy.staleWhileRevalidateSeconds ?? 0) * 1000) {
        this.#revalidate(c, route, policy, key, view);
        return this.#served(metrics, entry, 'stale', `hit; ttl=${-Math.ceil((age - ttlMs) / 1000)}`, timing);
      }
    }
    const outcome: CacheOutcome = entry ? 'invalidated' : 'miss';
    const status = fresh ? 'fwd=request' : entry ? 'fwd=stale' : 'fwd=miss';
    return this.#load(c, route, metrics, { outcome, status, fill: { key, policy, view } });
  }

  /** Why this request may not use the cache, if it may not: it asked so, or it carries credentials the policy does not vary by. */
  #bypassReason(c: Context, policy: CachePolicy): string | undefined {
    if (c.req.header('cache-control')?.toLowerCase().includes('no-store')) return 'request';
    const vary = policy.vary ?? [];
    if (c.req.header('authorization') !== undefined && !vary.includes('authorization')) return 'bypass';
    if (!vary.includes('cookie') && hasOtherCookies(c.req.header('cookie'))) return 'bypass';
    return undefined;
  }

  /** A view fit for this request: one that counts its token's write, where it carries one. */
  async #view(c: Context, metrics: RequestMetrics, token: string | undefined): Promise<GenerationView | undefined> {
    const background = (p: Promise<unknown>) => keepAlive(c, p);
    const seen = this.generations.view;
    // The token's write was visible before this request began (its client had the token).
    const behind = token !== undefined && !(seen && sees(seen, token, metrics.startedAt));
    const view = await this.generations.current({ background, newerThan: behind ? metrics.startedAt : undefined });
    // Still behind: the token names a position the primary has not reached (forged, or another database): no cache.
    return view && (token === undefined || hasReplayed(view.lsn, token)) ? view : undefined;
  }

  #served(metrics: RequestMetrics, entry: CacheEntry, outcome: CacheOutcome, status: string, timing: number): CachedAnswer {
    metrics.cache = outcome;
    metrics.timings.push({ name: 'cache', durMs: timing, desc: outcome });
    return { status: entry.status, body: entry.body, cacheStatus: `poolgate; ${status}` };
  }

  async #load(
    c: Context<AppEnv>,
    route: RouteSpec,
    metrics: RequestMetrics,
    how: { outcome: CacheOutcome; status: string; fill?: { key: string; policy: CachePolicy; view: GenerationView } },
  ): Promise<CachedAnswer> {
    metrics.cache = how.outcome;
    const fill = how.fill;
    if (fill?.view.lsn) metrics.requirePosition(fill.view.lsn);
    const storedAt = Date.now();
    const result = await route.run(c, c.get('db'));
    const body = result.body === undefined ? undefined : JSON.stringify(result.body);
    let status = `${how.status}; fwd-status=${result.status}`;
    if (fill && result.status === 200 && body !== undefined) {
      keepAlive(c, this.options.store.put(fill.key, entryOf(result.status, body, storedAt, fill.policy, fill.view)));
      status += '; stored';
    }
    return { status: result.status, body, cacheStatus: `poolgate; ${status}` };
  }

  /** Loads a stale entry's answer again after the response, once per key at a time, on a Db of its own. */
  #revalidate(c: Context<AppEnv>, route: RouteSpec, policy: CachePolicy, key: string, view: GenerationView): void {
    const since = this.#revalidating.get(key);
    if (since !== undefined && now() - since < this.options.requestTimeoutMs) return;
    const started = now();
    this.#revalidating.set(key, started);
    const observer = newMetrics(this.options.requestTimeoutMs);
    observer.intent = 'read';
    if (view.lsn) observer.requirePosition(view.lsn);
    const db: Db = this.options.database.forRequest(observer);
    const storedAt = Date.now();
    const work = (async () => {
      try {
        const result = await route.run(c, db);
        if (result.status === 200 && result.body !== undefined)
          await this.options.store.put(key, entryOf(200, JSON.stringify(result.body), storedAt, policy, view));
      } finally {
        if (this.#revalidating.get(key) === started) this.#revalidating.delete(key);
        await db.end?.();
      }
    })();
    keepAlive(c, work);
  }
}

function entryOf(status: number, body: string, storedAt: number, policy: CachePolicy, view: GenerationView): CacheEntry {
  const lifeMs = (policy.ttlSeconds + (policy.staleWhileRevalidateSeconds ?? 0)) * 1000;
  return { status, body, storedAt, gens: pick(view.gens, policy.tables), position: view.lsn, expiresAt: storedAt + lifeMs };
}

/** The generations of `tables` (0 for a table never written since its triggers were installed). */
const pick = (gens: Readonly<Record<string, number>>, tables: readonly string[]) =>
  Object.fromEntries(tables.map((t) => [t, gens[t] ?? 0]));

/** An entry built from every write the view counts for its tables and, with a token, from the token's write. */
function usable(entry: CacheEntry, need: Record<string, number>, token: string | undefined): boolean {
  if (token !== undefined && !hasReplayed(entry.position, token)) return false;
  return Object.entries(need).every(([t, g]) => (entry.gens[t] ?? -1) >= g);
}

/** A cookie other than poolgate's own consistency cookie (which names no caller). */
function hasOtherCookies(cookie: string | undefined): boolean {
  if (!cookie) return false;
  return cookie.split(';').some((pair) => {
    const name = pair.slice(0, pair.indexOf('=') < 0 ? undefined : pair.indexOf('=')).trim();
    return name !== '' && name !== CONSISTENCY_COOKIE;
  });
}

/** Sorted keys all the way down, so equal inputs make equal keys. */
function canonical(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'undefined';
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
}

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * The route, its parsed params and query (every value of every name where the route has no query
 * schema), and a hash of each header the policy varies by (never the value itself: it may be a credential).
 */
export async function cacheKey(c: Context<AppEnv>, route: RouteSpec, policy: CachePolicy): Promise<string> {
  const params = c.get('params') ?? c.req.param();
  const query = route.query ? c.get('query') : c.req.queries();
  const vary = await Promise.all((policy.vary ?? []).map(async (h) => `${h}:${await sha256(c.req.header(h) ?? '')}`));
  return `${route.method} ${route.path} ${canonical(params)} ${canonical(query ?? {})}${vary.length ? ` ${vary.join(' ')}` : ''}`;
}
