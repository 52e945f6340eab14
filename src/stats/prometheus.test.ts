/**
 * The Prometheus text of a snapshot with every optional part present (pool with admission, lanes,
 * budget and refusals; replicas; breakers; a cached route): latencies as histograms with cumulative
 * buckets, no quantile left, and text that Prometheus' own `promtool check metrics` accepts.
 */
import { describe, expect, it } from 'vitest';
import { histogramSeries, onPromtool, parsePrometheus, promtool, promtoolMissing } from '../../test/helpers/prometheus.js';
import type { PoolStats, ReplicaSetFigures } from '../db/types.js';
import { renderPrometheus } from './prometheus.js';
import { StatsRegistry, type RequestSample } from './registry.js';

const admission = { estimateMs: 12, shed: { wait: 1, deadline: 0, overload: 2, queue_full: 0 } };
const pool: PoolStats = {
  max: 8,
  total: 6,
  active: 5,
  idle: 1,
  waiting: 2,
  openedCount: 9,
  closedCount: 3,
  acquisitionCount: 120,
  reuseRate: 0.925,
  errorCount: 1,
  acquireTimeoutCount: 1,
  queueRejectedCount: 0,
  admission,
  retryCount: 2,
  retryDeniedCount: 0,
  cancelledCount: 1,
  pipeline: { lanes: 2, inFlight: 3, openedCount: 2, closedCount: 0, cancelledCount: 0, overflowCount: 4, waiting: 0, admission },
  refused: { namedStatements: '26000' },
  budget: { share: 10, limit: 97, reserve: 3, instances: 2, others: 4, sampledCount: 12, sampleErrorCount: 0, refusedCount: 0 },
};
const replicas: ReplicaSetFigures = {
  maxLagMs: 5000,
  onPrimary: { noReplica: 1, token: 2 },
  tokensHonoured: 3,
  replicas: [
    {
      name: 'replica-1',
      up: true,
      standby: true,
      lagMs: 120,
      inFlight: 1,
      servedCount: 40,
      fellBackCount: 0,
      checkCount: 9,
      checkErrorCount: 0,
    },
  ],
};

function registry(): StatsRegistry {
  const reg = new StatsRegistry({
    scope: 'node',
    pool: () => pool,
    replicas: () => replicas,
    breakers: () => [{ name: 'postgres', state: 'open', openedCount: 1, rejectedCount: 7 }],
  });
  const base: RequestSample = {
    method: 'GET',
    route: '/api/users/:id',
    status: 200,
    totalMs: 3,
    dbMs: 1,
    acquireMs: 0.1,
    queries: 1,
    client: 'pg-pool',
  };
  for (const totalMs of [0.2, 0.7, 3, 30, 300, 3000, 30_000]) reg.record({ ...base, totalMs, dbMs: totalMs / 2, server: 'replica-1' });
  reg.record({ ...base, status: 503, queries: 0, dbMs: 0, acquireMs: 5000, totalMs: 5001 });
  for (const cache of ['hit', 'hit', 'stale', 'miss', 'bypass'] as const)
    reg.record({ ...base, route: '/api/exercises', cache, totalMs: cache === 'miss' ? 20 : 0.3, queries: cache === 'miss' ? 1 : 0 });
  return reg;
}

const HISTOGRAMS = [
  'poolgate_http_request_duration_seconds',
  'poolgate_db_time_seconds',
  'poolgate_db_acquire_wait_seconds',
  'poolgate_cache_hit_duration_seconds',
];

describe('renderPrometheus', () => {
  it('renders every latency as a histogram with cumulative buckets ending in +Inf = _count', () => {
    const { samples, types } = parsePrometheus(renderPrometheus(registry().snapshot({ histograms: true })));
    for (const name of HISTOGRAMS) {
      expect(types.get(name), name).toBe('histogram');
      const { series, problems } = histogramSeries(samples, name);
      expect(problems).toEqual([]);
      expect(series.length, name).toBeGreaterThan(0);
    }
    const byId = (name: string) => histogramSeries(samples, name).series.find((s) => s.labels.route === '/api/users/:id')!;
    const duration = byId('poolgate_http_request_duration_seconds');
    expect(duration.count).toBe(8);
    expect(Object.fromEntries(duration.buckets)).toMatchObject({ '0.0005': 1, '0.001': 2, '0.005': 3, '0.05': 4, '10': 7, '+Inf': 8 });
    expect(duration.sum).toBeCloseTo((0.2 + 0.7 + 3 + 30 + 300 + 3000 + 30_000 + 5001) / 1000, 6);
    expect(byId('poolgate_db_acquire_wait_seconds').count).toBe(8); // the timed-out wait counts
    const hits = histogramSeries(samples, 'poolgate_cache_hit_duration_seconds').series;
    expect(hits.map((s) => [s.labels.route, s.count])).toEqual([['/api/exercises', 3]]);
    expect(samples.filter((s) => 'quantile' in s.labels)).toEqual([]);
    // The old counters are the histograms' _sum now.
    expect(types.has('poolgate_db_time_seconds_total')).toBe(false);
    expect(types.has('poolgate_db_acquire_wait_seconds_total')).toBe(false);
  });

  it('renders no histogram series from a snapshot taken without them (as /stats takes it)', () => {
    const { samples } = parsePrometheus(renderPrometheus(registry().snapshot()));
    expect(samples.filter((s) => HISTOGRAMS.some((h) => s.name.startsWith(h)))).toEqual([]);
  });

  it.skipIf(!!promtoolMissing)(onPromtool('passes `promtool check metrics` with every optional family present'), () => {
    const text = renderPrometheus(registry().snapshot({ histograms: true }));
    for (const family of [
      'poolgate_pool_connections',
      'poolgate_replica_lag_seconds',
      'poolgate_breaker_state',
      'poolgate_budget_share_connections',
    ])
      expect(text).toContain(`# TYPE ${family} `);
    const { status, output } = promtool(['check', 'metrics'], text);
    expect(output).toBe('');
    expect(status).toBe(0);
  });
});
