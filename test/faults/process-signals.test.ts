/**
 * The Node gateway as a real child process (`node --import tsx src/fitness/entries/node.ts`, exactly what
 * `npm run start:node` runs, without npx in between so the signal reaches the gateway itself):
 *
 *  - kill -9 while a transaction waits between its two inserts (the workout row is written, the
 *    sets insert is blocked on a lock an admin session holds): nothing of it is ever visible —
 *    no workout without its sets, no idempotency record — and a re-send with the same key to a
 *    new gateway applies it exactly once;
 *  - SIGTERM under load: the requests already accepted finish and are durable, new ones are
 *    refused (503 shutting_down or connection refused), and the process exits with code 0.
 *
 * Real PostgreSQL only: it needs a second backend to hold the lock, and pg_stat_activity.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { spawnGateway, type ChildGateway } from '../helpers/child-gateway.js';
import { adminClient, backendsOf, json, startTestGateway, waitFor } from '../helpers/gateway.js';
import { Ledger, sampleConnections, SETS } from '../helpers/ledger.js';

const suiteName = onRealPostgres(
  'signals to the gateway process (real PostgreSQL: a lock held by an admin session)',
  PGLITE_CANNOT.secondSession,
);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let db: TestDatabase;
  let userId: string;
  let locker: pg.Client;
  const children: ChildGateway[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    locker = await adminClient(db);
  });

  afterEach(async () => {
    await locker.query('ROLLBACK').catch(() => {});
    for (const c of children.splice(0)) {
      if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill('SIGKILL');
      await c.exited;
    }
  });

  afterAll(async () => {
    await locker?.end().catch(() => {});
    await db?.drop();
  });

  async function start(env: Record<string, string> = {}) {
    const g = await spawnGateway(db, env);
    children.push(g);
    if (!userId) {
      const res = await json(`${g.url}/api/users`, { method: 'POST', json: { email: `sig-${randomUUID()}@example.com`, name: 'Signal' } });
      expect(res.status).toBe(201);
      userId = res.body.id;
    }
    return g;
  }

  /** Re-sends the ledger's ambiguous writes to a fresh in-process gateway on the same database. */
  async function resolveOnNewGateway(ledger: Ledger) {
    const next = await startTestGateway({}, { db });
    try {
      await ledger.resolveAmbiguous({ baseUrl: next.url });
    } finally {
      await next.stop();
    }
  }

  it('kill -9 between the two inserts of a transaction leaves no partial rows', async () => {
    const g = await start({ POOL_MAX: '2', POOL_MIN: '1' });
    const ledger = new Ledger({ baseUrl: g.url, userId, requestTimeoutMs: 15_000, prefix: 'kill9' });
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE workout_sets IN ACCESS EXCLUSIVE MODE');
    const write = ledger.write();

    // The transaction is between its statements: the workout row is inserted, the sets insert waits.
    const blocked = await waitFor(
      async () => {
        const { rows } = await db.admin(
          `SELECT pid FROM pg_stat_activity WHERE split_part(application_name, ' [pg:', 1) = $1 AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO workout_sets%'`,
          [g.applicationName],
        );
        return rows[0]?.pid as number | undefined;
      },
      { what: 'the sets insert waiting on the lock' },
    );
    const firstInsertDone = await db.admin(
      `SELECT count(*)::int AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
       WHERE l.pid = $1 AND c.relname = 'workouts' AND l.mode = 'RowExclusiveLock' AND l.granted`,
      [blocked],
    );
    expect(firstInsertDone.rows[0].n).toBe(1);

    g.child.kill('SIGKILL');
    expect(await g.exited).toEqual({ code: null, signal: 'SIGKILL' });
    const entry = await write;
    expect(entry.status).toBe(0); // the client saw the connection die
    expect(entry.outcome).toBe('ambiguous');

    // Let the orphaned backend run on: it finishes the insert, finds its client gone, and rolls back.
    await locker.query('ROLLBACK');
    await waitFor(async () => (await backendsOf(db, g.applicationName)).length === 0, {
      timeoutMs: 10_000,
      what: 'the orphaned backend to exit',
    });
    const rows = await db.admin(
      `SELECT (SELECT count(*)::int FROM workouts WHERE kind = $1) AS workouts,
              (SELECT count(*)::int FROM workout_sets s JOIN workouts w ON w.id = s.workout_id WHERE w.kind = $1) AS sets,
              (SELECT count(*)::int FROM poolgate_idempotency_keys WHERE key = 'POST /api/workouts ' || $1) AS keys,
              (SELECT count(*)::int FROM workouts w WHERE NOT EXISTS (SELECT 1 FROM workout_sets s WHERE s.workout_id = w.id)) AS without_sets`,
      [entry.key],
    );
    expect(rows.rows[0]).toEqual({ workouts: 0, sets: 0, keys: 0, without_sets: 0 });

    await resolveOnNewGateway(ledger);
    const counts = ledger.report('kill -9 mid-transaction');
    expect(counts.appliedOnResend).toBe(1);
    const check = await ledger.verify(db, g.applicationName);
    expect(check.problems).toEqual([]);
    expect(
      (
        await db.admin('SELECT count(*)::int AS n FROM workout_sets s JOIN workouts w ON w.id = s.workout_id WHERE w.kind = $1', [
          entry.key,
        ])
      ).rows[0].n,
    ).toBe(SETS);
  });

  it('SIGTERM under load: accepted requests finish and are durable, new ones are refused, exit code 0', async () => {
    const POOL_MAX = 4;
    const g = await start({ POOL_MAX: String(POOL_MAX), POOL_MIN: '2', SHUTDOWN_TIMEOUT_MS: '8000', POOL_ACQUIRE_TIMEOUT_MS: '6000' });
    const ledger = new Ledger({ baseUrl: g.url, userId, requestTimeoutMs: 15_000, prefix: 'term' });
    const sampler = sampleConnections(db, g.applicationName);

    // Some load first, then hold the writes mid-transaction so that requests are in flight at SIGTERM.
    await ledger.load({ concurrency: 4, count: 20 });
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE workout_sets IN ACCESS EXCLUSIVE MODE');
    let loading = true;
    const load = ledger.load({ concurrency: 8, until: () => !loading, pauseMs: 10 });
    await waitFor(async () => (await backendsOf(db, g.applicationName)).filter((b) => b.wait_event_type === 'Lock').length === POOL_MAX, {
      what: 'every pool connection busy in a transaction',
    });
    // …and the other four accepted and queued for a connection.
    await waitFor(async () => (await json(`${g.url}/stats`)).body.pool.waiting === 4, { what: 'four requests waiting for a connection' });
    const inFlightFrom = ledger.entries.length; // entries recorded from here on include the 8 accepted ones
    const sigtermAt = performance.now();
    g.child.kill('SIGTERM');
    // Its drain has begun once it says so (the line is printed as close() starts), however busy the machine.
    await waitFor(() => g.output.join('').includes('poolgate: SIGTERM, draining'), { what: 'the gateway to start draining' });

    // New connections are refused while the accepted requests are still running.
    const probes = await Promise.all(Array.from({ length: 3 }, () => ledger.write()));
    for (const p of probes) {
      expect(p.code, JSON.stringify(p)).toMatch(/^(shutting_down|ECONNREFUSED)$/);
      expect(p.outcome).toBe('failed');
    }

    await locker.query('COMMIT');
    const exit = await g.exited;
    loading = false;
    await load;
    const { max } = await sampler.stop();

    const accepted = ledger.entries.slice(inFlightFrom).filter((e) => e.startedAt < sigtermAt);
    const after = ledger.entries.slice(inFlightFrom).filter((e) => e.startedAt >= sigtermAt);
    await resolveOnNewGateway(ledger);
    const counts = ledger.report('SIGTERM under load', {
      acceptedAtSigterm: accepted.length,
      acceptedAnswers: accepted.map((e) => e.status),
      afterSigterm: after.reduce<Record<string, number>>((a, e) => {
        const k = e.status === 0 ? `${e.code}` : `${e.status} ${e.code}`;
        a[k] = (a[k] ?? 0) + 1;
        return a;
      }, {}),
      exit,
      maxConnections: max,
    });

    expect(exit).toEqual({ code: 0, signal: null });
    expect(accepted.length).toBe(8);
    for (const e of accepted) expect(e.status, JSON.stringify(e)).toBe(201);
    for (const e of after) expect(e.outcome === 'failed' || e.outcome === 'ambiguous', JSON.stringify(e)).toBe(true);
    expect(after.filter((e) => e.status !== 0 && e.status !== 503)).toEqual([]);
    expect(counts.acknowledged).toBeGreaterThanOrEqual(28);
    expect((await ledger.verify(db, g.applicationName)).problems).toEqual([]);
    expect(max).toBeLessThanOrEqual(POOL_MAX);
    expect(g.output.join('')).toMatch(/SIGTERM, draining/);
    expect(g.output.join('')).toMatch(/"msg":"poolgate: stopped"}\n/);
  });
});
