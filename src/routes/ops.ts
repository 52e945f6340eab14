/**
 * Operational endpoints: liveness (no I/O), readiness (a short DB ping and pool state), stats
 * JSON and Prometheus metrics. None of them names the database host, user or URL.
 */
import { Hono } from 'hono';
import type { Database } from '../db/types.js';
import type { Drain } from '../lifecycle/drain.js';
import { PROMETHEUS_CONTENT_TYPE, renderPrometheus } from '../stats/prometheus.js';
import type { StatsRegistry } from '../stats/registry.js';
import type { AppEnv } from './types.js';

export interface OpsOptions {
  database: Database;
  registry: StatsRegistry;
  drain?: Drain;
  readyTimeoutMs: number;
}

export function opsRoutes({ database, registry, drain, readyTimeoutMs }: OpsOptions): Hono<AppEnv> {
  const ops = new Hono<AppEnv>();
  const pattern = (p: string) =>
    async function routePattern(c: { set(k: 'routePattern', v: string): void }, next: () => Promise<void>) {
      c.set('routePattern', p);
      await next();
    };

  ops.get('/health', pattern('/health'), (c) => c.json({ status: 'ok' }));

  ops.get('/health/ready', pattern('/health/ready'), async (c) => {
    if (drain?.draining) {
      c.header('retry-after', '1');
      return c.json({ status: 'draining', database: { ok: false, reason: 'shutting_down' } }, 503);
    }
    const db = await database.ping(readyTimeoutMs);
    const pool = database.stats();
    const breakers = registry.snapshot().breakers;
    const ok = db.ok && !breakers.some((b) => b.state === 'open');
    const body = {
      status: ok ? 'ready' : 'unavailable',
      client: database.kind,
      database: { ok: db.ok, latencyMs: Math.round(db.latencyMs * 100) / 100, ...(db.reason ? { reason: db.reason } : {}) },
      ...(pool ? { pool: { max: pool.max, total: pool.total, active: pool.active, idle: pool.idle, waiting: pool.waiting } } : {}),
      breakers: breakers.map((b) => ({ upstream: b.name, state: b.state })),
    };
    if (!ok) c.header('retry-after', '2');
    return c.json(body, ok ? 200 : 503);
  });

  ops.get('/stats', pattern('/stats'), (c) => c.json(registry.snapshot()));

  ops.get('/metrics', pattern('/metrics'), (c) =>
    c.body(renderPrometheus(registry.snapshot()), 200, { 'content-type': PROMETHEUS_CONTENT_TYPE }),
  );
  return ops;
}
