/**
 * A statement that cannot finish in time (blocked on a lock an admin session holds — the API has
 * no sleep route): the request answers 504 `timeout` near its deadline, the statement is
 * cancelled on the server (no active or lock-waiting query of the gateway remains), the
 * connection is given back (stats active 0 — one cancelled out of band is then replaced rather
 * than reused, so a late cancel cannot hit another request), nothing was written, and the pool
 * serves the next request. Both kinds of work: a single statement (GET /api/users/:id) and a
 * transaction (POST /api/workouts with an Idempotency-Key). Real PostgreSQL only: it needs a
 * second backend to hold the lock, and pg_stat_activity.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { adminClient, backendsOf, json, leaksIn, seenResponses, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';
import { Ledger, sampleConnections, storedKey } from '../helpers/ledger.js';

const REQUEST_TIMEOUT_MS = 800;

const suiteName = onRealPostgres(
  'statement past the request deadline (real PostgreSQL: a lock held by an admin session)',
  PGLITE_CANNOT.secondSession,
);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let t: TestGateway;
  let userId: string;
  let locker: pg.Client;

  beforeAll(async () => {
    t = await startTestGateway({ POOL_MAX: '2', POOL_MIN: '1', REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS) });
    const res = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `slow-${randomUUID()}@example.com`, name: 'Slow' } });
    expect(res.status).toBe(201);
    userId = res.body.id;
    locker = await adminClient(t.db);
  });

  afterAll(async () => {
    await locker?.query('ROLLBACK').catch(() => {});
    await locker?.end().catch(() => {});
    await t?.stop();
  });

  /** Gateway backends still running or waiting on something other than the client. */
  const busyBackends = async () =>
    (await backendsOf(t.db, t.applicationName)).filter((b) => b.state !== 'idle' || b.wait_event_type === 'Lock');

  async function blockedRequest(table: string, send: () => Promise<{ status: number; code?: string; retryAfter?: string | null }>) {
    await locker.query('BEGIN');
    await locker.query(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
    const before = t.gateway.database.stats()!;
    const sampler = sampleConnections(t.db, t.applicationName);
    const started = performance.now();
    const pending = send();
    try {
      // It really reached the server and waits there on the lock.
      await waitFor(async () => (await backendsOf(t.db, t.applicationName)).some((b) => b.wait_event_type === 'Lock'), {
        what: 'the statement waiting on the lock',
      });
      const res = await pending;
      const ms = performance.now() - started;
      // Cancelled on the server while the lock is still held: nothing of the gateway is left running or waiting.
      await waitFor(async () => (await busyBackends()).length === 0, { timeoutMs: 20_000, what: 'the statement cancelled on the server' });
      const { max } = await sampler.stop(); // the canceller carries its own application_name: not counted
      return { res, ms, before, max };
    } finally {
      await locker.query('ROLLBACK');
      await sampler.stop();
    }
  }

  it('single statement: 504 timeout near the deadline, cancelled on the server, connection returned', async () => {
    const { res, ms, before, max } = await blockedRequest('users', async () => {
      const r = await json(`${t.url}/api/users/${userId}`, { signal: AbortSignal.timeout(10_000) });
      return { status: r.status, code: r.body?.error?.code };
    });
    console.log(
      `[statement-timeout] single statement: ${res.status} ${res.code} after ${Math.round(ms)} ms (deadline ${REQUEST_TIMEOUT_MS} ms)`,
    );
    expect(res).toMatchObject({ status: 504, code: 'timeout' });
    expect(ms).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50); // the lock is held throughout: only the deadline ended it
    expect(max).toBeLessThanOrEqual(2);
    const after = t.gateway.database.stats()!;
    expect(after.active).toBe(0);
    expect(after.waiting).toBe(0);
    expect(after.retryCount - before.retryCount).toBe(0); // a timed-out statement is never retried
    expect((await json(`${t.url}/api/users/${userId}`)).status).toBe(200);
  });

  it('transaction: 504 timeout near the deadline, rolled back and cancelled, nothing written, key still usable', async () => {
    const ledger = new Ledger({ baseUrl: t.url, userId, requestTimeoutMs: 10_000, prefix: 'stmt' });
    const { res, ms, max } = await blockedRequest('workouts', () => ledger.write());
    console.log(
      `[statement-timeout] transaction: ${res.status} ${res.code} after ${Math.round(ms)} ms (deadline ${REQUEST_TIMEOUT_MS} ms)`,
    );
    expect(res).toMatchObject({ status: 504, code: 'timeout' });
    expect(ms).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50); // the lock is held throughout: only the deadline ended it
    expect(max).toBeLessThanOrEqual(2);
    expect(t.gateway.database.stats()!.active).toBe(0);
    const key = ledger.entries[0]!.key;
    expect((await t.db.admin('SELECT count(*)::int AS n FROM workouts WHERE kind = $1', [key])).rows[0].n).toBe(0);
    const keys = await t.db.admin('SELECT count(*)::int AS n FROM poolgate_idempotency_keys WHERE key = $1', [storedKey(key)]);
    expect(keys.rows[0].n).toBe(0);

    await ledger.resolveAmbiguous();
    const counts = ledger.report('statement timeout (transaction)');
    expect(counts.appliedOnResend).toBe(1); // the 504 had applied nothing; the re-send applied it once
    expect((await ledger.verify(t.db, t.applicationName)).problems).toEqual([]);
    expect(t.gateway.database.stats()!.cancelledCount).toBeGreaterThanOrEqual(1);
  });

  it('no response leaked internals', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, t.db))).toEqual([]);
  });
});
