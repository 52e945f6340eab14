/**
 * No request can hurt another on a shared lane (issue 19): another request's cancel or failure
 * never changes your answer. Real PostgreSQL, real HTTP clients against a real gateway.
 *
 * - A read aborted by its client while it waits on a lock, with other reads written behind it on
 *   the same lane: the others answer 200 (before: 500, 26000 "prepared statement … does not
 *   exist" from a name whose Parse the cancel cut short, or 25P02).
 * - A read batch failing in its first statement, with a batch of the same texts written right
 *   behind it: the second answers (before: 26000, its Bind met a name whose Parse failed 25P02).
 * - A bounded soak: 16 clients for a few seconds, some aborting at random: every request that did
 *   not abort answers 200.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { Client } from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { appliedNothing } from '../../src/db/connectors/pg-pipeline.js';
import { createPgPoolDatabase, type PgPoolDatabase } from '../../src/db/connectors/pg-pool.js';
import { POOL } from '../contract/backends.js';
import { createTestDatabase, realPostgresUrl, type TestDatabase, onRealPostgres, PGLITE_CANNOT } from '../helpers/db.js';
import { recordingObserver } from '../helpers/observer.js';
import { adminClient, json, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A GET that its client abandons after `abortAfterMs` (undefined: never); answers the status or 'aborted'. */
async function get(url: string, abortAfterMs?: number): Promise<number | 'aborted'> {
  const controller = new AbortController();
  const timer = abortAfterMs === undefined ? undefined : setTimeout(() => controller.abort(), abortAfterMs);
  try {
    const res = await fetch(url, { signal: controller.signal });
    await res.arrayBuffer();
    return res.status;
  } catch (err) {
    if (controller.signal.aborted) return 'aborted';
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

const tally = (statuses: (number | 'aborted')[]) =>
  statuses.reduce<Record<string, number>>((m, s) => ((m[String(s)] = (m[String(s)] ?? 0) + 1), m), {});

describe.skipIf(!realPostgresUrl)(
  onRealPostgres('one lane, many requests: no request can hurt another (real PostgreSQL, real HTTP)', PGLITE_CANNOT.lanes),
  () => {
    let t: TestGateway;
    let workoutId: string;
    let userId: string;

    beforeAll(async () => {
      t = await startTestGateway({ POOL_MAX: '4', PG_PIPELINE_LANES: '1', PG_PIPELINE_SLOW_MS: '60000', REQUEST_TIMEOUT_MS: '8000' });
      const user = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `iso-${randomUUID()}@example.com`, name: 'Iso' } });
      expect(user.status, user.text).toBe(201);
      userId = user.body.id;
      const workout = await json(`${t.url}/api/workouts`, {
        method: 'POST',
        json: { userId, kind: 'run', startedAt: new Date().toISOString(), sets: [{ exercise: 'squat', reps: 5, weightKg: 60 }] },
      });
      expect(workout.status, workout.text).toBe(201);
      workoutId = workout.body.id;
      // The lane open and its server asked (names from here on), through another route: the first
      // Parse of each tested route's text on the lane is then the aborted request's own.
      await waitFor(async () => {
        const res = await json(`${t.url}/api/users/${userId}/summary`);
        return res.status === 200 && (res.headers.get('server-timing') ?? '').includes('pg-pipeline');
      });
    });

    afterAll(async () => {
      await t?.stop();
    });

    for (const route of ['workouts', 'users'] as const) {
      it(`a GET /api/${route}/:id aborted by its client while it waits on a lock fails none of the 12 reads behind it`, async () => {
        const path = `${t.url}/api/${route}/${route === 'workouts' ? workoutId : userId}`;
        const locker: Client = await adminClient(t.db);
        try {
          await locker.query('BEGIN');
          await locker.query(`LOCK TABLE ${route} IN ACCESS EXCLUSIVE MODE`);
          const aborted = get(path, 300);
          await sleep(20);
          const others = Array.from({ length: 12 }, () => get(path));
          expect(await aborted).toBe('aborted');
          await sleep(200); // the abort has been handled (a cancel, if any, has reached the server)
          await locker.query('ROLLBACK');
          expect(tally(await Promise.all(others))).toEqual({ 200: 12 });
        } finally {
          await locker.query('ROLLBACK').catch(() => {});
          await locker.end();
        }
      });
    }

    it('a soak: 16 clients for 6 s, one request in five abandoned at random — every other request answers 200', async () => {
      const until = Date.now() + 6_000;
      const outcomes: { aborted: boolean; status: number | 'aborted' }[] = [];
      const paths = [`${t.url}/api/workouts/${workoutId}`, `${t.url}/api/users/${userId}`, `${t.url}/api/users/${userId}/summary`];
      const locker: Client = await adminClient(t.db);
      // A lock taken and released every so often: statements wait, clients leave while they do.
      let locking = true;
      const lockLoop = (async () => {
        while (locking) {
          await locker.query('BEGIN');
          await locker.query('LOCK TABLE workouts IN ACCESS EXCLUSIVE MODE');
          await sleep(150);
          await locker.query('ROLLBACK');
          await sleep(150);
        }
      })();
      try {
        await Promise.all(
          Array.from({ length: 16 }, async (_, c) => {
            for (let i = 0; Date.now() < until; i++) {
              const abort = Math.random() < 0.2;
              const status = await get(paths[(c + i) % paths.length]!, abort ? 1 + Math.random() * 200 : undefined);
              outcomes.push({ aborted: abort, status });
            }
          }),
        );
      } finally {
        locking = false;
        await lockLoop.catch(() => {});
        await locker.end();
      }
      const kept = outcomes.filter((o) => !o.aborted || o.status !== 'aborted');
      expect(tally(kept.map((o) => o.status))).toEqual({ 200: kept.length });
      expect(outcomes.filter((o) => o.aborted).length).toBeGreaterThan(0);
    });
  },
);

