/**
 * A transaction that fails half-way: the workout insert succeeds, the sets insert violates a
 * constraint added for the test. Nothing of it may stay behind, and its connection must go back
 * to the pool clean (not `idle in transaction`, not leaked).
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { backendsOf, json, leaksIn, seenResponses, startTestGateway, type TestGateway } from '../helpers/gateway.js';

let t: TestGateway;
let userId: string;

beforeAll(async () => {
  // Two connections: a leaked one would exhaust the pool after two failures.
  t = await startTestGateway({ POOL_MAX: '2', POOL_MIN: '1', POOL_ACQUIRE_TIMEOUT_MS: '2000' });
  await t.db.admin(`ALTER TABLE workout_sets ADD CONSTRAINT workout_sets_not_forbidden CHECK (exercise <> 'forbidden')`);
  const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `tx-${randomUUID()}@example.com`, name: 'Tx' } });
  expect(u.status).toBe(201);
  userId = u.body.id;
});

afterAll(async () => {
  await t?.stop();
});

const badWorkout = (kind: string) => ({
  userId,
  kind,
  startedAt: '2026-06-01T09:00:00Z',
  sets: [
    { exercise: 'squat', reps: 5, weightKg: 80 },
    { exercise: 'forbidden', reps: 1 },
  ],
});

describe('a transaction failing at its second statement', () => {
  it('answers 4xx, writes no workout and no set, and returns its connection', async () => {
    const res = await json(`${t.url}/api/workouts`, { method: 'POST', json: badWorkout('half-way') });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('validation_failed');
    expect(res.text).not.toMatch(/workout_sets_not_forbidden|check constraint/);

    const workouts = await t.db.admin(`SELECT count(*)::int AS n FROM workouts WHERE kind = 'half-way'`);
    expect(workouts.rows[0].n).toBe(0);
    const sets = await t.db.admin(`SELECT count(*)::int AS n FROM workout_sets WHERE exercise IN ('squat', 'forbidden')`);
    expect(sets.rows[0].n).toBe(0);

    const pool = t.gateway.database.stats()!;
    expect(pool.active).toBe(0);
    expect(pool.waiting).toBe(0);
    expect(pool.total).toBeGreaterThan(0);
  });

  // Real PostgreSQL only: the embedded fallback has one shared backend and no per-connection pg_stat_activity.
  const noIdleInTransaction = onRealPostgres('leaves no session idle in transaction (pg_stat_activity)', PGLITE_CANNOT.serverView);
  it.skipIf(!realPostgresUrl)(noIdleInTransaction, async () => {
    await json(`${t.url}/api/workouts`, { method: 'POST', json: badWorkout('half-way-2') });
    const backends = await backendsOf(t.db, t.applicationName);
    expect(backends.length).toBeGreaterThan(0);
    expect(backends.filter((b) => b.state !== 'idle')).toEqual([]);
  });

  it('fails the same way many more times than the pool has connections, then serves normally', async () => {
    for (let i = 0; i < 6; i++) {
      const res = await json(`${t.url}/api/workouts`, { method: 'POST', json: badWorkout(`repeat-${i}`) });
      expect(res.status).toBe(400);
    }
    const ok = await json(`${t.url}/api/workouts`, {
      method: 'POST',
      json: { ...badWorkout('after'), sets: [{ exercise: 'squat', reps: 5, weightKg: 80 }] },
    });
    expect(ok.status).toBe(201);
    const read = await json(`${t.url}/api/workouts/${ok.body.id}`);
    expect(read.status).toBe(200);
    expect(read.body.sets).toEqual([{ exercise: 'squat', reps: 5, weightKg: 80 }]);

    const workouts = await t.db.admin(`SELECT kind FROM workouts WHERE user_id = $1`, [userId]);
    expect(workouts.rows.map((r) => r.kind)).toEqual(['after']);
    const pool = t.gateway.database.stats()!;
    expect(pool.active).toBe(0);
    expect(pool.acquireTimeoutCount).toBe(0);
    expect(pool.total).toBeLessThanOrEqual(2);
  });

  it('a failure in the first statement (unknown user) also rolls back and releases', async () => {
    for (let i = 0; i < 3; i++) {
      const res = await json(`${t.url}/api/workouts`, { method: 'POST', json: { ...badWorkout('ghost'), userId: randomUUID() } });
      expect(res.status).toBe(404);
    }
    expect(t.gateway.database.stats()!.active).toBe(0);
    expect((await json(`${t.url}/api/users/${userId}`)).status).toBe(200);
  });

  it('no response leaked internals', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, t.db))).toEqual([]);
  });
});
