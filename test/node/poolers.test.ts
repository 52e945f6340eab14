/**
 * Behind a pooler, by default: the Node gateway pointed at a real PgBouncer (Debian's, 1.18, every
 * setting at its default) in transaction and in session mode, with named prepared statements and
 * pipelined lanes at their defaults. PgBouncer 1.18 refuses statement_timeout as a startup
 * parameter (08P01) and, in transaction mode, hands each transaction whichever server is free, so
 * a statement named on one server is missing on the next (26000) or already there (42P05). Each
 * is detected once per pool, logged in one line, shown in /stats and /metrics, and the statement
 * it failed runs again: no request answers 500 because of the pooler. The lanes stay on: PgBouncer
 * 1.18 keeps a pipeline's unnamed statements in order, each answer to its own request. A name
 * refused inside a transaction (made to happen: another client holds the server that has it) runs
 * the whole transaction again, unnamed, and it applies once.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPgPoolDatabase, type PgPoolDatabase } from '../../src/db/connectors/pg-pool.js';
import { POOL } from '../contract/backends.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { mixedLoad } from '../helpers/fitness-load.js';
import { json, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { recordingObserver } from '../helpers/observer.js';
import { behindPgBouncerSkip, onPgBouncer, startPgBouncer, type PgBouncer, type PoolMode } from '../helpers/pgbouncer.js';

const skip = behindPgBouncerSkip() !== undefined;

/** Requests in the mixed load, and how many are in flight at once. */
const REQUESTS = 480;
const CONCURRENCY = 16;

for (const mode of ['transaction', 'session'] as const satisfies PoolMode[]) {
  describe.skipIf(skip)(onPgBouncer(`the gateway behind PgBouncer in ${mode} mode, every setting at its default`), () => {
    let bouncer: PgBouncer;
    let db: TestDatabase;
    let t: TestGateway;

    beforeAll(async () => {
      bouncer = await startPgBouncer(mode);
      db = await createTestDatabase('poolgate_pgbouncer');
      // The gateway's connections go through PgBouncer; POOL_MAX 10: 2 of them pipelined lanes (the default share).
      t = await startTestGateway({ POOL_MAX: '10' }, { db: { ...db, url: bouncer.url(db.url) } });
    }, 60_000);

    afterAll(async () => {
      try {
        await t?.stop();
      } finally {
        await bouncer?.stop();
        await db?.drop();
      }
    }, 30_000);

    it(`a mixed load of ${REQUESTS} requests, ${CONCURRENCY} at a time, answers none with a 5xx`, async () => {
      const result = await mixedLoad(t.url, { requests: REQUESTS, concurrency: CONCURRENCY });
      expect(result.failures).toEqual({});
      expect(Object.keys(result.statuses).sort()).toEqual(['200', '201', '404']);
      // The lanes served reads (they were not switched off to get here).
      expect(t.gateway.database.stats()?.pipeline?.openedCount).toBeGreaterThan(0);
    }, 120_000);

    it('what the pooler refused is said once in the log and shown in /stats and /metrics', async () => {
      const refused = (what: string) => t.logs.filter((l) => l.includes('refused') && l.includes(what));
      expect(refused('statement_timeout')).toHaveLength(1);
      const stats = await json(`${t.url}/stats`);
      expect(stats.body.pool.refused.statementTimeoutAtStartup).toBe('08P01');
      const metrics = await (await fetch(`${t.url}/metrics`)).text();
      expect(metrics).toMatch(/poolgate_pool_refused\{[^}]*feature="startup_statement_timeout"[^}]*\} 1/);
      if (mode === 'transaction') {
        // Another server's statement names are not this connection's: refused, then run unnamed.
        expect(refused('named prepared statements')).toHaveLength(1);
        expect(['42P05', '26000']).toContain(stats.body.pool.refused.namedStatements);
        expect(metrics).toMatch(/poolgate_pool_refused\{[^}]*feature="named_statements"[^}]*\} 1/);
      } else {
        // A session keeps its server: named statements work, and stay on.
        expect(refused('named prepared statements')).toEqual([]);
        expect(stats.body.pool.refused.namedStatements).toBeUndefined();
        expect(metrics).toMatch(/poolgate_pool_refused\{[^}]*feature="named_statements"[^}]*\} 0/);
      }
    });
  });
}

