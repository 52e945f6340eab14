/**
 * Shutdown on time, nothing after the cut (issue 10, case 3): SIGTERM to the gateway process with
 * SHUTDOWN_TIMEOUT_MS=2000 while three PATCHes wait on a row an admin session has locked. At the
 * drain deadline their transactions are cancelled and rolled back, the clients get an answer,
 * and the process exits although the lock is still held (only the cut can end those writes) — and
 * when the lock is released afterwards, none of the three writes has committed.
 *
 * Real PostgreSQL only: it needs a second backend to hold the lock.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { spawnGateway, type ChildGateway } from '../helpers/child-gateway.js';
import { adminClient, backendsOf, json, waitFor } from '../helpers/gateway.js';

const SHUTDOWN_TIMEOUT_MS = 2_000;

const suiteName = onRealPostgres('SIGTERM with writes stuck on a lock (real PostgreSQL)', PGLITE_CANNOT.secondSession);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let db: TestDatabase;
  let g: ChildGateway | undefined;
  let locker: pg.Client | undefined;

  beforeAll(async () => {
    db = await createTestDatabase('poolgate_cut');
  });

  afterAll(async () => {
    g?.child.kill('SIGKILL');
    await locker?.end().catch(() => {});
    await db?.drop();
  });

  it(`exits at its ${SHUTDOWN_TIMEOUT_MS} ms shutdown timeout with writes stuck, answers the clients, and commits nothing after the cut`, async () => {
    g = await spawnGateway(db, { SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS), POOL_MAX: '5', REQUEST_TIMEOUT_MS: '30000' });
    const user = await json(`${g.url}/api/users`, {
      method: 'POST',
      json: { email: `cut-${randomUUID()}@example.com`, name: 'Cut', preferences: { units: 'metric', weeklyGoal: 3 } },
    });
    expect(user.status).toBe(201);
    const userId = user.body.id as string;

    locker = await adminClient(db);
    await locker.query('BEGIN');
    await locker.query('SELECT 1 FROM user_preferences WHERE user_id = $1 FOR UPDATE', [userId]);
    const patches = [7, 8, 9].map((weeklyGoal) =>
      fetch(`${g!.url}/api/users/${userId}/preferences`, {
        method: 'PATCH',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ weeklyGoal }),
      }).then(
        async (res) => ({ status: res.status, code: ((await res.json()) as { error?: { code?: string } }).error?.code }),
        () => ({ status: 0, code: 'connection closed' }),
      ),
    );
    const applicationName = g.applicationName;
    await waitFor(async () => (await backendsOf(db, applicationName)).filter((b) => b.wait_event_type === 'Lock').length === 3, {
      timeoutMs: 10_000,
      what: 'the three PATCHes to wait on the lock',
    });

    const started = Date.now();
    g.child.kill('SIGTERM');
    const exit = await g.exited;
    const exitedAfterMs = Date.now() - started;
    const answers = await Promise.all(patches);
    console.log(`[shutdown-cut] exit ${exit.code} after ${exitedAfterMs} ms; answers ${JSON.stringify(answers)}`);

    // Only now does the lock go: a write left running would commit here, before its backend ends.
    await locker.query('ROLLBACK');
    await waitFor(async () => (await backendsOf(db, applicationName)).length === 0, {
      timeoutMs: 10_000,
      what: "the gateway's backends to end",
    });
    const { rows } = await db.admin('SELECT weekly_goal FROM user_preferences WHERE user_id = $1', [userId]);
    expect(rows[0].weekly_goal).toBe(3);
    // The lock was held until after the exit: it exited at all because the shutdown cut the writes.
    expect(exit.code).toBe(0);
    for (const a of answers) expect(a).toEqual({ status: 503, code: 'shutting_down' });
    expect(g.output.join('')).not.toMatch(/\n\s+at /);
  }, 30_000);
});