describe.skipIf(!realPostgresUrl)(onRealPostgres('a lane: one request’s failure is its own (real PostgreSQL)', PGLITE_CANNOT.lanes), () => {
  let db: TestDatabase;
  const opened: PgPoolDatabase[] = [];
  const observer = () => recordingObserver('read');
  const open = async () => {
    const database = createPgPoolDatabase(
      { ...POOL, pipelineLanes: 1, pipelineSlowReadMs: 60_000, connectionString: db.url, applicationName: 'poolgate-isolation' },
      { Pool: pg.Pool, Client: pg.Client },
    );
    opened.push(database);
    await database.warm(0);
    return database;
  };

  beforeAll(async () => {
    db = await createTestDatabase('poolgate_isolation');
  });
  afterEach(async () => {
    await Promise.allSettled(opened.splice(0).map((d) => d.close()));
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('a read batch that fails in its first statement does not fail a batch of the same texts written behind it', async () => {
    const database = await open();
    const batch = (n: number) =>
      database.forRequest(observer()).readBatch([
        { text: 'SELECT 10 / $1::int AS q', params: [n] },
        { text: 'SELECT $1::int + 1 AS next', params: [n] },
      ]);
    await batch(1); // the probe answered: names from here on
    const failing = batch(0); // 22012 division by zero, then its second statement's Parse fails 25P02
    const behind = batch(2); // written on the same lane before the failure comes back
    await expect(failing).rejects.toMatchObject({ code: '22012' });
    expect((await behind).map((r) => r.rows[0])).toEqual([{ q: 5 }, { next: 3 }]);
  });

  it('a lane whose prepared statements were dropped (DEALLOCATE ALL, a session change by its tag) is replaced at once', async () => {
    const database = await open();
    const read = (o = observer()) => database.forRequest(o).query<{ n: number }>('SELECT $1::int + 1 AS n', [1]);
    await read();
    await read(); // prepared, confirmed by the server
    // A route's DEALLOCATE never reaches a lane (mayChangeSession: a session of its own, test/node/session-state.test.ts);
    // the lane's own guard is its command tag, for whatever the text rule cannot see.
    await database.oneShot!.connector.query({ text: 'DEALLOCATE ALL' }, new AbortController().signal);
    const o = observer();
    expect((await read(o)).rows).toEqual([{ n: 2 }]);
    expect(o.retries).toBe(0); // the lane took nothing after DEALLOCATE: no Bind met a dropped name (26000: appliedNothing, below)
    expect(database.stats()?.pipeline?.openedCount).toBe(2);
  });
});

describe('appliedNothing: which lane errors provably applied nothing, by SQLSTATE', () => {
  const err = (code: string) => Object.assign(new Error('x'), { code });
  it.each([
    ['26000', false, false, 'lane'],
    ['42P05', false, true, 'lane'],
    ['57014', true, false, 'lane'],
    ['57014', false, false, false], // its own statement_timeout: the work may have run
    ['25P02', false, true, 'statement'],
    ['25P02', false, false, false],
    ['23505', true, true, false],
  ] as const)('%s (lane cancelled: %s, read batch: %s) → %s', (code, cancelled, readBatch, expected) => {
    expect(appliedNothing(err(code), cancelled, readBatch)).toBe(expected);
  });
});
