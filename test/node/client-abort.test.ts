/**
 * Clients that disconnect cancel their work. A request whose client has gone away can no longer
 * be answered, so what it holds (a pooled connection blocked in a transaction, a place in the
 * connection queue) must be given up at once — the statement cancelled, the transaction rolled
 * back — not kept until the request's deadline while requests that can still be answered are
 * refused with 503 pool_exhausted.
 *
 * Set-up: POOL_MAX 5, REQUEST_TIMEOUT_MS 8000; an admin session locks a user's row, so every
 * PATCH /api/users/:id/preferences of that user blocks on it (5 on connections, the rest queued
 * for one). 30 such PATCHes are sent, each aborted by the client after 500 ms. Shortly after the
 * last abort, with the lock still held: no gateway backend still waits on the lock, and an
 * unrelated read is served (200). Once the lock goes, none of the aborted PATCHes took effect.
 *
 * Real PostgreSQL only: it needs a second backend holding the lock, and pg_stat_activity.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { adminClient, backendsOf, json, leaksIn, seenResponses, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';

const POOL_MAX = 5;
const REQUEST_TIMEOUT_MS = 8_000;
const PATCHES = 30;
const ABORT_AFTER_MS = 1_500; // the PATCHes must be waiting on the lock by then, also on a loaded machine
/** How long after the last abort the gateway gets to give up what those requests held. */
const SETTLE_MS = 250;

describe.skipIf(!realPostgresUrl)(
  onRealPostgres(
    'clients that disconnect cancel their work (real PostgreSQL: a row lock held by an admin session)',
    PGLITE_CANNOT.secondSession,
  ),
  () => {
    let t: TestGateway;
    let locker: pg.Client;
    /** The user whose row is locked (the PATCHes' target). */
    let lockedUser: string;
    /** Another user, read while the lock is held. */
    let otherUser: string;

    const createUser = async (name: string) => {
      const res = await json(`${t.url}/api/users`, {
        method: 'POST',
        json: { email: `abort-${randomUUID()}@example.com`, name, preferences: { units: 'metric', weeklyGoal: 3 } },
        signal: AbortSignal.timeout(5_000),
      });
      expect(res.status, res.text).toBe(201);
      return res.body.id as string;
    };

    beforeAll(async () => {
      // No pipelined lanes: all 5 connections are the pool's, where the PATCHes wait.
      t = await startTestGateway({ POOL_MAX: String(POOL_MAX), PG_PIPELINE_LANES: '0', REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS) });
      lockedUser = await createUser('Locked');
      otherUser = await createUser('Other');
      locker = await adminClient(t.db);
    });

    afterAll(async () => {
      await locker?.query('ROLLBACK').catch(() => {});
      await locker?.end().catch(() => {});
      await t?.stop();
    });

    const lockWaiters = async () => (await backendsOf(t.db, t.applicationName)).filter((b) => b.wait_event_type === 'Lock').length;
    const preferencesOf = async (userId: string) =>
      (await t.db.admin('SELECT units, weekly_goal FROM user_preferences WHERE user_id = $1', [userId])).rows[0];

    it(`${PATCHES} PATCHes aborted by their clients after ${ABORT_AFTER_MS} ms free their connections at once, and none is applied`, async () => {
      const before = await preferencesOf(lockedUser);
      expect(before).toEqual({ units: 'metric', weekly_goal: 3 });

      await locker.query('BEGIN');
      await locker.query('SELECT 1 FROM users WHERE id = $1 FOR UPDATE', [lockedUser]);
      let locked = true;
      const abortedAt: number[] = [];
      const timers: ReturnType<typeof setTimeout>[] = [];
      try {
        const outcomes = Array.from({ length: PATCHES }, (_, i) => {
          const controller = new AbortController();
          timers.push(
            setTimeout(() => {
              abortedAt.push(performance.now());
              controller.abort();
            }, ABORT_AFTER_MS),
          );
          return json(`${t.url}/api/users/${lockedUser}/preferences`, {
            method: 'PATCH',
            json: { weeklyGoal: 10 + i },
            signal: controller.signal,
          }).then(
            (res) => `answered ${res.status} ${res.body?.error?.code ?? ''}`.trim(),
            (err: unknown) => ((err as { name?: unknown } | undefined)?.name === 'AbortError' ? 'aborted' : `failed: ${String(err)}`),
          );
        });

        // Precondition: the PATCHes really reached the database and block there, one per connection.
        await waitFor(async () => (await lockWaiters()) === POOL_MAX, {
          timeoutMs: 5_000,
          what: `${POOL_MAX} gateway backends waiting on the row lock`,
        });

        const results = await Promise.all(outcomes);
        // Every client gave up (nothing could be answered while the row was locked).
        expect(results.filter((r) => r !== 'aborted')).toEqual([]);
        const lastAbort = Math.max(...abortedAt);
        await new Promise((r) => setTimeout(r, Math.max(0, lastAbort + SETTLE_MS - performance.now())));

        // (a) The lock is still held, yet no connection of the gateway is stuck waiting on it.
        const stuck = await lockWaiters();
        const pool = t.gateway.database.stats()!;
        expect
          .soft(stuck, `gateway backends still waiting on the lock ${SETTLE_MS} ms after the last abort (pool: ${JSON.stringify(pool)})`)
          .toBe(0);

        // (b) A request that can still be answered is served, not refused for want of a connection.
        const started = performance.now();
        const read = await json(`${t.url}/api/users/${otherUser}`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS + 2_000) });
        const readMs = Math.round(performance.now() - started);
        expect.soft(read.status, `GET /api/users/:id after ${readMs} ms: ${read.text}`).toBe(200);
        expect.soft(read.body?.id).toBe(otherUser);

        await locker.query('ROLLBACK');
        locked = false;
      } finally {
        for (const timer of timers) clearTimeout(timer);
        if (locked) await locker.query('ROLLBACK').catch(() => {});
      }

      // Whatever the gateway still held runs out (at the latest at its deadline) …
      await waitFor(
        async () => {
          const s = t.gateway.database.stats()!;
          return s.active === 0 && s.waiting === 0 && (await lockWaiters()) === 0;
        },
        { timeoutMs: REQUEST_TIMEOUT_MS + 2_000, what: 'the gateway to finish every aborted request' },
      );
      // … and no aborted PATCH was applied: they were rolled back, not run on after the client left.
      expect(await preferencesOf(lockedUser)).toEqual(before);
      const stats = await json(`${t.url}/stats`);
      const route = stats.body.routes.find(
        (r: { method: string; route: string }) => r.method === 'PATCH' && r.route === '/api/users/:id/preferences',
      );
      expect(route?.statusClasses?.['2xx'] ?? 0, 'PATCHes the gateway completed as 2xx').toBe(0);
    }, 30_000);

    it('no response leaked internals', () => {
      expect(seenResponses.flatMap((text) => leaksIn(text, t.db))).toEqual([]);
    });
  },
);
