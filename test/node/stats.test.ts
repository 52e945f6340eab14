/**
 * Per-route stats over real HTTP: exact counts per route pattern (never the raw URL), status
 * classes and the client that served each request; the same figures in /metrics as parseable
 * Prometheus text, latencies as histograms that `promtool check metrics` accepts; a Server-Timing
 * header on every response; and connection reuse on a warm pool.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { json, leaksIn, seenResponses, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { histogramSeries, onPromtool, parsePrometheus, promtool, promtoolMissing } from '../helpers/prometheus.js';

let t: TestGateway;

beforeAll(async () => {
  t = await startTestGateway({ POOL_MAX: '3', POOL_MIN: '1' });
});

afterAll(async () => {
  await t?.stop();
});

interface RouteRow {
  method: string;
  route: string;
  count: number;
  statusClasses: Record<string, number>;
  errorCount: number;
  clients: Record<string, number>;
  queries: { sum: number };
}

const routeOf = (routes: RouteRow[], method: string, route: string) => routes.find((r) => r.method === method && r.route === route);

describe('a known sequence of requests on a fresh gateway', () => {
  let userId: string;

  beforeAll(async () => {
    const created = await json(`${t.url}/api/users`, {
      method: 'POST',
      json: { email: `stats-${randomUUID()}@example.com`, name: 'Stats' },
    });
    expect(created.status).toBe(201);
    userId = created.body.id;
    for (let i = 0; i < 3; i++) expect((await json(`${t.url}/api/users/${userId}`)).status).toBe(200);
    for (let i = 0; i < 2; i++) expect((await json(`${t.url}/api/users/${randomUUID()}`)).status).toBe(404);
    expect((await json(`${t.url}/api/users/not-a-uuid`)).status).toBe(400); // refused before any DB work
    expect((await json(`${t.url}/api/users`, { method: 'POST', json: { email: 'nope' } })).status).toBe(400);
    expect((await json(`${t.url}/no/such/route`)).status).toBe(404);
    expect((await json(`${t.url}/health`)).status).toBe(200);
  });

  it('/stats reports exact counts per route pattern, status class and client', async () => {
    const res = await json(`${t.url}/stats`);
    expect(res.status).toBe(200);
    const routes = res.body.routes as RouteRow[];
    expect(res.body.scope).toBe('node');

    expect(routeOf(routes, 'POST', '/api/users')).toMatchObject({
      count: 2,
      statusClasses: { '2xx': 1, '4xx': 1 },
      errorCount: 1,
      clients: { 'pg-pool': 1, none: 1 },
    });
    const byId = routeOf(routes, 'GET', '/api/users/:id')!;
    expect(byId).toMatchObject({ count: 6, statusClasses: { '2xx': 3, '4xx': 3 }, errorCount: 3, clients: { 'pg-pool': 5, none: 1 } });
    expect(byId.queries.sum).toBe(5);
    expect(routeOf(routes, 'GET', '(unmatched)')).toMatchObject({ count: 1, statusClasses: { '4xx': 1 }, clients: { none: 1 } });
    expect(routeOf(routes, 'GET', '/health')).toMatchObject({ count: 1, statusClasses: { '2xx': 1 }, clients: { none: 1 } });
    expect(routeOf(routes, 'GET', '/stats')).toBeUndefined(); // this request is recorded after its own snapshot

    // Only patterns: no id, no query string, no raw path ever becomes a route key.
    expect(routes.map((r) => `${r.method} ${r.route}`).sort()).toEqual([
      'GET (unmatched)',
      'GET /api/users/:id',
      'GET /health',
      'POST /api/users',
    ]);
    expect(res.text).not.toContain(userId);
    expect(res.text).not.toContain('/no/such/route');
    expect(res.body.pool).toMatchObject({ max: 3, active: 0, waiting: 0, acquireTimeoutCount: 0, queueRejectedCount: 0 });
  });

  it('/metrics reports the same counts as parseable Prometheus text', async () => {
    const res = await fetch(`${t.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    seenResponses.push(text);
    const { samples, types } = parsePrometheus(text);

    const value = (name: string, labels: Record<string, string>) => {
      const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
      expect(found.length, `${name} ${JSON.stringify(labels)}`).toBe(1);
      return found[0]!.value;
    };
    const base = { scope: 'node', method: 'GET', route: '/api/users/:id' };
    expect(value('poolgate_http_requests_total', { ...base, status_class: '2xx' })).toBe(3);
    expect(value('poolgate_http_requests_total', { ...base, status_class: '4xx' })).toBe(3);
    expect(value('poolgate_http_requests_by_client_total', { ...base, client: 'pg-pool' })).toBe(5);
    expect(value('poolgate_http_requests_by_client_total', { ...base, client: 'none' })).toBe(1);
    expect(value('poolgate_http_requests_total', { scope: 'node', method: 'POST', route: '/api/users', status_class: '2xx' })).toBe(1);
    expect(value('poolgate_http_requests_total', { scope: 'node', method: 'GET', route: '/stats', status_class: '2xx' })).toBe(1);
    expect(value('poolgate_http_request_duration_seconds_count', base)).toBe(6);
    expect(value('poolgate_pool_max_connections', { scope: 'node' })).toBe(3);
    expect(value('poolgate_pool_connections', { scope: 'node', state: 'active' })).toBe(0);

    expect(types.get('poolgate_http_requests_total')).toBe('counter');
    expect(types.get('poolgate_http_request_duration_seconds')).toBe('histogram');
    for (const s of samples) {
      const family = s.name.replace(/_(sum|count|bucket)$/, '');
      expect(types.has(s.name) || types.has(family), `${s.name} has a # TYPE`).toBe(true);
      expect(Number.isNaN(s.value), s.name).toBe(false);
      expect(s.labels.route ?? '', s.name).not.toMatch(/[0-9a-f]{8}-[0-9a-f]{4}/);
    }
  });

  it('/metrics has latencies as histograms: cumulative buckets, and _count the requests made', async () => {
    const { samples, types } = parsePrometheus(await (await fetch(`${t.url}/metrics`)).text());
    // Requests made per route, and how many of them reached the database (the invalid id and body did not).
    const made = [
      { method: 'GET', route: '/api/users/:id', requests: 6, reachedDb: 5 },
      { method: 'POST', route: '/api/users', requests: 2, reachedDb: 1 },
      { method: 'GET', route: '(unmatched)', requests: 1, reachedDb: 0 },
      { method: 'GET', route: '/health', requests: 1, reachedDb: 0 },
    ];
    const families = {
      poolgate_http_request_duration_seconds: 'requests',
      poolgate_db_time_seconds: 'reachedDb',
      poolgate_db_acquire_wait_seconds: 'reachedDb',
    } as const;
    for (const [name, expected] of Object.entries(families)) {
      expect(types.get(name), name).toBe('histogram');
      const { series, problems } = histogramSeries(samples, name);
      expect(problems).toEqual([]);
      for (const m of made) {
        const s = series.find((x) => x.labels.method === m.method && x.labels.route === m.route);
        expect(s?.count ?? 0, `${name} ${m.method} ${m.route}`).toBe(m[expected]);
        if (s) expect(s.buckets.map(([le]) => le)).toEqual(expect.arrayContaining(['0.001', '0.1', '1', '10', '+Inf']));
      }
    }
    expect(samples.some((s) => s.name.startsWith('poolgate_http_request_duration_seconds') && 'quantile' in s.labels)).toBe(false);
  });

  it.skipIf(!!promtoolMissing)(onPromtool('/metrics passes `promtool check metrics` (format and naming lint)'), async () => {
    const text = await (await fetch(`${t.url}/metrics`)).text();
    const { status, output } = promtool(['check', 'metrics'], text);
    expect(output).toBe('');
    expect(status).toBe(0);
  });
});

describe('Server-Timing', () => {
  it('carries acquire, db and total durations of that request', async () => {
    const created = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `st-${randomUUID()}@example.com`, name: 'ST' } });
    const res = await json(`${t.url}/api/users/${created.body.id}`);
    const header = res.headers.get('server-timing');
    expect(header).toBeTruthy();
    const entries = new Map(
      header!.split(/,\s*/).map((part) => {
        const [name, ...params] = part.split(';');
        const dur = params.find((p) => p.startsWith('dur='));
        return [name!.trim(), { dur: Number(dur?.slice(4)), desc: params.find((p) => p.startsWith('desc='))?.slice(5) }];
      }),
    );
    for (const name of ['acquire', 'db', 'total']) {
      const e = entries.get(name);
      expect(e, name).toBeDefined();
      expect(Number.isFinite(e!.dur) && e!.dur >= 0, `${name} dur`).toBe(true);
    }
    expect(entries.get('db')!.desc).toBe('"pg-pool 1q"');
    expect(entries.get('total')!.dur).toBeGreaterThanOrEqual(entries.get('db')!.dur);

    const none = await json(`${t.url}/health`);
    expect(none.headers.get('server-timing')).toMatch(/acquire;dur=0\.00, db;dur=0\.00;desc="none 0q", total;dur=[\d.]+/);
    const notFound = await json(`${t.url}/nowhere`);
    expect(notFound.headers.get('server-timing')).toMatch(/total;dur=/);
  });
});

describe('connection reuse', () => {
  it('is above 0.9 after 100 sequential requests on a warm pool', async () => {
    const created = await json(`${t.url}/api/users`, {
      method: 'POST',
      json: { email: `reuse-${randomUUID()}@example.com`, name: 'Reuse' },
    });
    const before = t.gateway.database.stats()!;
    for (let i = 0; i < 100; i++) {
      const res = await json(`${t.url}/api/users/${created.body.id}`);
      expect(res.status).toBe(200);
    }
    const after = (await json(`${t.url}/stats`)).body.pool;
    expect(after.acquisitionCount - before.acquisitionCount).toBe(100);
    expect(after.openedCount - before.openedCount).toBe(0); // sequential requests need no new connection
    expect(after.reuseRate).toBeGreaterThan(0.9);
    expect(after.total).toBeLessThanOrEqual(3);
  });
});

describe('no response leaks internals', () => {
  it('none of the stats, metrics or API responses carries a stack, URL, host or user', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, t.db))).toEqual([]);
  });
});
