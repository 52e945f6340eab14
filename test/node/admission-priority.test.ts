/**
 * Writes and health checks do not starve behind a flood of reads. Set-up: POOL_MAX 2, no lanes
 * (every read takes a pooled session); an admin session locks the workouts table, so the list read
 * (GET /api/users/:id/workouts) blocks on it. Two such reads hold both connections, 30 more queue.
 * Then a readiness check (GET /health/ready: a ping with a 1 s deadline) and a write (POST
 * /api/users, which does not touch workouts) arrive behind them. One holder's client goes away,
 * which frees one connection: the health check and the write take it in turn, ahead of the 30
 * reads, and are answered while every read still waits (they block on the lock we hold, so this is
 * an order, not a race). In first-come order the freed connection would go to the first read,
 * which blocks: the health check would fail at its deadline and the write wait out its acquire
 * timeout. Once the lock goes, every read is served.
 *
 * Real PostgreSQL only: a second backend holds the lock.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { adminClient, json, startTestGateway, waitFor, type JsonResponse, type TestGateway } from '../helpers/gateway.js';

const READS = 30;

describe.skipIf(!realPostgresUrl)(
  onRealPostgres('writes and health checks go ahead of a flood of reads (real PostgreSQL: a table lock)', PGLITE_CANNOT.secondSession),
  () => {
    let t: TestGateway;
    let locker: pg.Client;
    let userId: string;

    beforeAll(async () => {
      t = await startTestGateway({ POOL_MAX: '2', POOL_MIN: '0', PG_PIPELINE_LANES: '0' });
      const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `prio-${randomUUID()}@example.com`, name: 'Prio' } });
      expect(u.status).toBe(201);
      userId = u.body.id;
      locker = await adminClient(t.db);
    });

    afterAll(async () => {
      await locker?.query('ROLLBACK').catch(() => {});
      await locker?.end().catch(() => {});
      await t?.stop();
    });

    it('a freed connection goes to the health check and the write before any of the queued reads', async () => {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE workouts IN ACCESS EXCLUSIVE MODE');
      const list = (signal?: AbortSignal) => json(`${t.url}/api/users/${userId}/workouts?limit=5`, { signal });
      const quitter = new AbortController();
      list(quitter.signal).catch(() => {}); // its client goes away below
      const holder = list();
      await waitFor(() => t.gateway.database.stats()!.active === 2, { what: 'two reads holding both connections' });
      const reads = Array.from({ length: READS }, () => track(list()));
      await waitFor(() => t.gateway.database.stats()!.waiting === READS, { what: `${READS} reads queued` });

      const health = track(json(`${t.url}/health/ready`));
      await waitFor(() => t.gateway.database.stats()!.waiting === READS + 1, { what: 'the health check queued' });
      const write = track(
        json(`${t.url}/api/users`, { method: 'POST', json: { email: `prio-w-${randomUUID()}@example.com`, name: 'Write' } }),
      );
      await waitFor(() => t.gateway.database.stats()!.waiting === READS + 2, { what: 'the write queued' });

      quitter.abort(); // frees one connection
      const [ready, created] = await Promise.all([health.promise, write.promise]);
      expect(ready.status).toBe(200);
      expect(created.status).toBe(201);
      expect(reads.filter((r) => r.settled).length).toBe(0); // every read still waits behind the lock

      await locker.query('COMMIT');
      const answered = await Promise.all([holder, ...reads.map((r) => r.promise)]);
      expect(answered.map((r) => r.status)).toEqual(Array.from({ length: READS + 1 }, () => 200));
      expect(t.gateway.database.stats()).toMatchObject({ queueRejectedCount: 0, acquireTimeoutCount: 0, waiting: 0 });
    });
  },
);

function track(promise: Promise<JsonResponse>) {
  const state = { promise, settled: false };
  promise.finally(() => (state.settled = true)).catch(() => {});
  return state;
}
