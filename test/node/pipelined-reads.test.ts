/**
 * Pipelined lanes (PG_PIPELINE_LANES): the single statements of `read` routes and every read batch
 * are written back to back on a few pipelined connections; everything else runs on the pool.
 * Real PostgreSQL throughout (pg_stat_activity, pg_backend_pid, CancelRequest): what runs where,
 * that a batch is one transaction nothing else lands in, that a cut-short read stops on the
 * server and the reads queued behind it are not lost, that a slow statement does not hold up the
 * reads behind it, that a broken lane is replaced, that close() leaves nothing open, and that PGlite
 * (one backend for every connection) gets no lanes.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LANE_DEPTH } from '../../src/db/connectors/pg-pipeline.js';
import { createPgPoolDatabase, type PgPoolDatabase } from '../../src/db/connectors/pg-pool.js';
import { now } from '../../src/stats/clock.js';
import { startEmbeddedPostgres } from '../../src/local/embedded.js';
import { POOL } from '../contract/backends.js';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { recordingObserver } from '../helpers/observer.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { json, startTestGateway } from '../helpers/gateway.js';
import { waitFor } from '../helpers/wait.js';

const driver = { Pool: pg.Pool, Client: pg.Client };

const observer = recordingObserver;

const suiteName = onRealPostgres('pipelined lanes for reads (real PostgreSQL)', PGLITE_CANNOT.lanes);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let db: TestDatabase;
  const opened: PgPoolDatabase[] = [];
  const appName = () => `poolgate-lanes-${randomUUID().slice(0, 8)}`;

  async function lanes(pipelineLanes: number, applicationName = appName(), pool: Partial<typeof POOL> = {}) {
    // Which reads the lanes take by their measured time is mixed-latency.test.ts's subject; here a
    // loaded machine's slow moment must not send a read to the pool.
    const database = createPgPoolDatabase(
      { ...POOL, pipelineSlowReadMs: 60_000, ...pool, pipelineLanes, connectionString: db.url, applicationName },
      driver,
    );
    opened.push(database);
    await database.warm(0);
    return { database, applicationName };
  }

  const running = async (pattern: string) =>
    (
      await db.admin(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()`,
        [pattern],
      )
    ).rows[0].n as number;

  beforeAll(async () => {
    db = await createTestDatabase('poolgate_lanes');
  });

  afterEach(async () => {
    await Promise.allSettled(opened.splice(0).map((d) => d.close()));
  });

  afterAll(async () => {
    await db?.drop();
  });

  it('reads of many concurrent requests share the lanes; writes and transactions take the pool', async () => {
    const { database } = await lanes(2);
    const readers = Array.from({ length: 40 }, () => observer('read'));
    const pids = await Promise.all(
      readers.map(async (o) => (await database.forRequest(o).query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid),
    );
    expect(new Set(pids).size).toBeLessThanOrEqual(2);
    expect(readers.every((o) => o.kinds.join() === 'pg-pipeline' && o.acquisitions === 0)).toBe(true);

    const writer = observer('transactional');
    const { rows } = await database.forRequest(writer).query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    expect(writer.kinds).toEqual(['pg-pool']);
    expect(writer.acquisitions).toBe(1);
    expect(pids).not.toContain(rows[0]!.pid);

    const inTx = observer('read');
    const txPid = await database
      .forRequest(inTx)
      .transaction(async (tx) => (await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid);
    expect(inTx.kinds).toEqual(['pg-pool']);
    expect(pids).not.toContain(txPid);
    expect(database.kind).toBe('pg-pool');
  });

  it('a quiet process keeps one lane; reads at once open more, up to PG_PIPELINE_LANES', async () => {
    const { database, applicationName } = await lanes(3);
    const connections = async () =>
      (
        await db.admin("SELECT count(*)::int AS n FROM pg_stat_activity WHERE split_part(application_name, ' [pg:', 1) = $1", [
          applicationName,
        ])
      ).rows[0].n as number;
    for (let i = 0; i < 10; i++) await database.forRequest(observer('read')).query('SELECT $1::int', [i]);
    expect(database.stats()?.pipeline).toMatchObject({ lanes: 1, openedCount: 1 });
    expect(await connections()).toBe(1);
    await Promise.all(
      Array.from({ length: 30 }, (_, i) => database.forRequest(observer('read')).query('SELECT $1::int, pg_sleep(0.01)', [i])),
    );
    expect(database.stats()?.pipeline).toMatchObject({ lanes: 3, openedCount: 3 });
    expect(await connections()).toBe(3);
  });

  it('a read batch on a lane is one read-only transaction, even with other requests written around it', async () => {
    const { database } = await lanes(1);
    const batches = Array.from({ length: 20 }, () =>
      database
        .forRequest(observer('read'))
        .readBatch([
          { text: 'SELECT now() AS t, pg_current_xact_id_if_assigned() AS x' },
          { text: 'SELECT pg_sleep(0.01)' },
          { text: 'SELECT now() AS t, current_setting($1) AS ro', params: ['transaction_read_only'] },
        ]),
    );
    const singles = Array.from({ length: 20 }, () => database.forRequest(observer('read')).query('SELECT now() AS t'));
    const results = await Promise.all(batches);
    await Promise.all(singles);
    for (const [first, , last] of results) {
      expect(first!.rows[0]!.t).toEqual(last!.rows[0]!.t); // one transaction: now() does not move
      expect(last!.rows[0]!.ro).toBe('on');
    }
    const write = database.forRequest(observer('read')).readBatch([{ text: 'CREATE TEMP TABLE lanes_nope (x int)' }]);
    await expect(write).rejects.toMatchObject({ code: '25006' }); // read-only transaction
    expect((await database.forRequest(observer('read')).query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  });

  it('after a schema change, a read batch whose named statement went stale runs again whole, on a fresh lane', async () => {
    await db.admin('CREATE TABLE lanes_items (id int PRIMARY KEY, name text NOT NULL)');
    await db.admin("INSERT INTO lanes_items VALUES (1, 'one')");
    const { database } = await lanes(1);
    const batch = () => {
      const o = observer('read');
      const done = database
        .forRequest(o)
        .readBatch([{ text: 'SELECT name FROM lanes_items WHERE id = $1', params: [1] }, { text: 'SELECT 2 AS two' }]);
      return done.then((results) => ({ results, o }));
    };
    await batch(); // first use: unnamed until the probe has answered, prepared from here on
    await batch();
    await db.admin('ALTER TABLE lanes_items ALTER COLUMN name TYPE varchar(200)');
    const { results, o } = await batch();
    expect(results.map((r) => r.rows)).toEqual([[{ name: 'one' }], [{ two: 2 }]]);
    expect(o.kinds).toEqual(['pg-pipeline']);
    expect(o.retries).toBe(1);
    expect(database.stats()?.pipeline?.openedCount).toBe(2); // the stale lane was replaced
  });

  it('a read cut short by its deadline, alone on its lane, stops on the server; the lane is replaced', async () => {
    const { database } = await lanes(1);
    // It would sleep for ten minutes: its end within the wait means the deadline cut it short on the server.
    const slow = database.forRequest(observer('read', { deadline: now() + 300 })).query("SELECT pg_sleep(600), 'lanes-deadline'");
    await expect(slow).rejects.toMatchObject({ status: 504, code: 'timeout' });
    await waitFor(async () => (await running('%lanes-deadline%')) === 0, { timeoutMs: 20_000 });
    expect(database.stats()?.pipeline).toMatchObject({ cancelledCount: 1 });
    const after = observer('read');
    expect((await database.forRequest(after).query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    expect(after.kinds).toEqual(['pg-pipeline']);
  });

  it('a read cut short with other requests written behind it is not cancelled: a cancel could stop theirs', async () => {
    const { database } = await lanes(1);
    const slow = database.forRequest(observer('read', { deadline: now() + 300 })).query("SELECT pg_sleep(0.8), 'lanes-deadline'");
    const behind = Array.from({ length: 5 }, () => observer('read'));
    const reads = behind.map((o, i) => database.forRequest(o).query('SELECT $1::int AS i', [i]));
    await expect(slow).rejects.toMatchObject({ status: 504, code: 'timeout' });
    expect((await Promise.all(reads)).map((r) => r.rows[0]!.i)).toEqual([0, 1, 2, 3, 4]);
    expect(behind.every((o) => o.retries === 0 && o.kinds.join() === 'pg-pipeline')).toBe(true);
    expect(database.stats()?.pipeline).toMatchObject({ cancelledCount: 0, openedCount: 1 });
  });

  it("a client that leaves while another request's statement is on the lane sends no cancel; the other answers, first time", async () => {
    const { database } = await lanes(1);
    const leaving = new AbortController();
    const gone = database.forRequest(observer('read', { signal: leaving.signal })).query('SELECT 1 AS quick');
    const innocent = observer('read');
    // Long enough that the cancel (a TCP connection of its own) surely finds it running, even on a busy machine.
    const bystander = database.forRequest(innocent).query("SELECT 'lanes-bystander' AS b, pg_sleep(3)");
    await new Promise((resolve) => setImmediate(resolve)); // both written on the lane
    leaving.abort(); // a cancel now would reach a backend already past SELECT 1, running the bystander
    await expect(gone).rejects.toMatchObject({ status: 499 });
    const { rows } = await bystander;
    expect(rows[0]!.b).toBe('lanes-bystander');
    expect(innocent.retries).toBe(0);
    expect(database.stats()?.pipeline).toMatchObject({ cancelledCount: 0, closedCount: 0 });
  });

  it('reads beyond the lanes’ room wait their turn for a lane, first come first served, and do not jump to the pool', async () => {
    const { database } = await lanes(1, appName(), { queueMax: 1_000 });
    const readers = Array.from({ length: 200 }, () => observer('read'));
    const reads = readers.map((o, i) => database.forRequest(o).query('SELECT $1::int AS i', [i]));
    const maxWaiting = database.stats()?.pipeline?.waiting ?? 0;
    const answers = await Promise.all(reads);
    expect(answers.map((r) => r.rows[0]!.i)).toEqual(readers.map((_, i) => i));
    expect(maxWaiting).toBe(200 - LANE_DEPTH); // one lane: LANE_DEPTH in flight, the rest queued
    expect(readers.every((o) => o.kinds.join() === 'pg-pipeline')).toBe(true);
    // The queued ones report their wait as the request's acquire wait; the pool was never asked.
    expect(readers.filter((o) => o.acquisitions === 1)).toHaveLength(200 - LANE_DEPTH);
    expect(database.stats()).toMatchObject({ acquisitionCount: 0, pipeline: { overflowCount: 0, waiting: 0, queueRejectedCount: 0 } });
  });

  it('beyond the queue bound a read is refused at once with 503 overloaded, as on the pool', async () => {
    const { database } = await lanes(1, appName(), { queueMax: 10 });
    const reads = Array.from({ length: LANE_DEPTH + 15 }, (_, i) =>
      database
        .forRequest(observer('read'))
        .query('SELECT $1::int AS i', [i])
        .then(
          () => 'ok',
          (err: { status?: number; code?: string }) => `${err.status} ${err.code}`,
        ),
    );
    const outcomes = await Promise.all(reads);
    expect(outcomes.filter((o) => o === 'ok')).toHaveLength(LANE_DEPTH + 10);
    expect(outcomes.filter((o) => o !== 'ok')).toEqual(Array(5).fill('503 overloaded'));
    expect(database.stats()?.pipeline).toMatchObject({ queueRejectedCount: 5 });
  });

  it('a slow statement does not hold up the reads behind it: they take another lane, then the pool', async () => {
    const { database } = await lanes(1);
    const slow = database.forRequest(observer('read')).query("SELECT pg_sleep(5), 'lanes-stall'");
    await waitFor(async () => (await running('%lanes-stall%')) === 1, { timeoutMs: 20_000 });
    await new Promise((r) => setTimeout(r, 100)); // past the lane's stall threshold (50 ms)
    const o = observer('read');
    await database.forRequest(o).query('SELECT 1');
    expect(o.kinds).toEqual(['pg-pool']); // not queued behind the sleep on the lane
    expect(database.stats()?.pipeline?.overflowCount).toBeGreaterThanOrEqual(1);
    await slow;
  });

  it('a lane whose backend is terminated is replaced; a read in flight on it runs again', async () => {
    const { database, applicationName } = await lanes(1);
    const inFlight = observer('read');
    const read = database.forRequest(inFlight).query("SELECT 'lanes-terminated' AS t, pg_sleep(0.3)");
    await waitFor(async () => (await running('%lanes-terminated%')) === 1, { timeoutMs: 3_000 });
    await db.admin(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE split_part(application_name, ' [pg:', 1) = $1 AND query LIKE '%lanes-terminated%'`,
      [applicationName],
    );
    expect((await read).rows[0]!.t).toBe('lanes-terminated');
    expect(inFlight.retries).toBe(1);
    const after = observer('read');
    await database.forRequest(after).query('SELECT 1');
    expect(after.kinds).toEqual(['pg-pipeline']);
  });

  it('a lane the network went silent on is cut a second after its cancel: no retired lane outlives the budget', async () => {
    const { hostname, port } = new URL(db.url);
    const proxy = await startFaultProxy({ target: { host: hostname, port: Number(port) } });
    try {
      const database = createPgPoolDatabase(
        { ...POOL, pipelineLanes: 1, connectionString: proxy.urlFor(db.url), applicationName: appName() },
        driver,
      );
      opened.push(database);
      await database.warm(0);
      await proxy.setMode({ kind: 'blackhole' });
      const read = database.forRequest(observer('read', { deadline: now() + 300 })).query('SELECT 1');
      await expect(read).rejects.toMatchObject({ status: 504, code: 'timeout' });
      expect(database.stats()?.pipeline).toMatchObject({ cancelledCount: 1, closedCount: 0 });
      await waitFor(() => database.stats()?.pipeline?.closedCount === 1, { timeoutMs: 3_000, what: 'the silent lane cut' });
    } finally {
      await proxy.close();
    }
  });

  it('close() ends every lane: nothing of the application is left on the server', async () => {
    const { database, applicationName } = await lanes(2);
    await Promise.all(Array.from({ length: 10 }, () => database.forRequest(observer('read')).query('SELECT 1')));
    await database.close();
    await waitFor(
      async () =>
        (
          await db.admin("SELECT count(*)::int AS n FROM pg_stat_activity WHERE split_part(application_name, ' [pg:', 1) = $1", [
            applicationName,
          ])
        ).rows[0].n === 0,
      { timeoutMs: 3_000 },
    );
  });

  it('through the gateway: a read says pg-pipeline in Server-Timing; a write says pg-pool', async () => {
    const t = await startTestGateway({ POOL_MAX: '5' }, { db });
    try {
      const created = await json(`${t.url}/api/users`, {
        method: 'POST',
        json: { email: `lanes-${randomUUID()}@example.com`, name: 'Lanes' },
      });
      expect(created.status).toBe(201);
      expect(created.headers.get('server-timing')).toContain('desc="pg-pool');
      const read = await json(`${t.url}/api/users/${created.body.id}`);
      expect(read.status).toBe(200);
      expect(read.headers.get('server-timing')).toContain('desc="pg-pipeline 1q"');
      const metrics = await (await fetch(`${t.url}/metrics`)).text();
      expect(metrics).toMatch(/^poolgate_pipeline_lanes\{[^}]*\} 1$/m);
      expect(metrics).toMatch(/^poolgate_http_requests_by_client_total\{[^}]*client="pg-pipeline"[^}]*\} 1$/m);
    } finally {
      await t.stop();
    }
  });
});

describe('no lanes where every connection shares one backend (PGlite)', () => {
  it('reads stay on the pool', async () => {
    const server = await startEmbeddedPostgres();
    const database = createPgPoolDatabase(
      { ...POOL, pipelineLanes: 2, connectionString: server.url, applicationName: 'lanes-pglite' },
      driver,
    );
    try {
      await database.warm(0);
      const o = observer('read');
      await database.forRequest(o).query('SELECT $1::int AS one', [1]);
      expect(o.kinds).toEqual(['pg-pool']);
      await waitFor(() => database.stats()?.pipeline?.closedCount === 1, { what: 'the probing lane closed' });
      expect(database.stats()?.pipeline).toMatchObject({ lanes: 0, openedCount: 1 });
      // The readiness check (GET /health/ready) asks where a read would go: the pool, opening no lane.
      expect(await database.ping(5_000)).toMatchObject({ ok: true });
      expect(database.stats()?.pipeline).toMatchObject({ lanes: 0, openedCount: 1 });
    } finally {
      await database.close();
      await server.stop();
    }
  });
});
