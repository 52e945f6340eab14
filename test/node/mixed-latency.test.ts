/**
 * Slow reads must not stall fast ones (issue 19, case 2): with one lane, a read route whose
 * statement waits 50–300 ms (pg_sleep: waiting, not CPU) among fast reads. What is known decides
 * what shares the lane: once the slow route's time is known it is served by the pool, and no
 * fast read waits on the lane behind a slow one. Behaviour, not speed (figures are the bench's):
 * Server-Timing says which client served each request, /stats counts statements that waited
 * behind a slow head on a lane.
 */
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fitness } from '../../src/fitness/app.js';
import { defineApp, route } from '../../src/index.js';
import { startGateway, type Gateway } from '../../src/runtime/node.js';
import { createTestDatabase, realPostgresUrl, type TestDatabase, onRealPostgres, PGLITE_CANNOT } from '../helpers/db.js';
import { json, uniqueName } from '../helpers/gateway.js';

const slowRead = route({
  method: 'GET',
  path: '/api/test/slow',
  kind: 'read',
  summary: 'A read that waits on the server (test only).',
  query: z.object({ ms: z.coerce.number().int().min(0).max(1_000) }),
  response: { status: 200, body: z.object({ ok: z.boolean() }) },
  handler: async ({ db, query }) => {
    await db.query('SELECT pg_sleep($1::float8 / 1000)', [query.ms]);
    return { status: 200, body: { ok: true } };
  },
});

const app = defineApp({ ...fitness, routes: [...fitness.routes, slowRead] });
const clientOf = (res: { headers: Headers }) => /desc="(pg-[a-z]+)/.exec(res.headers.get('server-timing') ?? '')?.[1];

describe.skipIf(!realPostgresUrl)(
  onRealPostgres('slow reads do not stall fast ones (one lane, real PostgreSQL, real HTTP)', PGLITE_CANNOT.lanes),
  () => {
    let db: TestDatabase;
    let gateway: Gateway;
    let userPath: string;

    beforeAll(async () => {
      db = await createTestDatabase('poolgate_mixed');
      gateway = await startGateway(
        app,
        {
          DATABASE_URL: db.url,
          PORT: '0',
          HOST: '127.0.0.1',
          LOG_LEVEL: 'silent',
          POOL_MAX: '8',
          PG_PIPELINE_LANES: '1',
          APPLICATION_NAME: uniqueName('poolgate-mixed'),
        },
        { log: () => {} },
      );
      const user = await json(`${gateway.url}/api/users`, {
        method: 'POST',
        json: { email: `${uniqueName()}@example.com`, name: 'Mixed' },
      });
      expect(user.status, user.text).toBe(201);
      userPath = `${gateway.url}/api/users/${user.body.id}`;
    });

    afterAll(async () => {
      await gateway?.close();
      await db?.drop();
    });

    it('once a read is known slow it is served by the pool; no fast read waits behind a slow one on the lane', async () => {
      // Learn: the slow route alone, until it is known (its first run may be on the lane, with nothing behind it).
      for (let i = 0; i < 3; i++) expect((await json(`${gateway.url}/api/test/slow?ms=60`)).status).toBe(200);
      const before = (await json(`${gateway.url}/stats`)).body.pool.pipeline;

      const served: Record<string, Record<string, number>> = { slow: {}, fast: {} };
      const statuses: number[] = [];
      const until = Date.now() + 3_000;
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (Date.now() < until) {
            const slow = Math.random() < 0.1;
            const res = await json(slow ? `${gateway.url}/api/test/slow?ms=${50 + Math.floor(Math.random() * 250)}` : userPath);
            statuses.push(res.status);
            const tally = served[slow ? 'slow' : 'fast']!;
            const client = clientOf(res) ?? 'none';
            tally[client] = (tally[client] ?? 0) + 1;
          }
        }),
      );
      const after = (await json(`${gateway.url}/stats`)).body.pool.pipeline;
      expect(statuses.every((s) => s === 200)).toBe(true);
      expect(Object.keys(served.slow!)).toEqual(['pg-pool']);
      expect(served.fast!['pg-pipeline']).toBeGreaterThan(0); // fast reads still share the lane
      expect(after.waitedBehindSlowCount).toBe(0);
      expect(after.slowToPoolCount - before.slowToPoolCount).toBeGreaterThanOrEqual(served.slow!['pg-pool']!);
    });
  },
);