describe.skipIf(skip)(onPgBouncer('pipelined lanes through PgBouncer 1.18 in transaction mode'), () => {
  let bouncer: PgBouncer;
  let db: TestDatabase;
  let database: PgPoolDatabase;

  beforeAll(async () => {
    // Two servers for everyone: a lane's statements are spread over both, one after another.
    bouncer = await startPgBouncer('transaction', { default_pool_size: '2' });
    db = await createTestDatabase('poolgate_pgbouncer_lanes');
    database = createPgPoolDatabase(
      { ...POOL, pipelineLanes: 2, pipelineSlowReadMs: 60_000, connectionString: bouncer.url(db.url), applicationName: 'poolgate-lanes' },
      { Pool: pg.Pool, Client: pg.Client },
    );
    await database.warm(0);
  }, 60_000);

  afterAll(async () => {
    try {
      await database?.close();
    } finally {
      await bouncer?.stop();
      await db?.drop();
    }
  }, 30_000);

  it('concurrent reads each get their own answer, and a read batch sees one server and one snapshot', async () => {
    const reads = Array.from({ length: 80 }, async (_, i) => {
      const o = recordingObserver('read');
      const { rows } = await database.forRequest(o).query<{ v: number }>('SELECT $1::int AS v', [i]);
      return { v: rows[0]!.v, i, kinds: o.kinds };
    });
    const batches = Array.from({ length: 20 }, async (_, i) => {
      const key = randomUUID();
      const results = await database
        .forRequest(recordingObserver('read'))
        .readBatch([
          { text: 'SELECT $1::text AS k, pg_backend_pid() AS pid, now() AS t', params: [key] },
          { text: 'SELECT pg_sleep(0.002)' },
          { text: 'SELECT $1::text AS k, pg_backend_pid() AS pid, now() AS t', params: [key] },
        ]);
      return { key, first: results[0]!.rows[0], last: results[2]!.rows[0], i };
    });
    // 100 in flight: within the lanes' room and their queue (2 × 32 + 100).
    const [answers, snapshots] = await Promise.all([Promise.all(reads), Promise.all(batches)]);
    for (const r of answers) expect(r.v).toBe(r.i);
    for (const b of snapshots) {
      expect(b.first?.k).toBe(b.key);
      expect(b.last).toEqual(b.first);
    }
    expect(answers.some((r) => r.kinds.includes('pg-pipeline'))).toBe(true);
    expect(database.stats()?.pipeline?.cancelledCount).toBe(0);
  }, 60_000);
});

describe.skipIf(skip)(onPgBouncer('a named statement PgBouncer refuses inside a transaction'), () => {
  let bouncer: PgBouncer;
  let db: TestDatabase;
  let database: PgPoolDatabase;
  let blocker: pg.Client;
  const logs: string[] = [];

  beforeAll(async () => {
    // statement_timeout passed on, so that only the names are in question here.
    bouncer = await startPgBouncer('transaction', { ignore_startup_parameters: 'statement_timeout' });
    db = await createTestDatabase('poolgate_pgbouncer_tx');
    await db.admin('CREATE TABLE tx_items (id int PRIMARY KEY, n int NOT NULL)');
    database = createPgPoolDatabase(
      { ...POOL, max: 1, pipelineLanes: 0, connectionString: bouncer.url(db.url), applicationName: 'poolgate-pgbouncer-tx' },
      { Pool: pg.Pool, Client: pg.Client, log: (line) => logs.push(line) },
    );
    blocker = new pg.Client({ connectionString: bouncer.url(db.url) });
    await blocker.connect();
  }, 60_000);

  afterAll(async () => {
    try {
      await blocker?.end().catch(() => {});
      await database?.close();
    } finally {
      await bouncer?.stop();
      await db?.drop();
    }
  }, 30_000);

  it('runs the whole transaction again, unnamed, and it applies once', async () => {
    const insert = 'INSERT INTO tx_items (id, n) VALUES ($1, $2)';
    // Named and prepared on the server PgBouncer gave this statement …
    await database.forRequest(recordingObserver('transactional')).query(insert, [1, 1]);
    // … which another client now holds in a transaction (PgBouncer reuses the server released last),
    await blocker.query('BEGIN');
    await blocker.query('SELECT 1');
    // so the pool's next transaction gets another server, where the name does not exist (26000).
    const o = recordingObserver('transactional');
    await database.forRequest(o).transaction(async (tx) => {
      await tx.query('SELECT 1');
      await tx.query(insert, [2, 2]);
    });
    await blocker.query('COMMIT');
    expect((await db.admin('SELECT id, n FROM tx_items ORDER BY id')).rows).toEqual([
      { id: 1, n: 1 },
      { id: 2, n: 2 },
    ]);
    expect(o.retries).toBe(1);
    expect(database.stats()?.refused).toEqual({ namedStatements: '26000' });
    expect(logs.filter((l) => l.includes('refused named prepared statements'))).toHaveLength(1);
  });
});
