/**
 * Admission by predicted wait, over real HTTP and real PostgreSQL: bursts of 500 sub-millisecond
 * reads on POOL_MAX=5 with the default queue bound and acquire timeout are all served, round after
 * round — each queued read would wait a few ms, well inside its deadline, so none is shed — and
 * the server never sees more than POOL_MAX backends of ours (pg_stat_activity, by the gateway's
 * unique application_name). Real PostgreSQL only: the embedded fallback has one backend.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { json, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { sampleConnections } from '../helpers/ledger.js';

const POOL_MAX = 5;
const REQUESTS = 500;
const ROUNDS = 4;

describe.skipIf(!realPostgresUrl)(
  onRealPostgres('admission by predicted wait: 500-read bursts on POOL_MAX=5, default bounds', PGLITE_CANNOT.serverView),
  () => {
    let t: TestGateway;
    let userId: string;

    beforeAll(async () => {
      // Only POOL_MAX is set: POOL_QUEUE_MAX, POOL_ACQUIRE_TIMEOUT_MS and the lanes keep their defaults.
      t = await startTestGateway({ POOL_MAX: String(POOL_MAX), POOL_MIN: '1' });
      const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `burst-${randomUUID()}@example.com`, name: 'Burst' } });
      expect(u.status).toBe(201);
      userId = u.body.id;
    });

    afterAll(async () => {
      await t?.stop();
    });

    it(`serves ${REQUESTS}/${REQUESTS} in each of ${ROUNDS} rounds with at most ${POOL_MAX} server backends`, async () => {
      const sampler = sampleConnections(t.db, t.applicationName, 2);
      let maxSeen: number;
      const rounds: Record<number, number>[] = [];
      try {
        for (let round = 0; round < ROUNDS; round++) {
          const statuses = await Promise.all(
            Array.from({ length: REQUESTS }, async () => (await json(`${t.url}/api/users/${userId}`)).status),
          );
          rounds.push(statuses.reduce<Record<number, number>>((acc, s) => ((acc[s] = (acc[s] ?? 0) + 1), acc), {}));
        }
      } finally {
        maxSeen = (await sampler.stop()).max;
      }
      expect(rounds).toEqual(Array.from({ length: ROUNDS }, () => ({ 200: REQUESTS })));
      expect(maxSeen).toBeGreaterThan(0);
      expect(maxSeen).toBeLessThanOrEqual(POOL_MAX);
      const stats = t.gateway.database.stats()!;
      expect(stats.queueRejectedCount).toBe(0);
      expect(stats.acquireTimeoutCount).toBe(0);
    });
  },
);
