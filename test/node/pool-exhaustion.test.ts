/**
 * Pool exhaustion: with one connection held by a request that is genuinely slow (blocked on a
 * table lock an admin session holds), the next request waits at most the acquire timeout and
 * gets 503 pool_exhausted with Retry-After; with the wait queue full, a request is refused at once
 * (overloaded). Once the lock goes, the held request completes and the pool serves again.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  adminClient,
  json,
  type JsonResponse,
  leaksIn,
  seenResponses,
  startTestGateway,
  waitFor,
  type TestGateway,
} from '../helpers/gateway.js';

const ACQUIRE_TIMEOUT_MS = 300;
let t: TestGateway;
let locker: pg.Client;
let userId: string;

beforeAll(async () => {
  t = await startTestGateway({ POOL_MAX: '1', POOL_MIN: '0', POOL_ACQUIRE_TIMEOUT_MS: String(ACQUIRE_TIMEOUT_MS), POOL_QUEUE_MAX: '1' });
  const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `ex-${randomUUID()}@example.com`, name: 'Ex' } });
  expect(u.status).toBe(201);
  userId = u.body.id;
  locker = await adminClient(t.db);
});

afterAll(async () => {
  await locker?.query('ROLLBACK').catch(() => {});
  await locker?.end().catch(() => {});
  await t?.stop();
});

/** Starts a request that holds the only connection until `release()`; resolves once it holds it. */
async function holdTheConnection() {
  await locker.query('BEGIN');
  await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
  const slow = json(`${t.url}/api/users/${userId}`);
  await waitFor(() => t.gateway.database.stats()!.active === 1, { what: 'the slow request to hold the connection' });
  return {
    slow,
    release: () => locker.query('COMMIT'),
  };
}

describe('one connection, held by a slow request', () => {
  it('a second request gets 503 pool_exhausted with Retry-After once the acquire timeout has passed', async () => {
    const { slow, release } = await holdTheConnection();
    try {
      const started = performance.now();
      // Nothing frees the connection until release() below: an answer at all means it gave up by itself.
      const second = await json(`${t.url}/api/users/${userId}`);
      const elapsedMs = performance.now() - started;

      expect(second.status).toBe(503);
      expect(second.body.error).toMatchObject({ code: 'pool_exhausted', requestId: expect.any(String) });
      expect(second.headers.get('retry-after')).toBe('1');
      expect(elapsedMs).toBeGreaterThanOrEqual(ACQUIRE_TIMEOUT_MS - 20); // it did wait
    } finally {
      await release();
    }
    const first = await slow;
    expect(first.status).toBe(200);
    expect(first.body.id).toBe(userId);

    const pool = t.gateway.database.stats()!;
    expect(pool.acquireTimeoutCount).toBe(1);
    expect(pool.active).toBe(0);
    expect(pool.max).toBe(1);
    expect((await json(`${t.url}/api/users/${userId}`)).status).toBe(200);
  });

  it('with the wait queue full, a further request is refused at once with 503 overloaded', async () => {
    const before = t.gateway.database.stats()!;
    const { slow, release } = await holdTheConnection();
    let waiting: Promise<JsonResponse> | undefined;
    try {
      waiting = json(`${t.url}/api/users/${userId}`); // takes the one queue place
      await waitFor(() => t.gateway.database.stats()!.waiting === 1, { what: 'a request waiting for the connection' });
      const refused = await json(`${t.url}/api/users/${userId}`);
      expect(refused.status).toBe(503);
      expect(refused.body.error.code).toBe('overloaded');
      expect(refused.headers.get('retry-after')).toBe('1');
      const queued = await waiting;
      expect(queued.status).toBe(503);
      expect(queued.body.error.code).toBe('pool_exhausted');
    } finally {
      await release();
    }
    expect((await slow).status).toBe(200);
    const after = t.gateway.database.stats()!;
    expect(after.queueRejectedCount - before.queueRejectedCount).toBe(1);
    expect(after.acquireTimeoutCount - before.acquireTimeoutCount).toBe(1);
    expect(after.active).toBe(0);
  });

  it('/stats counts the 503s per route, and the pool timeouts and refusals', async () => {
    const stats = await json(`${t.url}/stats`);
    const route = stats.body.routes.find((r: { method: string; route: string }) => r.method === 'GET' && r.route === '/api/users/:id');
    expect(route.statusClasses['5xx']).toBe(3);
    expect(stats.body.pool).toMatchObject({ max: 1, acquireTimeoutCount: 2, queueRejectedCount: 1 });
    expect(stats.body.pool.admission).toMatchObject({
      estimateMs: expect.any(Number),
      shed: { wait: 0, deadline: 0, overload: 0, queue_full: 1 },
    });
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    expect(metrics).toContain('poolgate_admission_shed_total{scope="node",path="pool",reason="queue_full"} 1');
    expect(metrics).toMatch(/^poolgate_admission_estimate_seconds\{scope="node",path="pool"\} [0-9.e-]+$/m);
  });

  it('no response leaked internals', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, t.db))).toEqual([]);
  });

  it('the shed request is logged in one summary line, written at the latest when the gateway stops', async () => {
    await t.stop();
    const lines = t.logs
      .map((l) => JSON.parse(l) as { msg: string; level: string; event?: string })
      .filter((l) => l.msg.includes('shed requests'));
    expect(lines).toEqual([
      expect.objectContaining({
        level: 'warn',
        event: 'shed',
        msg: 'poolgate: shed requests with 503 overloaded in the last 10 s: pool 1 (wait 0, deadline 0, overload 0, queue_full 1)',
      }),
    ]);
  });
});
