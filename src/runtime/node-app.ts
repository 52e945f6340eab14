/**
 * The Node side's app, assembled once for both Node entries (the standalone gateway and the
 * Netlify function): the pg Pool backend, its stats registry, the forward-signature check when a
 * secret is set, and the drain, around the application's routes.
 */
import type { Context } from 'hono';
import pg from 'pg';
import { buildApp, createPoolgate } from '../app.js';
import type { Config } from '../config.js';
import { createPgDatabase, type PgPoolDatabase } from '../db/connectors/pg-pool.js';
import { MemoryStore } from '../cache/store.js';
import { Drain } from '../lifecycle/drain.js';
import { verifyForward } from '../middleware/verify-forward.js';
import { opsAccessFor } from '../routes/ops.js';
import type { FetchApp, PoolgateApp } from '../definition.js';
import { StatsRegistry } from '../stats/registry.js';
import type { Log } from '../log/logger.js';
import { RequestLog } from '../log/request-log.js';
import { nodeLoop } from './node-loop.js';

export interface NodeAppOptions {
  /** The application: its routes (and its own Hono app, if it brings one). */
  app: PoolgateApp;
  /** Names this process in /stats and /metrics. */
  scope: string;
  connectionString: string;
  log: Log;
  readHeader?: (c: Context, name: string) => string | undefined;
  onClientGone?: (c: Context, gone: () => void) => void;
}

export interface NodeApp {
  app: FetchApp;
  database: PgPoolDatabase;
  registry: StatsRegistry;
  drain: Drain;
  /** Per-request lines and their summary: closed (flushed) at shutdown. */
  requestLog: RequestLog;
}

export function createNodeApp(config: Config, options: NodeAppOptions): NodeApp {
  const { log } = options;
  // Only an app that caches a route pays for it (the position read with each COMMIT); others see no change.
  const cache = config.cache.enabled && options.app.routes.some((r) => r.cache) ? config.cache : undefined;
  const database = createPgDatabase(
    // With the read cache on, a write's answer carries its position: its writer's reads skip older entries.
    {
      ...config.pool,
      connectionString: options.connectionString,
      requestTimeoutMs: config.requestTimeoutMs,
      positions: cache !== undefined,
    },
    { urls: config.replicaUrls, ...config.replicas },
    { Pool: pg.Pool, Client: pg.Client, log, loop: nodeLoop },
  );
  const registry = new StatsRegistry({
    scope: options.scope,
    pool: () => database.stats(),
    breakers: () => database.breakers(),
    replicas: () => database.replicaFigures?.(),
  });
  const drain = new Drain();
  const verify =
    config.forwardSecret === undefined
      ? undefined
      : verifyForward({
          secret: config.forwardSecret,
          onReject: (reason) =>
            log(`poolgate: refused an unsigned or bad forward (${reason})`, { event: 'forward.refused', reason }, 'warn'),
        });
  const requestLog = new RequestLog({ log, slowMs: config.logSlowMs });
  const parts = createPoolgate({
    requestLog,
    database,
    registry,
    drain,
    bodyLimitBytes: config.bodyLimitBytes,
    idempotencyTtlMs: config.idempotencyTtlMs,
    requestTimeoutMs: config.requestTimeoutMs,
    log,
    verify,
    opsAccess: opsAccessFor({ token: config.opsToken, development: config.development, exposed: verify !== undefined }),
    dashboard: config.dashboard,
    readHeader: options.readHeader,
    onClientGone: options.onClientGone,
    consistencyCookie: config.replicas.cookie,
    cache: cache && {
      store: new MemoryStore({ maxEntries: cache.maxEntries, maxBytes: cache.maxBytes }),
      maxStalenessMs: cache.maxStalenessMs,
    },
  });
  return { app: buildApp(options.app, parts), database, registry, drain, requestLog };
}
