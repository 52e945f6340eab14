/**
 * pg_terminate_backend on every pool connection, while idle and while busy: the process keeps
 * running (no unhandled error), a request whose connection dies answers 503 JSON rather than
 * crashing or hanging, nothing half-written stays behind, and the next requests succeed on fresh
 * connections. Real PostgreSQL only: the embedded fallback has one backend that cannot be
 * terminated per connection.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import {
  adminClient,
  backendsOf,
  json,
  leaksIn,
  seenResponses,
  startTestGateway,
  waitFor,
  type TestGateway,
  catchUnhandled,
} from '../helpers/gateway.js';

const suiteName = onRealPostgres(
  'pool connections terminated by the server (real PostgreSQL: pg_terminate_backend)',
  PGLITE_CANNOT.serverView,
);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  const POOL_MAX = 3;
  let t: TestGateway;
  let userId: string;
  const watcher = catchUnhandled();
  const unhandled = watcher.errors;

  beforeAll(async () => {
    watcher.start();
    t = await startTestGateway({ POOL_MAX: String(POOL_MAX), POOL_MIN: String(POOL_MAX) });
    const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `term-${randomUUID()}@example.com`, name: 'Term' } });
    expect(u.status).toBe(201);
    userId = u.body.id;
  });

  afterAll(async () => {
    await t?.stop();
    watcher.stop();
  });

  const terminateAll = async () => {
    const { rows } = await t.db.admin(
      "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE split_part(application_name, ' [pg:', 1) = $1",
      [t.applicationName],
    );
    return rows.filter((r) => r.ok).length;
  };

  /** The pool has noticed every terminated connection (idle ones raise 'error' and are removed). */
  const poolForgotThem = () =>
    waitFor(() => t.gateway.database.stats()!.total === 0, { what: 'the pool to drop the terminated connections' });

  async function expectServing() {
    for (let i = 0; i < 5; i++) {
      const res = await json(`${t.url}/api/users/${userId}`);
      expect(res.status).toBe(200);
    }
    const w = await json(`${t.url}/api/workouts`, {
      method: 'POST',
      json: { userId, kind: 'after', startedAt: '2026-07-01T10:00:00Z', sets: [] },
    });
    expect(w.status).toBe(201);
    expect((await json(`${t.url}/health/ready`)).status).toBe(200);
  }

  it('idle: the pool drops the dead connections and the next requests succeed', async () => {
    await waitFor(async () => (await backendsOf(t.db, t.applicationName)).length === POOL_MAX, { what: 'the warm connections' });
    const errorsBefore = t.gateway.database.stats()!.errorCount;

    expect(await terminateAll()).toBe(POOL_MAX);
    await waitFor(async () => (await backendsOf(t.db, t.applicationName)).length === 0, { what: 'the backends to exit' });
    await poolForgotThem();
    expect(t.gateway.database.stats()!.errorCount - errorsBefore).toBe(POOL_MAX);

    await expectServing();
    expect(unhandled).toEqual([]);
  });

  it('busy: requests blocked mid-transaction get 503 JSON, write nothing, and the pool recovers', async () => {
    const locker: pg.Client = await adminClient(t.db);
    try {
      await locker.query('BEGIN');
      // The workout insert's foreign-key check and the summary's first read both need this table.
      await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
      const writes = [0, 1].map((i) =>
        json(`${t.url}/api/workouts`, {
          method: 'POST',
          json: { userId, kind: `doomed-${i}`, startedAt: '2026-07-02T10:00:00Z', sets: [{ exercise: 'squat', reps: 5 }] },
        }),
      );
      const read = json(`${t.url}/api/users/${userId}/summary`);
      await waitFor(async () => (await backendsOf(t.db, t.applicationName)).filter((b) => b.wait_event_type === 'Lock').length === 3, {
        what: 'three requests blocked on the lock',
      });

      expect(await terminateAll()).toBe(POOL_MAX);
      const results = await Promise.all([...writes, read]);
      for (const res of results) {
        expect(res.status).toBe(503);
        expect(res.headers.get('content-type')).toMatch(/^application\/json/);
        expect(res.body.error).toMatchObject({ code: 'database_unavailable', requestId: expect.any(String) });
        expect(res.headers.get('retry-after')).toBeTruthy();
      }
    } finally {
      await locker.query('ROLLBACK').catch(() => {});
      await locker.end();
    }

    const doomed = await t.db.admin(`SELECT count(*)::int AS n FROM workouts WHERE kind LIKE 'doomed-%'`);
    expect(doomed.rows[0].n).toBe(0);
    await poolForgotThem();
    expect(t.gateway.database.stats()!.active).toBe(0);
    await expectServing();
    expect(unhandled).toEqual([]);
  });

  it('nothing leaked into responses or logs', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, t.db))).toEqual([]);
    expect(t.logs.filter((l) => l.includes('postgres://') || /terminating connection/.test(l))).toEqual([]);
  });
});
