/**
 * Where cached answers live: an in-process LRU (Node, and every edge isolate as its first tier)
 * and the platform's Cache API at the edge (workerd's `caches.default`, Deno's `caches.open()`),
 * behind one small interface. A store keeps entries; whether one may be served is decided by the
 * read cache (read-cache.ts), from what the entry says it was built from.
 */
import { lsnValue } from '../db/consistency.js';

/** One cached answer and what it was built from. */
export interface CacheEntry {
  status: number;
  /** The JSON body as sent. */
  body: string;
  /** When its load began (epoch ms): its data is no older than this. */
  storedAt: number;
  /** The generation of each table of the route when the answer was loaded: a later write outdates it. */
  gens: Record<string, number>;
  /** The primary's WAL position the answer's data is at least as new as (a client's token asks for one). */
  position: string | undefined;
  /** When it may no longer be served at all (epoch ms): storedAt + ttl + stale-while-revalidate. */
  expiresAt: number;
}

export interface CacheStore {
  get(key: string): Promise<CacheEntry | undefined>;
  put(key: string, entry: CacheEntry): Promise<void>;
  /** What /stats shows of it. */
  describe(): string;
}

/** Whether `a` was built from everything `b` was, and is no older: `b` (a slower, earlier fill) need not replace it. */
export function supersedes(a: CacheEntry, b: CacheEntry): boolean {
  if (a.storedAt < b.storedAt) return false;
  if (!atLeastPosition(a.position, b.position)) return false;
  return Object.entries(b.gens).every(([t, g]) => (a.gens[t] ?? -1) >= g);
}

const atLeastPosition = (a: string | undefined, b: string | undefined) =>
  b === undefined || (a !== undefined && (lsnValue(a) ?? -1n) >= (lsnValue(b) ?? 0n));

const entryBytes = (key: string, e: CacheEntry) => 2 * key.length + 2 * e.body.length + 200;

/**
 * An LRU bounded by entries and by bytes (UTF-16 estimate). Expired entries are dropped when met.
 * @example const store = new MemoryStore({ maxEntries: 10_000, maxBytes: 32 * 1024 * 1024 });
 */
export class MemoryStore implements CacheStore {
  readonly #map = new Map<string, CacheEntry>();
  #bytes = 0;

  constructor(
    readonly limits: { maxEntries: number; maxBytes: number },
    readonly clock: () => number = Date.now,
  ) {}

  get size(): number {
    return this.#map.size;
  }

  get bytes(): number {
    return this.#bytes;
  }

  get(key: string): Promise<CacheEntry | undefined> {
    return Promise.resolve(this.take(key));
  }

  /** The entry if it is there and not expired, marked as most recently used. */
  take(key: string): CacheEntry | undefined {
    const entry = this.#map.get(key);
    if (!entry) return undefined;
    this.#remove(key, entry);
    if (entry.expiresAt <= this.clock()) return undefined;
    this.#map.set(key, entry);
    this.#bytes += entryBytes(key, entry);
    return entry;
  }

  put(key: string, entry: CacheEntry): Promise<void> {
    const size = entryBytes(key, entry);
    if (size > this.limits.maxBytes) return Promise.resolve();
    const old = this.#map.get(key);
    if (old && supersedes(old, entry)) return Promise.resolve(); // a fill that started earlier, finishing later
    if (old) this.#remove(key, old);
    this.#map.set(key, entry);
    this.#bytes += size;
    for (const [k, e] of this.#map) {
      if (this.#map.size <= this.limits.maxEntries && this.#bytes <= this.limits.maxBytes) break;
      this.#remove(k, e);
    }
    return Promise.resolve();
  }

  describe(): string {
    return 'memory';
  }

  #remove(key: string, entry: CacheEntry): void {
    this.#map.delete(key);
    this.#bytes -= entryBytes(key, entry);
  }
}

/** The part of the standard Cache API a store needs (workerd's `caches.default`, Deno's and Netlify's `caches.open()`). */
export interface WebCache {
  match(request: Request): Promise<Response | undefined>;
  put(request: Request, response: Response): Promise<void>;
}

/** Cache API keys are GET requests; this host names nothing real. */
const KEY_ORIGIN = 'https://poolgate.cache.invalid/';

/**
 * The platform's cache: entries as JSON responses that expire by Cache-Control at expiresAt. Shared
 * by the isolates of a location where the platform shares it; a failed match or put is a miss.
 * The platform may share it beyond one deployment (a Cloudflare zone's `caches.default` serves
 * every worker on the zone: production and staging, two apps), so keys carry a namespace naming
 * the deployment's data.
 */
export class WebCacheStore implements CacheStore {
  readonly #origin: string;

  /** `cache` may still be opening (Deno's `caches.open()`); one that fails to open is no cache. */
  constructor(
    readonly cache: WebCache | Promise<WebCache>,
    readonly clock: () => number = Date.now,
    namespace = '',
  ) {
    if (cache instanceof Promise) cache.catch(() => {}); // met (as a miss) by the first get or put
    this.#origin = `${KEY_ORIGIN}${encodeURIComponent(namespace)}/`;
  }

  async get(key: string): Promise<CacheEntry | undefined> {
    try {
      const res = await (await this.cache).match(new Request(this.#origin + encodeURIComponent(key)));
      if (!res) return undefined;
      const entry = (await res.json()) as CacheEntry;
      return entry.expiresAt > this.clock() ? entry : undefined;
    } catch {
      return undefined;
    }
  }

  async put(key: string, entry: CacheEntry): Promise<void> {
    const maxAge = Math.max(1, Math.ceil((entry.expiresAt - this.clock()) / 1000));
    const response = new Response(JSON.stringify(entry), {
      headers: { 'content-type': 'application/json', 'cache-control': `max-age=${maxAge}` },
    });
    try {
      await (await this.cache).put(new Request(this.#origin + encodeURIComponent(key)), response);
    } catch {
      // The platform refused (a limit per invocation, a full cache): the next read loads again.
    }
  }

  describe(): string {
    return 'cache-api';
  }
}

/**
 * An isolate's own LRU in front of the platform's cache: a hit in the first costs no I/O; a hit
 * in the second is copied into the first.
 */
export class TieredStore implements CacheStore {
  constructor(
    readonly near: MemoryStore,
    readonly far: CacheStore,
  ) {}

  async get(key: string): Promise<CacheEntry | undefined> {
    const near = this.near.take(key);
    if (near) return near;
    const far = await this.far.get(key);
    if (far) await this.near.put(key, far);
    return far;
  }

  async put(key: string, entry: CacheEntry): Promise<void> {
    await Promise.all([this.near.put(key, entry), this.far.put(key, entry)]);
  }

  describe(): string {
    return `${this.near.describe()}+${this.far.describe()}`;
  }
}
