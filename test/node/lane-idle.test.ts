/**
 * The pool sizes itself around the lanes (issue 21, part 3): a lane takes its connection out of
 * POOL_MAX only while it is open, and a lane idle for POOL_IDLE_TIMEOUT_MS closes like an idle
 * pooled connection, its connection going back to the pool's size. Before, the pool was POOL_MAX
 * less PG_PIPELINE_LANES whether the lanes were open or not, and lanes never closed.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPgPoolDatabase, type PgPoolDatabase } from '../../src/db/connectors/pg-pool.js';
import type { ClientKind, QueryObserver } from '../../src/db/types.js';
import { POOL } from '../contract/backends.js';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';

const observer = (kinds: ClientKind[] = []): QueryObserver => ({
  intent: 'read',
  acquired() {},
  queried() {},
  served: (kind) => void kinds.push(kind),
});

describe.skipIf(!realPostgresUrl)(
  onRealPostgres('lanes inside the pool size, closed when idle (real PostgreSQL)', PGLITE_CANNOT.lanes),
  () => {
    let db: TestDatabase;
    let database: PgPoolDatabase;

    beforeAll(async () => {
      db = await createTestDatabase();
      database = createPgPoolDatabase(
        { ...POOL, max: 5, pipelineLanes: 2, idleTimeoutMs: 300, connectionString: db.url, applicationName: 'poolgate-lane-idle' },
        { Pool: pg.Pool, Client: pg.Client },
      );
    });

    afterAll(async () => {
      await database?.close();
      await db?.drop();
    });

    it('the pool is POOL_MAX while no lane is open, one less per open lane, and whole again once the lanes sat idle', async () => {
      expect(database.stats()!.max).toBe(5);
      await waitFor(async () => {
        const kinds: ClientKind[] = [];
        await database.forRequest(observer(kinds)).query('SELECT 1');
        return kinds[0] === 'pg-pipeline';
      });
      const open = database.stats()!;
      expect(open.pipeline!.lanes).toBe(1);
      expect(open.max).toBe(4);
      await waitFor(() => database.stats()!.pipeline!.lanes === 0 && database.stats()!.max === 5, {
        timeoutMs: 10_000,
        what: 'the idle lane closed and its connection back in the pool size',
      });
      // …and on the server: only the pool's connections are left.
      await waitFor(
        async () =>
          (await db.admin(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'poolgate-lane-idle'`)).rows[0].n ===
          database.stats()!.total,
        { timeoutMs: 10_000, what: "the lane's backend gone" },
      );
    });
  },
);
