/**
 * A keyed write whose transaction hits a deadlock (40P01) is retried from the captured body.
 *
 * The server aborts a deadlock victim's whole transaction, so the gateway runs it again (the
 * retry rules of src/resilience/retry.ts). With an Idempotency-Key the route runs inside
 * runIdempotent's transaction, and the retry must run the route again from the body that was
 * captured for the request hash — not re-read a body stream that was already consumed. The
 * client must get the route's answer (200 PATCH /api/users/:id/preferences, 201 POST
 * /api/workouts) with exactly one effect and exactly one idempotency record; the same writes
 * without a key, under a deadlock of the same shape, must succeed too.
 *
 * The deadlock is forced, not hoped for. An admin session (deadlock_timeout 10 s, so it is never
 * the one that gives up) holds a lock B the request's transaction will block on; once a gateway
 * backend waits on a Lock (pg_stat_activity), the admin asks for a lock A the request's
 * transaction already holds. The request's backend (deadlock_timeout pinned to 1 s on this
 * database) finds the cycle and is aborted with 40P01, which lets the admin through; the admin
 * commits in the same round trip, so the retry never finds A still taken.
 *
 *   with a key   A = the key's advisory lock (pg_try_advisory_xact_lock(hashtextextended(key, 7))),
 *                B = the user's row FOR UPDATE (PATCH updates it; POST's FK check needs KEY SHARE)
 *   PATCH, none  A = the user's row (PATCH takes it FOR UPDATE first), B = the preferences row
 *   POST, none   A = the user's row (KEY SHARE from the FK check), B = workout_sets in SHARE mode
 *
 * Real PostgreSQL only: it needs a second backend holding locks, and pg_stat_activity.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import {
  adminClient,
  backendsOf,
  json,
  type JsonResponse,
  leaksIn,
  seenResponses,
  startTestGateway,
  waitFor,
  type TestGateway,
} from '../helpers/gateway.js';

/** Client-side bound on every request (the gateway's own deadline is REQUEST_TIMEOUT_MS). */
const CLIENT_BOUND_MS = 12_000;
const TEST_BOUND_MS = 30_000;

