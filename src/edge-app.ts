/**
 * The edge flavour of the app, for workerd and Netlify Edge (Deno): reads on Neon (HTTP, or a
 * per-request WebSocket pool), transactional routes forwarded, signed, to the Node function.
 * Runtime entries build it once per isolate and keep it; its stats are that isolate's own.
 */
import { logBreakerChanges } from './resilience/breaker.js';
import { consoleLog, type Log } from './log/logger.js';
import { RequestLog } from './log/request-log.js';
import type * as Neon from '@neondatabase/serverless';
import { buildApp, createPoolgate } from './app.js';
import type { EdgeConfig } from './config.js';
import { createNeonReplicatedDatabase, useLocalNeonProxy, type NeonDriver } from './db/connectors/neon.js';
import { MemoryStore, TieredStore, WebCacheStore, type CacheStore, type WebCache } from './cache/store.js';
import { createForwardBreaker, forwardTo } from './middleware/forward.js';
import type { FetchApp, PoolgateApp } from './definition.js';
import { opsAccessFor } from './routes/ops.js';
import { StatsRegistry } from './stats/registry.js';

export interface EdgeAppDeps {
  app: PoolgateApp;
  driver: NeonDriver & Pick<typeof Neon, 'neonConfig'>;
  /** Names the isolate in /stats and /metrics, e.g. "workerd isolate". */
  scope: string;
  fetch?: typeof fetch;
  /** Where log lines go; default: JSON lines on console.log at LOG_LEVEL (src/log/logger.ts). */
  log?: Log;
  /** This runtime's "the fetch never sent its request" (src/runtime/fetch-errors.ts). */
  neverSent?: (err: unknown) => boolean;
  /** The platform's Cache API, where the runtime has one (workerd: caches.default); the read cache keeps an in-isolate LRU in front of it. */
  platformCache?: WebCache | Promise<WebCache>;
}

function edgeCacheStore(config: EdgeConfig, deps: EdgeAppDeps): CacheStore {
  // The isolate's own tier: a fraction of the Node bounds, since isolates are many and small.
  const near = new MemoryStore({
    maxEntries: Math.min(config.cache.maxEntries, 1000),
    maxBytes: Math.min(config.cache.maxBytes, 8 * 1024 * 1024),
  });
  return deps.platformCache
    ? new TieredStore(near, new WebCacheStore(deps.platformCache, Date.now, cacheNamespace(deps.app, config.databaseUrl)))
    : near;
}

/**
 * What a platform cache shared with other deployments tells this one's entries apart by: the app
 * and the database it reads (role, host, database; never the password). Two deployments of one app
 * on one database share entries, rightly: their generations are the same.
 */
function cacheNamespace(app: PoolgateApp, databaseUrl: string): string {
  const url = new URL(databaseUrl);
  return `${app.name ?? ''} ${decodeURIComponent(url.username)}@${url.host}${decodeURIComponent(url.pathname)}`;
}

export function createEdgeApp(config: EdgeConfig, deps: EdgeAppDeps): FetchApp {
  if (config.neonProxyUrl) useLocalNeonProxy(deps.driver.neonConfig, config.neonProxyUrl);
  const log = deps.log ?? consoleLog(config.logLevel);
  const database = createNeonReplicatedDatabase(
    {
      connectionString: config.databaseUrl,
      driver: deps.driver,
      queryTimeoutMs: config.queryTimeoutMs,
      resultLimits: { maxRows: config.resultMaxRows, maxBytes: config.resultMaxBytes },
      log,
    },
    { urls: config.replicaUrls, ...config.replicas },
  );
  const forwarder = createForwardBreaker(logBreakerChanges(log));
  const registry = new StatsRegistry({
    scope: deps.scope,
    breakers: () => [...database.breakers(), forwarder.snapshot()],
    replicas: () => database.replicaFigures?.(),
  });
  const pg = createPoolgate({
    database,
    registry,
    bodyLimitBytes: config.bodyLimitBytes,
    requestTimeoutMs: config.requestTimeoutMs,
    opsAccess: opsAccessFor({ token: config.opsToken, development: config.development, exposed: true }),
    dashboard: config.dashboard,
    log,
    requestLog: new RequestLog({ log, slowMs: config.logSlowMs }),
    cache:
      config.cache.enabled && deps.app.routes.some((r) => r.cache)
        ? { store: edgeCacheStore(config, deps), maxStalenessMs: config.cache.maxStalenessMs }
        : undefined,
    transactional: forwardTo({
      targetUrl: config.nodeFunctionUrl,
      secret: config.forwardSecret,
      timeoutMs: config.forwardTimeoutMs,
      fetch: deps.fetch,
      breaker: forwarder,
      neverSent: deps.neverSent,
    }),
  });
  return buildApp(deps.app, pg);
}
