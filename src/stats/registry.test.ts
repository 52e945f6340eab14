/** The per-route stats registry: counts, status classes, clients, quantiles over a bounded ring. */
import { describe, expect, it } from 'vitest';
import type { PoolStats } from '../db/types.js';
import { StatsRegistry, type RequestSample } from './registry.js';

const sample = (over: Partial<RequestSample> = {}): RequestSample => ({
  method: 'GET',
  route: '/api/users/:id',
  status: 200,
  totalMs: 10,
  dbMs: 4,
  acquireMs: 1,
  queries: 1,
  client: 'pg-pool',
  ...over,
});

describe('StatsRegistry', () => {
  it('keeps one entry per method and route pattern', () => {
    const reg = new StatsRegistry({ scope: 'test' });
    reg.record(sample());
    reg.record(sample());
    reg.record(sample({ method: 'PATCH', route: '/api/users/:id/preferences' }));
    reg.record(sample({ method: 'POST', route: '/api/users/:id' }));
    const snap = reg.snapshot();
    expect(snap.scope).toBe('test');
    expect(snap.routes.map((r) => [r.method, r.route, r.count])).toEqual([
      ['GET', '/api/users/:id', 2],
      ['PATCH', '/api/users/:id/preferences', 1],
      ['POST', '/api/users/:id', 1],
    ]);
  });

  it('counts status classes, errors, clients, queries, retries and replays exactly', () => {
    const reg = new StatsRegistry({ scope: 'test' });
    reg.record(sample({ status: 200 }));
    reg.record(sample({ status: 201, retries: 2 }));
    reg.record(sample({ status: 404 }));
    reg.record(sample({ status: 400, client: 'none', queries: 0 }));
    reg.record(sample({ status: 503, acquireMs: 300, queries: 0, replayed: true }));
    const [r] = reg.snapshot().routes;
    expect(r).toMatchObject({
      count: 5,
      statusClasses: { '2xx': 2, '4xx': 2, '5xx': 1 },
      errorCount: 3,
      clients: { 'pg-pool': 4, none: 1 },
      queries: { sum: 3, perRequest: 0.6 },
      dbTimeMs: { sum: 20, mean: 4 },
      acquireWaitMs: { sum: 304, mean: 60.8, max: 300 },
      retryCount: 2,
      replayCount: 1,
    });
  });

  it('reports latency quantiles, max and sum', () => {
    const reg = new StatsRegistry({ scope: 'test' });
    for (const ms of [...Array.from({ length: 100 }, (_, i) => i + 1)].reverse()) reg.record(sample({ totalMs: ms }));
    expect(reg.snapshot().routes[0]!.latencyMs).toEqual({ p50: 50, p95: 95, p99: 99, max: 100, sum: 5050 });
  });

  it('computes quantiles over the most recent 1024 samples while counts and sums cover all', () => {
    const reg = new StatsRegistry({ scope: 'test' });
    for (let i = 0; i < 1024; i++) reg.record(sample({ totalMs: 1000 }));
    for (let i = 0; i < 1024; i++) reg.record(sample({ totalMs: 1 }));
    const r = reg.snapshot().routes[0]!;
    expect(r.count).toBe(2048);
    expect(r.latencyMs).toEqual({ p50: 1, p95: 1, p99: 1, max: 1000, sum: 1024 * 1001 });
  });

  it('rounds to the microsecond', () => {
    const reg = new StatsRegistry({ scope: 'test' });
    reg.record(sample({ totalMs: 1.23456789, dbMs: 0.0004 }));
    const r = reg.snapshot().routes[0]!;
    expect(r.latencyMs.p50).toBe(1.235);
    expect(r.dbTimeMs.sum).toBe(0);
  });

  it('reads pool figures and breakers at snapshot time, and leaves them out when absent', () => {
    let total = 1;
    const pool = () => ({ max: 5, total, active: 0, idle: total, waiting: 0 }) as unknown as PoolStats;
    const reg = new StatsRegistry({
      scope: 'node',
      pool,
      breakers: () => [{ name: 'postgres', state: 'closed', openedCount: 0, rejectedCount: 0 }],
    });
    expect(reg.snapshot().pool).toMatchObject({ total: 1 });
    total = 4;
    expect(reg.snapshot().pool).toMatchObject({ total: 4 });
    expect(reg.snapshot().breakers).toHaveLength(1);

    const bare = new StatsRegistry({ scope: 'edge', pool: () => undefined }).snapshot();
    expect('pool' in bare).toBe(false);
    expect(bare.breakers).toEqual([]);
    expect(bare.routes).toEqual([]);
  });

  it('hands out copies: changing a snapshot does not change the registry', () => {
    const reg = new StatsRegistry({ scope: 'test' });
    reg.record(sample());
    const snap = reg.snapshot();
    snap.routes[0]!.statusClasses['2xx'] = 99;
    snap.routes[0]!.clients['pg-pool'] = 99;
    expect(reg.snapshot().routes[0]!.statusClasses['2xx']).toBe(1);
    expect(reg.snapshot().routes[0]!.clients['pg-pool']).toBe(1);
  });
});
