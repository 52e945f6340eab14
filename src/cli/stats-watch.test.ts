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

  it('across a restart (another start, or a counter that went down) the rate is -, never negative', () => {
    const at = new Date('2026-12-07T14:01:00Z');
    const later = new Date(at.getTime() + 2_000);
    const before = { snapshot: snapshot([route(100)]), at };
    const restarted = { ...snapshot([route(4)]), startedAt: '2026-12-07T14:00:59.000Z' };
    expect(renderStats(restarted, later, 'http://g', before)).toMatch(/^GET \/api\/users\/:id +4 +- /m);
    expect(renderStats(snapshot([route(4)]), later, 'http://g', before)).toMatch(/^GET \/api\/users\/:id +4 +- /m);
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
    // printed with every poll: no credentials, no query
    expect(statsUrlOf('http://ops:secret@127.0.0.1:8788/?token=t')).toBe('http://127.0.0.1:8788/stats');
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
  it('JSON with routes but not the rest of a snapshot is the not-poolgate line and exit 1, not a stack trace', async () => {
    const server = createServer((_req, res) => res.end('{"routes":[]}'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const errors: string[] = [];
    try {
      const code = await watchStats({
        url,
        watch: false,
        intervalMs: 1_000,
        out: { write: () => {} },
        err: { write: (t: string) => errors.push(t) },
      });
      expect(code).toBe(1);
      expect(errors).toEqual([`poolgate: ${url}/stats did not answer poolgate's stats JSON; is this a poolgate gateway?\n`]);
    } finally {
      server.close();
    }
  });

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