describe.skipIf(!realPostgresUrl)(
  onRealPostgres(
    'a keyed write whose transaction hits a deadlock (40P01) is retried from the captured body (real PostgreSQL: an admin session closes a lock cycle)',
    PGLITE_CANNOT.secondSession,
  ),
  () => {
    let db: TestDatabase;
    let t: TestGateway;

    beforeAll(async () => {
      db = await createTestDatabase('poolgate_deadlock');
      // The gateway's backends must be the ones that detect the cycle, after 1 s (the server default,
      // pinned here so a differently configured server cannot make the admin session the victim).
      await db.admin(`ALTER DATABASE ${db.name} SET deadlock_timeout = '1s'`);
      t = await startTestGateway({ POOL_MAX: '4', POOL_MIN: '0', REQUEST_TIMEOUT_MS: '10000' }, { db });
    });

    afterAll(async () => {
      await t?.stop();
      await db?.drop();
    });

    async function newUser(): Promise<string> {
      const res = await json(`${t.url}/api/users`, {
        method: 'POST',
        json: { email: `deadlock-${randomUUID()}@example.com`, name: 'Deadlock', preferences: { units: 'metric', weeklyGoal: 2 } },
        signal: AbortSignal.timeout(CLIENT_BOUND_MS),
      });
      expect(res.status, res.text).toBe(201);
      return res.body.id as string;
    }

    interface Cycle {
      /** What the admin session holds first (lock B, which the request blocks on). */
      hold: { text: string; values: unknown[] };
      /** Lock A as one SQL statement with its values inlined, sent together with COMMIT in one round trip. */
      close: (admin: pg.Client) => string;
    }

    /**
     * Sends the request while the admin holds B, waits for the request to block on it, then closes
     * the cycle. Returns the answer and whether the admin got through (i.e. the request's
     * transaction was aborted as the deadlock victim: it could not have committed while blocked).
     */
    async function underDeadlock(cycle: Cycle, send: () => Promise<JsonResponse>): Promise<JsonResponse & { logged: string }> {
      const admin = await adminClient(t.db);
      const logsBefore = t.logs.length;
      let pending: Promise<JsonResponse> | undefined;
      try {
        await admin.query('BEGIN');
        await admin.query("SET LOCAL deadlock_timeout = '10s'");
        await admin.query(cycle.hold.text, cycle.hold.values);
        pending = send();
        pending.catch(() => {}); // awaited below; a rejection must not surface as unhandled meanwhile
        await waitFor(async () => (await backendsOf(t.db, t.applicationName)).some((b) => b.wait_event_type === 'Lock'), {
          timeoutMs: 5_000,
          what: "the request's transaction to block on the admin's lock",
        });
        // Lock A, then COMMIT at once (a multi-statement simple query): the admin holds nothing by
        // the time the gateway could retry, so the retry cannot be refused for A still being taken.
        let closeTimer: ReturnType<typeof setTimeout> | undefined;
        const closed = await Promise.race([
          admin.query(cycle.close(admin)).then(
            () => 'committed',
            (err: { code?: string; message?: string }) => `failed: ${err.code ?? ''} ${err.message ?? ''}`,
          ),
          new Promise<string>((resolve) => {
            closeTimer = setTimeout(() => resolve('still waiting after 5 s'), 5_000);
          }),
        ]);
        clearTimeout(closeTimer);
        // 'committed' proves the deadlock happened with the request as its victim (40P01).
        expect(closed, "the admin's lock call (the request must be the deadlock victim)").toBe('committed');
        // What the gateway logged meanwhile (a 5xx names its cause there), for failure messages.
        return { ...(await pending), logged: t.logs.slice(logsBefore).join('\n') };
      } finally {
        await admin.query('ROLLBACK').catch(() => {});
        await admin.end().catch(() => {});
        await pending?.catch(() => {});
      }
    }

    /** How the gateway stores a key: scoped to its route (method and pattern). */
    const stored = (route: string, key: string) => `${route} ${key}`;

    const keyedCycle = (userId: string, key: string): Cycle => ({
      hold: { text: 'SELECT 1 FROM users WHERE id = $1 FOR UPDATE', values: [userId] },
      close: (admin) => `SELECT pg_advisory_xact_lock(hashtextextended(${admin.escapeLiteral(key)}, 7)); COMMIT`,
    });

    const patch = (userId: string, weeklyGoal: number, key?: string) =>
      json(`${t.url}/api/users/${userId}/preferences`, {
        method: 'PATCH',
        json: { weeklyGoal },
        headers: key === undefined ? {} : { 'idempotency-key': key },
        signal: AbortSignal.timeout(CLIENT_BOUND_MS),
      });

    const workout = (userId: string, kind: string) => ({
      userId,
      kind,
      startedAt: '2026-11-20T07:00:00Z',
      durationSeconds: 1200,
      sets: [
        { exercise: 'row', reps: 10, weightKg: 40 },
        { exercise: 'plank', reps: 1 },
      ],
    });
    const post = (body: unknown, key?: string) =>
      json(`${t.url}/api/workouts`, {
        method: 'POST',
        json: body,
        headers: key === undefined ? {} : { 'idempotency-key': key },
        signal: AbortSignal.timeout(CLIENT_BOUND_MS),
      });

    const weeklyGoalOf = async (userId: string) =>
      (await t.db.admin('SELECT weekly_goal FROM user_preferences WHERE user_id = $1', [userId])).rows[0]?.weekly_goal as
        number | undefined;
    const workoutsOf = async (userId: string, kind: string) =>
      (await t.db.admin('SELECT count(*)::int AS n FROM workouts WHERE user_id = $1 AND kind = $2', [userId, kind])).rows[0].n as number;
    const setsOf = async (userId: string, kind: string) =>
      (
        await t.db.admin(
          'SELECT count(*)::int AS n FROM workout_sets s JOIN workouts w ON w.id = s.workout_id WHERE w.user_id = $1 AND w.kind = $2',
          [userId, kind],
        )
      ).rows[0].n as number;
    const keyRecords = async (key: string) =>
      (await t.db.admin('SELECT count(*)::int AS n FROM poolgate_idempotency_keys WHERE key = $1', [key])).rows[0].n as number;

    describe('PATCH /api/users/:id/preferences', () => {
      it(
        'with an Idempotency-Key: 200, the new preferences, one idempotency record',
        async () => {
          const userId = await newUser();
          const key = `deadlock-patch-${randomUUID()}`;
          const scoped = stored('PATCH /api/users/:id/preferences', key);
          const res = await underDeadlock(keyedCycle(userId, scoped), () => patch(userId, 9, key));

          expect(res.status, `${res.text}\n${res.logged}`).toBe(200);
          expect(res.body.preferences).toEqual({ units: 'metric', weeklyGoal: 9 });
          expect(await weeklyGoalOf(userId)).toBe(9);
          expect(await keyRecords(scoped)).toBe(1);
          // The stored answer is the one the client got.
          const again = await patch(userId, 9, key);
          expect(again.status).toBe(200);
          expect(again.headers.get('idempotent-replayed')).toBe('true');
          expect(again.text).toBe(res.text);
        },
        TEST_BOUND_MS,
      );

      it(
        'without a key: 200 and the new preferences',
        async () => {
          const userId = await newUser();
          const res = await underDeadlock(
            {
              hold: { text: 'SELECT 1 FROM user_preferences WHERE user_id = $1 FOR UPDATE', values: [userId] },
              close: (admin) => `SELECT 1 FROM users WHERE id = ${admin.escapeLiteral(userId)} FOR UPDATE; COMMIT`,
            },
            () => patch(userId, 8),
          );

          expect(res.status, `${res.text}\n${res.logged}`).toBe(200);
          expect(res.body.preferences).toEqual({ units: 'metric', weeklyGoal: 8 });
          expect(await weeklyGoalOf(userId)).toBe(8);
        },
        TEST_BOUND_MS,
      );
    });

    describe('POST /api/workouts', () => {
      it(
        'with an Idempotency-Key: 201, exactly one workout (with its sets), one idempotency record',
        async () => {
          const userId = await newUser();
          const key = `deadlock-post-${randomUUID()}`;
          const scoped = stored('POST /api/workouts', key);
          const res = await underDeadlock(keyedCycle(userId, scoped), () => post(workout(userId, 'deadlock-keyed'), key));

          expect(res.status, `${res.text}\n${res.logged}`).toBe(201);
          expect(res.body).toMatchObject({ userId, kind: 'deadlock-keyed', durationSeconds: 1200 });
          expect(await workoutsOf(userId, 'deadlock-keyed')).toBe(1);
          expect(await setsOf(userId, 'deadlock-keyed')).toBe(2);
          expect(await keyRecords(scoped)).toBe(1);
          const again = await post(workout(userId, 'deadlock-keyed'), key);
          expect(again.status).toBe(201);
          expect(again.headers.get('idempotent-replayed')).toBe('true');
          expect(again.text).toBe(res.text);
          expect(await workoutsOf(userId, 'deadlock-keyed')).toBe(1);
        },
        TEST_BOUND_MS,
      );

      it(
        'without a key: 201 and exactly one workout (with its sets)',
        async () => {
          const userId = await newUser();
          const res = await underDeadlock(
            {
              hold: { text: 'LOCK TABLE workout_sets IN SHARE MODE', values: [] },
              close: (admin) => `SELECT 1 FROM users WHERE id = ${admin.escapeLiteral(userId)} FOR UPDATE; COMMIT`,
            },
            () => post(workout(userId, 'deadlock-unkeyed')),
          );

          expect(res.status, `${res.text}\n${res.logged}`).toBe(201);
          expect(res.body).toMatchObject({ userId, kind: 'deadlock-unkeyed' });
          expect(await workoutsOf(userId, 'deadlock-unkeyed')).toBe(1);
          expect(await setsOf(userId, 'deadlock-unkeyed')).toBe(2);
        },
        TEST_BOUND_MS,
      );
    });

    it('no response leaked internals', () => {
      expect(seenResponses.flatMap((text) => leaksIn(text, t.db))).toEqual([]);
    });
  },
);
