/**
 * Per-route connection stats. One registry per process (or per isolate at the edge): the
 * middleware records one sample per request, `/stats` reads `snapshot()`, `/metrics` renders the
 * same snapshot as Prometheus text. Latency quantiles (for people, in /stats) come from the most
 * recent samples of each route (a fixed ring); the histograms (for Prometheus, in /metrics) count
 * every request since start in fixed buckets (histogram.ts). Memory stays bounded either way.
 */
import type { ClientKind, PoolStats, ReplicaSetFigures } from '../db/types.js';
import type { CacheOutcome } from '../cache/read-cache.js';
import type { BreakerSnapshot } from '../resilience/breaker.js';
import { Histogram, type HistogramSnapshot } from './histogram.js';

export interface RequestSample {
  method: string;
  /** The route pattern (`/api/users/:id`), never the raw URL. */
  route: string;
  status: number;
  totalMs: number;
  dbMs: number;
  acquireMs: number;
  queries: number;
  client: ClientKind | 'none';
  retries?: number;
  replayed?: boolean;
  /** Where there are replicas: the server its reads went to (`primary`, `replica-1` …). */
  server?: string;
  /** On a cached route: what the read cache did. */
  cache?: CacheOutcome;
}

/** A cached route's figures: requests by what the cache did, and how long the hits took. */
export interface RouteCacheSnapshot {
  hit: number;
  stale: number;
  miss: number;
  invalidated: number;
  bypass: number;
  /** hits (fresh and stale) over all requests that could use it (everything but bypass). */
  hitRate: number;
  hitLatencyMs: { p50: number; p99: number };
}

/** A route's histograms since start, for /metrics (`snapshot({ histograms: true })`); /stats has none. */
export interface RouteHistograms {
  /** Every request's duration. */
  duration: HistogramSnapshot;
  /** Requests that reached the database (ran a statement or waited for a connection): their time in statements. */
  dbTime: HistogramSnapshot;
  /** The same requests: their time waiting for a connection (a wait that timed out included). */
  acquireWait: HistogramSnapshot;
  /** On a cached route: the duration of requests the cache answered (hit and stale). */
  cacheHit?: HistogramSnapshot;
}

export interface RouteSnapshot {
  method: string;
  route: string;
  count: number;
  statusClasses: Record<string, number>;
  errorCount: number;
  latencyMs: { p50: number; p95: number; p99: number; max: number; sum: number };
  dbTimeMs: { sum: number; mean: number };
  acquireWaitMs: { sum: number; mean: number; max: number };
  queries: { sum: number; perRequest: number };
  clients: Partial<Record<ClientKind | 'none', number>>;
  /** Where there are replicas: requests by the server their reads went to. */
  servers?: Record<string, number>;
  retryCount: number;
  replayCount: number;
  cache?: RouteCacheSnapshot;
  histograms?: RouteHistograms;
}

export interface StatsSnapshot {
  /** Whose figures these are: a process, or one edge isolate. */
  scope: string;
  startedAt: string;
  uptimeSeconds: number;
  routes: RouteSnapshot[];
  pool?: PoolStats;
  /** The read replicas and what they served, where there are any (DATABASE_REPLICA_URLS). */
  replicas?: ReplicaSetFigures;
  breakers: BreakerSnapshot[];
}

const RING = 1024;

/** Sorted recent samples → a quantile (0 when none). */
function quantiles(ring: Float64Array, count: number): (p: number) => number {
  const recent = Array.from(ring.subarray(0, Math.min(count, RING))).sort((a, b) => a - b);
  return (p) => (recent.length === 0 ? 0 : round(recent[Math.min(recent.length - 1, Math.ceil(p * recent.length) - 1)]!));
}

class CacheStats {
  readonly counts: Record<CacheOutcome, number> = { hit: 0, stale: 0, miss: 0, invalidated: 0, bypass: 0 };
  #hits = 0;
  readonly #ring = new Float64Array(RING);
  readonly hitHistogram = new Histogram();

  add(outcome: CacheOutcome, totalMs: number): void {
    this.counts[outcome]++;
    if (outcome !== 'hit' && outcome !== 'stale') return;
    this.#ring[this.#hits % RING] = totalMs;
    this.#hits++;
    this.hitHistogram.observe(totalMs);
  }

