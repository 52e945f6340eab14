/**
 * Through `poolgate/functions` (the guide's API), callers that abandon their calls fail nobody else
 * (issue 19, case 1: with 20 % of calls aborted, hundreds of 26000 "prepared statement does not
 * exist" per 25 s reached callers that did nothing wrong). Real PostgreSQL, one lane and a small
 * pool, a lock taken and released so that statements wait while their callers leave.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeClient, type NodeClient } from '../../src/runtime/functions.js';
import { adminClient } from '../helpers/gateway.js';
import { createTestDatabase, realPostgresUrl, type TestDatabase, onRealPostgres, PGLITE_CANNOT } from '../helpers/db.js';

/** 'ok', 'aborted', or the SQLSTATE or error code the caller got. */
type Outcome = string;

describe.skipIf(!realPostgresUrl)(
  onRealPostgres('poolgate/functions: abandoned calls fail nobody else (real PostgreSQL, one lane)', PGLITE_CANNOT.lanes),
  () => {
    let db: TestDatabase;
    let client: NodeClient;

    beforeAll(async () => {
      db = await createTestDatabase('poolgate_fn_aborts');
      await db.admin('CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)');
      await db.admin("INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 50) g");
      client = createNodeClient({
        env: { DATABASE_URL: db.url, POOL_MAX: '4', PG_PIPELINE_LANES: '1', PG_PIPELINE_SLOW_MS: '60000', LOG_LEVEL: 'silent' },
      });
    });

    afterAll(async () => {
      await client?.close().catch(() => {});
      await db?.drop();
    });

    /** One call, abandoned after `abortMs` when given: what its caller saw. */
    const call = async (i: number, abortMs?: number): Promise<Outcome> => {
      const controller = new AbortController();
      const timer = abortMs === undefined ? undefined : setTimeout(() => controller.abort(), abortMs);
      const signal = controller.signal;
      try {
        if (i % 3 === 0) {
          await client.readBatch(
            [
              { text: 'SELECT body FROM notes WHERE id = $1', params: [1 + (i % 50)] },
              { text: 'SELECT count(*) FROM notes WHERE id > $1', params: [i % 50] },
            ],
            { signal },
          );
        } else if (i % 3 === 1) {
          await client.executeQuery('SELECT body FROM notes WHERE id = $1', [1 + (i % 50)], { kind: 'read', signal });
        } else {
          await client.executeTransaction(async (tx) => tx.query('SELECT id FROM notes WHERE id = $1 FOR SHARE', [1 + (i % 50)]), {
            signal,
          });
        }
        return 'ok';
      } catch (err) {
        return signal.aborted ? 'aborted' : String((err as { code?: unknown }).code ?? err);
      } finally {
        clearTimeout(timer);
      }
    };

    it('16 callers for 4 s, one call in five abandoned at random while a lock comes and goes: every other call succeeds', async () => {
      const locker = await adminClient(db);
      let locking = true;
      const lockLoop = (async () => {
        while (locking) {
          await locker.query('BEGIN');
          await locker.query('LOCK TABLE notes IN ACCESS EXCLUSIVE MODE');
          await sleep(100);
          await locker.query('ROLLBACK');
          await sleep(100);
        }
      })();
      const kept: Outcome[] = [];
      let abandoned = 0;
      const until = Date.now() + 4_000;
      try {
        await Promise.all(
          Array.from({ length: 16 }, async (_, c) => {
            for (let i = c; Date.now() < until; i += 16) {
              const abort = Math.random() < 0.2;
              const outcome = await call(i, abort ? 1 + Math.random() * 30 : undefined);
              if (abort) abandoned++;
              else kept.push(outcome);
            }
          }),
        );
      } finally {
        locking = false;
        await lockLoop.catch(() => {});
        await locker.end();
      }
      const failures = kept.filter((o) => o !== 'ok');
      expect(failures).toEqual([]);
      expect(kept.length).toBeGreaterThan(100);
      expect(abandoned).toBeGreaterThan(0);
    });
  },
);
