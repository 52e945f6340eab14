/**
 * Admission by predicted wait, over real HTTP and real PostgreSQL: bursts of 500 sub-millisecond
 * reads on POOL_MAX=5 with the default queue bound and acquire timeout are all served, round after
 * round — each queued read would wait a few ms, well inside its deadline, so none is shed — and
 * the server never sees more than POOL_MAX backends of ours (pg_stat_activity, by the gateway's
 * unique application_name). And a stall of the process itself in mid-burst (a GC pause, a neighbour
 * on the same cores) sheds nothing: the waits it stretched are the loop's, not the pool's.
 * Real PostgreSQL only: the embedded fallback has one backend.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { json, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { sampleConnections } from '../helpers/ledger.js';

const POOL_MAX = 5;
const REQUESTS = 500;
const ROUNDS = 4;
const STALL_MS = 400;

/** Keeps this process's event loop (the gateway's and the clients') busy for `ms`. */
function stallLoop(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // nothing: the process is busy with something else
  }
}

const tally = (statuses: number[]) => statuses.reduce<Record<number, number>>((acc, s) => ((acc[s] = (acc[s] ?? 0) + 1), acc), {});

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
          rounds.push(tally(statuses));
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

    it(`a ${STALL_MS} ms stall of the process in mid-burst sheds nothing: the requests arriving after it are served too`, async () => {
      const read = async () => (await json(`${t.url}/api/users/${userId}`)).status;
      let answered = 0;
      const first = Array.from({ length: REQUESTS }, () => read().finally(() => answered++));
      while (answered < 20) await new Promise((r) => setTimeout(r, 1));
      stallLoop(STALL_MS); // the queued reads' answers wait on the loop, not on the pool
      const after = Array.from({ length: REQUESTS / 2 }, read);
      expect(tally(await Promise.all([...first, ...after]))).toEqual({ 200: REQUESTS + REQUESTS / 2 });
      expect(t.gateway.database.stats()!.acquireTimeoutCount).toBe(0);
    });
  },
);