  snapshot(): RouteCacheSnapshot {
    const q = quantiles(this.#ring, this.#hits);
    const usable = this.#hits + this.counts.miss + this.counts.invalidated;
    return { ...this.counts, hitRate: usable ? round(this.#hits / usable) : 0, hitLatencyMs: { p50: q(0.5), p99: q(0.99) } };
  }
}

class RouteStats {
  count = 0;
  readonly statusClasses: Record<string, number> = {};
  errorCount = 0;
  latencySum = 0;
  latencyMax = 0;
  dbSum = 0;
  acquireSum = 0;
  acquireMax = 0;
  querySum = 0;
  retryCount = 0;
  replayCount = 0;
  readonly clients: Partial<Record<ClientKind | 'none', number>> = {};
  servers: Record<string, number> | undefined;
  cache: CacheStats | undefined;
  readonly #ring = new Float64Array(RING);
  readonly #duration = new Histogram();
  readonly #dbTime = new Histogram();
  readonly #acquireWait = new Histogram();

  constructor(
    readonly method: string,
    readonly route: string,
  ) {}

  add(s: RequestSample): void {
    this.#ring[this.count % RING] = s.totalMs;
    this.count++;
    this.#duration.observe(s.totalMs);
    if (s.queries > 0 || s.acquireMs > 0) {
      // A request that never reached the database (a 400, a cache hit, a shed) would only pile up zeros.
      this.#dbTime.observe(s.dbMs);
      this.#acquireWait.observe(s.acquireMs);
    }
    const cls = `${Math.floor(s.status / 100)}xx`;
    this.statusClasses[cls] = (this.statusClasses[cls] ?? 0) + 1;
    if (s.status >= 400) this.errorCount++;
    this.latencySum += s.totalMs;
    this.latencyMax = Math.max(this.latencyMax, s.totalMs);
    this.dbSum += s.dbMs;
    this.acquireSum += s.acquireMs;
    this.acquireMax = Math.max(this.acquireMax, s.acquireMs);
    this.querySum += s.queries;
    this.clients[s.client] = (this.clients[s.client] ?? 0) + 1;
    if (s.server !== undefined) (this.servers ??= {})[s.server] = (this.servers[s.server] ?? 0) + 1;
    this.retryCount += s.retries ?? 0;
    if (s.replayed) this.replayCount++;
    if (s.cache) (this.cache ??= new CacheStats()).add(s.cache, s.totalMs);
  }

  histograms(): RouteHistograms {
    return {
      duration: this.#duration.snapshot(),
      dbTime: this.#dbTime.snapshot(),
      acquireWait: this.#acquireWait.snapshot(),
      ...(this.cache ? { cacheHit: this.cache.hitHistogram.snapshot() } : {}),
    };
  }

  snapshot(histograms: boolean): RouteSnapshot {
    const q = quantiles(this.#ring, this.count);
    const n = Math.max(this.count, 1);
    return {
      method: this.method,
      route: this.route,
      count: this.count,
      statusClasses: { ...this.statusClasses },
      errorCount: this.errorCount,
      latencyMs: { p50: q(0.5), p95: q(0.95), p99: q(0.99), max: round(this.latencyMax), sum: round(this.latencySum) },
      dbTimeMs: { sum: round(this.dbSum), mean: round(this.dbSum / n) },
      acquireWaitMs: { sum: round(this.acquireSum), mean: round(this.acquireSum / n), max: round(this.acquireMax) },
      queries: { sum: this.querySum, perRequest: round(this.querySum / n) },
      clients: { ...this.clients },
      ...(this.servers ? { servers: { ...this.servers } } : {}),
      retryCount: this.retryCount,
      replayCount: this.replayCount,
      ...(this.cache ? { cache: this.cache.snapshot() } : {}),
      ...(histograms ? { histograms: this.histograms() } : {}),
    };
  }
}

const round = (x: number) => Math.round(x * 1000) / 1000;

export interface StatsRegistryOptions {
  scope: string;
  /** Pool-level figures, read at snapshot time. */
  pool?: () => PoolStats | undefined;
  /** Circuit breakers to report, read at snapshot time. */
  breakers?: () => BreakerSnapshot[];
  /** Read replicas, read at snapshot time. */
  replicas?: () => ReplicaSetFigures | undefined;
}

export class StatsRegistry {
  readonly #routes = new Map<string, RouteStats>();
  readonly #started = Date.now();

  constructor(readonly options: StatsRegistryOptions) {}

  record(sample: RequestSample): void {
    const key = `${sample.method} ${sample.route}`;
    let stats = this.#routes.get(key);
    if (!stats) {
      stats = new RouteStats(sample.method, sample.route);
      this.#routes.set(key, stats);
    }
    stats.add(sample);
  }

  /** `histograms`: add each route's histograms (for /metrics; /stats and getStats() leave them out). */
  snapshot({ histograms = false }: { histograms?: boolean } = {}): StatsSnapshot {
    const pool = this.options.pool?.();
    const replicas = this.options.replicas?.();
    return {
      scope: this.options.scope,
      startedAt: new Date(this.#started).toISOString(),
      uptimeSeconds: Math.round((Date.now() - this.#started) / 1000),
      routes: [...this.#routes.values()].map((r) => r.snapshot(histograms)),
      ...(pool ? { pool } : {}),
      ...(replicas ? { replicas } : {}),
      breakers: this.options.breakers?.() ?? [],
    };
  }
}
