/**
 * The Prometheus text of a snapshot with every optional part present (pool with admission, lanes,
 * budget and refusals; replicas; breakers; a cached route): latencies as histograms with cumulative
 * buckets, no quantile left, and text that Prometheus' own `promtool check metrics` accepts.
 */
import { describe, expect, it } from 'vitest';
import {
  everyFamilyRegistry as registry,
  histogramSeries,
  onPromtool,
  parsePrometheus,
  promtool,
  promtoolMissing,
} from '../../test/helpers/prometheus.js';
import { renderPrometheus } from './prometheus.js';

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
      'poolgate_replica_max_lag_seconds',
      'poolgate_breaker_state',
      'poolgate_budget_share_connections',
    ])
      expect(text).toContain(`# TYPE ${family} `);
    const { status, output } = promtool(['check', 'metrics'], text);
    expect(output).toBe('');
    expect(status).toBe(0);
  });
});
