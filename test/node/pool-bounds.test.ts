/**
 * The pool never opens more than POOL_MAX connections, however many requests arrive at once:
 * 500 concurrent reads all succeed while a sampler watches the server side (pg_stat_activity,
 * by the gateway's unique application_name). Real PostgreSQL only: the embedded fallback has a
 * single backend and no per-connection pg_stat_activity. Once with every connection in the pool,
 * once with two of them pipelined read lanes (PG_PIPELINE_LANES), whose overflow goes to the pool.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { json, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { sampleConnections } from '../helpers/ledger.js';

const POOL_MAX = 5;
const REQUESTS = 500;

describe.skipIf(!realPostgresUrl).each([0, 2])(
  onRealPostgres(
    'pool bounds under 500 concurrent requests, %d read lanes (real PostgreSQL: counts server backends)',
    PGLITE_CANNOT.serverView,
  ),
  (lanes) => {
    let t: TestGateway;
    let userId: string;

    beforeAll(async () => {
      t = await startTestGateway({
        POOL_MAX: String(POOL_MAX),
        PG_PIPELINE_LANES: String(lanes),
        POOL_MIN: '1',
        POOL_QUEUE_MAX: String(REQUESTS * 2),
        POOL_ACQUIRE_TIMEOUT_MS: '30000',
      });
      const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `bounds-${randomUUID()}@example.com`, name: 'Bounds' } });
      expect(u.status).toBe(201);
      userId = u.body.id;
    });

    afterAll(async () => {
      await t?.stop();
    });

    it(`serves all ${REQUESTS} requests with at most ${POOL_MAX} server connections`, async () => {
      let maxTotal = 0;
      const sampler = sampleConnections(t.db, t.applicationName, 2, () => {
        maxTotal = Math.max(maxTotal, t.gateway.database.stats()!.total);
      });

      const responses = await Promise.all(
        Array.from({ length: REQUESTS }, async () => {
          // The list route: a snapshot read batch (BEGIN … COMMIT), so each request holds a connection a little while.
          const res = await json(`${t.url}/api/users/${userId}/workouts?limit=5`);
          return res.status;
        }),
      );
      const { max: maxSeen, samples } = await sampler.stop();

      const byStatus = responses.reduce<Record<number, number>>((acc, s) => ((acc[s] = (acc[s] ?? 0) + 1), acc), {});
      expect(byStatus).toEqual({ 200: REQUESTS });
      expect(samples).toBeGreaterThan(5);
      expect(maxSeen).toBeGreaterThan(0);
      expect(maxSeen).toBeLessThanOrEqual(POOL_MAX);
      expect(maxTotal).toBeLessThanOrEqual(POOL_MAX);

      const pool = t.gateway.database.stats()!;
      expect(pool.openedCount).toBeLessThanOrEqual(POOL_MAX); // connections were reused, never churned
      expect(pool.acquireTimeoutCount).toBe(0);
      expect(pool.queueRejectedCount).toBe(0);
      if (lanes === 0)
        expect(pool.total).toBe(POOL_MAX); // the load really pressed against the bound
      else expect(pool.pipeline).toMatchObject({ lanes, inFlight: 0 });
      expect(pool.total + lanes).toBeLessThanOrEqual(POOL_MAX);
      expect(pool.active).toBe(0);
      expect(pool.waiting).toBe(0);
    });
  },
);
