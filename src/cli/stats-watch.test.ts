/**
 * The stats view's text from a snapshot: rates from two polls, the figures as /stats gives them.
 * test/cli/stats-watch.test.ts runs the command against a real gateway.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { RouteSnapshot, StatsSnapshot } from '../stats/registry.js';
import { renderStats, statsUrlOf, watchStats } from './stats-watch.js';

const route = (count: number, extra: Partial<RouteSnapshot> = {}): RouteSnapshot => ({
  method: 'GET',
  route: '/api/users/:id',
  count,
  statusClasses: { '2xx': count },
  errorCount: 0,
  latencyMs: { p50: 1.5, p95: 3, p99: 4.25, max: 9, sum: 100 },
  dbTimeMs: { sum: 50, mean: 0.5 },
  acquireWaitMs: { sum: 2, mean: 0.02, max: 1 },
  queries: { sum: count, perRequest: 1 },
  clients: { 'pg-pipeline': count },
  retryCount: 0,
  replayCount: 0,
  ...extra,
});

const snapshot = (routes: RouteSnapshot[]): StatsSnapshot => ({
  scope: 'node-1',
  startedAt: '2026-12-07T14:00:00.000Z',
  uptimeSeconds: 60,
  routes,
  pool: {
    max: 5,
    total: 3,
    active: 1,
    idle: 2,
    waiting: 0,
    openedCount: 3,
    closedCount: 0,
    acquisitionCount: 10,
    reuseRate: 0.7,
    errorCount: 0,
    acquireTimeoutCount: 0,
    queueRejectedCount: 0,
    retryCount: 0,
    retryDeniedCount: 0,
    cancelledCount: 0,
  },
  breakers: [{ name: 'postgres', state: 'closed', openedCount: 0, rejectedCount: 0 }],
});

describe('renderStats', () => {
  it('shows pool, breakers and each route; rate only from the second poll', () => {
    const at = new Date('2026-12-07T14:01:00Z');
    const first = renderStats(snapshot([route(100)]), at, 'http://g');
    expect(first).toMatch(/^pool +total 3 {2}active 1 {2}idle 2 {2}waiting 0 {2}max 5$/m);
    expect(first).toMatch(/^breakers +postgres closed$/m);
    expect(first).toMatch(/^GET \/api\/users\/:id +100 +- +1\.50 +4\.25 +0\.50 +0\.02 +0 +- +pg-pipeline 100$/m);
    const second = renderStats(
      snapshot([
        route(150, { cache: { hit: 30, stale: 0, miss: 10, invalidated: 0, bypass: 0, hitRate: 0.75, hitLatencyMs: { p50: 0, p99: 0 } } }),
      ]),
      new Date(at.getTime() + 2_000),
      'http://g',
      {
        snapshot: snapshot([route(100)]),
        at,
      },
    );
    expect(second).toMatch(/^GET \/api\/users\/:id +150 +25\.0 .* 75% +pg-pipeline 150$/m);
  });

  it('no routes yet, no pool: said so', () => {
    const s = { ...snapshot([]), pool: undefined };
    expect(renderStats(s, new Date(), 'http://edge')).toMatch(/pool +\(none: this runtime keeps no pool\)[\s\S]*\(no requests yet\)/);
  });
});

describe('statsUrlOf', () => {
  it('appends /stats to a base URL, keeps a /stats URL, refuses what is no http URL', () => {
    expect(statsUrlOf('http://127.0.0.1:8788')).toBe('http://127.0.0.1:8788/stats');
    expect(statsUrlOf('http://127.0.0.1:8788/ops/')).toBe('http://127.0.0.1:8788/ops/stats');
    expect(statsUrlOf('https://h/stats')).toBe('https://h/stats');
    expect(statsUrlOf('127.0.0.1:8788')).toBeUndefined();
  });
});

async function serveSnapshots(): Promise<{ url: string; close: () => void }> {
  let polls = 0;
  const server = createServer((_req, res) => {
    polls++;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(snapshot([route(polls * 10)])));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close() };
}

describe('watchStats', () => {
  it('a stop between polls ends the wait at once (not after the interval)', async () => {
    const { url, close } = await serveSnapshots();
    const stop = new AbortController();
    const writes: string[] = [];
    const out = { write: (text: string) => writes.push(text) && setImmediate(() => stop.abort()) };
    try {
      expect(await watchStats({ url, watch: true, intervalMs: 3_600_000, out, err: out, signal: stop.signal })).toBe(0);
      expect(writes).toHaveLength(1);
    } finally {
      close();
    }
  });

  it('on a terminal, each poll redraws the screen; stopping ends the watch with 0', async () => {
    const { url, close } = await serveSnapshots();
    const stop = new AbortController();
    const writes: string[] = [];
    const out = {
      isTTY: true,
      write(text: string) {
        writes.push(text);
        if (writes.length === 2) stop.abort();
      },
    };
    try {
      const code = await watchStats({ url, watch: true, intervalMs: 100, out, err: out, signal: stop.signal });
      expect(code).toBe(0);
      expect(writes).toHaveLength(2);
      for (const w of writes) expect(w.startsWith('\x1b[2J\x1b[H')).toBe(true);
      expect(writes[1]).toMatch(/^GET \/api\/users\/:id +20 +\d+\.\d /m);
    } finally {
      close();
    }
  });
});
