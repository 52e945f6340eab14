/** The per-route stats registry: counts, status classes, clients, quantiles over a bounded ring. */
import { describe, expect, it } from 'vitest';
import type { PoolStats } from '../db/types.js';
import { BUCKET_BOUNDS_MS, BUCKET_LABELS } from './histogram.js';
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

  describe('histograms (for /metrics)', () => {
    const at = (label: string) => BUCKET_LABELS.indexOf(label);

    it('count every request since start in cumulative buckets, a value on a bound counting in that bound', () => {
      const reg = new StatsRegistry({ scope: 'test' });
      for (const ms of [0, 0.5, 0.6, 1, 3, 3, 250, 10_000, 10_001, 60_000]) reg.record(sample({ totalMs: ms }));
      const h = reg.snapshot({ histograms: true }).routes[0]!.histograms!.duration;
      expect(BUCKET_LABELS).toEqual([
        '0.0005',
        '0.001',
        '0.0025',
        '0.005',
        '0.01',
        '0.025',
        '0.05',
        '0.1',
        '0.25',
        '0.5',
        '1',
        '2.5',
        '5',
        '10',
        '+Inf',
      ]);
      expect(h.cumulative).toEqual([2, 4, 4, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 8, 10]);
      expect(h.count).toBe(10);
      expect(h.sumSeconds).toBeCloseTo((0.5 + 0.6 + 1 + 3 + 3 + 250 + 10_000 + 10_001 + 60_000) / 1000, 9);
      expect(h.cumulative[at('0.005')]).toBe(6);
    });

    it('keep counting past the quantile ring, in the same fixed memory', () => {
      const reg = new StatsRegistry({ scope: 'test' });
      for (let i = 0; i < 5000; i++) reg.record(sample({ totalMs: i < 4000 ? 1000 : 1 }));
      const h = reg.snapshot({ histograms: true }).routes[0]!.histograms!.duration;
      expect(h.cumulative).toHaveLength(BUCKET_BOUNDS_MS.length + 1);
      expect(h.cumulative[at('0.001')]).toBe(1000); // the ring holds only the last 1024, all of them 1 ms
      expect(h.cumulative[at('1')]).toBe(5000);
      expect(h.count).toBe(5000);
    });

    it('observe DB time and acquire wait only for requests that reached the database, a timed-out wait included', () => {
      const reg = new StatsRegistry({ scope: 'test' });
      reg.record(sample({ dbMs: 4, acquireMs: 0.2 }));
      reg.record(sample({ status: 400, client: 'none', queries: 0, dbMs: 0, acquireMs: 0 })); // refused before any DB work
      reg.record(sample({ status: 503, queries: 0, dbMs: 0, acquireMs: 300 })); // gave up waiting for a connection
      const h = reg.snapshot({ histograms: true }).routes[0]!.histograms!;
      expect(h.duration.count).toBe(3);
      expect(h.dbTime.count).toBe(2);
      expect(h.dbTime.cumulative[at('0.0005')]).toBe(1);
      expect(h.dbTime.cumulative[at('0.005')]).toBe(2);
      expect(h.acquireWait.count).toBe(2);
      expect(h.acquireWait.cumulative[at('0.0005')]).toBe(1);
      expect(h.acquireWait.cumulative[at('0.25')]).toBe(1);
      expect(h.acquireWait.cumulative[at('0.5')]).toBe(2);
      expect(h.acquireWait.sumSeconds).toBeCloseTo(0.3002, 9);
      expect(h.cacheHit).toBeUndefined();
    });

    it('observe cache hit latency for hits and stale answers only', () => {
      const reg = new StatsRegistry({ scope: 'test' });
      reg.record(sample({ cache: 'hit', totalMs: 0.3, queries: 0 }));
      reg.record(sample({ cache: 'stale', totalMs: 2, queries: 0 }));
      reg.record(sample({ cache: 'miss', totalMs: 40 }));
      reg.record(sample({ cache: 'bypass', totalMs: 40 }));
      const h = reg.snapshot({ histograms: true }).routes[0]!.histograms!.cacheHit!;
      expect(h.count).toBe(2);
      expect(h.cumulative[at('0.0005')]).toBe(1);
      expect(h.cumulative[at('0.0025')]).toBe(2);
      expect(h.cumulative.at(-1)).toBe(2);
    });

    it('stay out of /stats: a plain snapshot has none', () => {
      const reg = new StatsRegistry({ scope: 'test' });
      reg.record(sample({ cache: 'hit' }));
      expect('histograms' in reg.snapshot().routes[0]!).toBe(false);
    });
  });
});
