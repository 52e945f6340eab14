/**
 * Named prepared statements on the pg-pool connector: what is named (statements with parameters,
 * at most PG_PREPARED_STATEMENTS_MAX per connection) and what is not (BEGIN, SET, text without
 * parameters such as a migration's several statements); the off switch; PGlite, whose connections
 * share one backend, never names. And correctness after a schema change: a statement prepared
 * before `ALTER TABLE` answers "cached plan must not change result type" (0A000); a single
 * statement then runs again on its connection, a transaction runs again as a whole, and every
 * connection that prepared statements before the change stops using them and is replaced.
 * Real PostgreSQL for everything that looks at pg_prepared_statements (a per-session view).
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPgPoolDatabase, type PgPoolConnectorOptions, type PgPoolDatabase } from '../../src/db/connectors/pg-pool.js';
import type { QueryObserver, Queryable } from '../../src/db/types.js';
import { startEmbeddedPostgres } from '../../src/local/embedded.js';
import { POOL as CONTRACT_POOL } from '../contract/backends.js';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { recordingObserver } from '../helpers/observer.js';
import { json, startTestGateway, uniqueName, type TestGateway } from '../helpers/gateway.js';

/** The contract suite's pool, with one connection: every statement meets the same session. */
const POOL = { ...CONTRACT_POOL, max: 1 };

/** An observer that counts the core's retries (a whole transaction run again counts one). */
const observer = (intent: QueryObserver['intent'] = 'transactional') => recordingObserver(intent);

/** Resolves once `count` callers have arrived: holds that many sessions open at once. */
function barrier(count: number): () => Promise<void> {
  let arrived = 0;
  let open!: () => void;
  const all = new Promise<void>((resolve) => (open = resolve));
  return () => {
    if (++arrived === count) open();
    return all;
  };
}

describe('a schema change under named prepared statements, through the gateway (one connection)', () => {
  let t: TestGateway;
  let userId: string;

  /** The named statements of the gateway's one connection (a per-session view, so asked on that very connection). */
  const preparedOnGateway = async () =>
    (await t.gateway.database.pool.query<{ statement: string }>('SELECT statement FROM pg_prepared_statements')).rows.map(
      (r) => r.statement,
    );

  beforeAll(async () => {
    t = await startTestGateway({ POOL_MAX: '1', POOL_MIN: '1' });
    const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `prep-${randomUUID()}@example.com`, name: 'Prepared' } });
    expect(u.status).toBe(201);
    userId = u.body.id;
  });

  afterAll(async () => {
    await t?.stop();
  });

  it('a read prepared before ALTER COLUMN … TYPE answers the same afterwards', async () => {
    const before = await json(`${t.url}/api/users/${userId}`);
    expect(before.status).toBe(200);
    if (realPostgresUrl)
      expect(await preparedOnGateway()).toContainEqual(expect.stringContaining('FROM users u LEFT JOIN user_preferences'));

    await t.db.admin('ALTER TABLE users ALTER COLUMN name TYPE varchar(200)');
    const after = await json(`${t.url}/api/users/${userId}`);
    expect(after.status).toBe(200);
    expect(after.body).toEqual(before.body);
    // And again, on the connection that replaced the stale one.
    expect((await json(`${t.url}/api/users/${userId}`)).body).toEqual(before.body);
  });

  it('a transaction whose statement went stale runs again as a whole, once, and applies once', async () => {
    const first = await json(`${t.url}/api/users/${userId}/preferences`, { method: 'PATCH', json: { weeklyGoal: 3 } });
    expect(first.status).toBe(200);
    if (realPostgresUrl)
      expect(await preparedOnGateway()).toContainEqual(expect.stringContaining('FROM users u LEFT JOIN user_preferences'));
    const retriesBefore = t.gateway.database.stats()!.retryCount;

    await t.db.admin('ALTER TABLE users ALTER COLUMN email TYPE varchar(320)');
    const res = await json(`${t.url}/api/users/${userId}/preferences`, { method: 'PATCH', json: { weeklyGoal: 4 } });
    expect(res.status).toBe(200);
    expect(res.body.preferences.weeklyGoal).toBe(4);
    const { rows } = await t.db.admin('SELECT weekly_goal FROM user_preferences WHERE user_id = $1', [userId]);
    expect(rows).toEqual([{ weekly_goal: 4 }]);
    // Real PostgreSQL: the statement was named, went stale, and the transaction ran a second time.
    if (realPostgresUrl) expect(t.gateway.database.stats()!.retryCount - retriesBefore).toBe(1);
  });
});

const suiteName = onRealPostgres('pg-pool connector: named statements per connection (real PostgreSQL)', PGLITE_CANNOT.lanes);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let db: TestDatabase;
  const open: PgPoolDatabase[] = [];

  const connect = (options: Partial<PgPoolConnectorOptions> = {}) => {
    const database = createPgPoolDatabase(
      { ...POOL, connectionString: db.url, applicationName: uniqueName('poolgate-prepared'), ...options },
      { Pool: pg.Pool, Client: pg.Client },
    );
    open.push(database);
    return database;
  };

  /** The named statements of a one-connection database's connection. */
  const prepared = async (database: PgPoolDatabase) =>
    (await database.forRequest(observer()).query<{ name: string; statement: string }>('SELECT name, statement FROM pg_prepared_statements'))
      .rows;

  beforeAll(async () => {
    db = await createTestDatabase('poolgate_prepared');
    await db.admin('CREATE TABLE ps_items (id int PRIMARY KEY, name text NOT NULL, n int NOT NULL DEFAULT 0)');
    await db.admin(`INSERT INTO ps_items (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'three')`);
  });

  afterAll(async () => {
    await Promise.all(open.map((d) => d.close().catch(() => {})));
    await db?.drop();
  });

  it('names a statement with parameters after its text; runs BEGIN and text without parameters unnamed', async () => {
    const database = connect();
    const request = database.forRequest(observer());
    const text = 'SELECT name FROM ps_items WHERE id = $1';
    expect((await request.query(text, [1])).rows).toEqual([{ name: 'one' }]);
    expect((await request.query(text, [2])).rows).toEqual([{ name: 'two' }]);
    expect((await request.query('SELECT count(*)::int AS n FROM ps_items')).rows).toEqual([{ n: 3 }]);
    await request.transaction(async (tx) => {
      await tx.query("SELECT set_config('lock_timeout', '1000', true)"); // not SET: a SET tag replaces the connection
      expect((await tx.query(text, [3])).rows).toEqual([{ name: 'three' }]);
    });
    const names = await prepared(database);
    expect(names).toEqual([{ name: expect.stringMatching(/^pg_[0-9a-f]{16}$/), statement: text }]);
  });

  it('runs text of several statements (a migration) unnamed', async () => {
    const database = connect();
    await database
      .forRequest({ ...observer(), internal: true }) // migrations are the process's own work; a caller's several statements are refused
      .transaction((tx) =>
        tx.query('CREATE TABLE ps_migrated (a int); INSERT INTO ps_migrated VALUES (1); INSERT INTO ps_migrated VALUES (2)'),
      );
    expect((await db.admin('SELECT count(*)::int AS n FROM ps_migrated')).rows).toEqual([{ n: 2 }]);
    expect(await prepared(database)).toEqual([]);
  });

  it('keeps at most preparedStatementsMax per connection; further statements run unnamed and answer all the same', async () => {
    const database = connect({ preparedStatementsMax: 2 });
    const request = database.forRequest(observer());
    const row = { id: 1, name: 'one', n: 0 };
    for (const column of ['id', 'name', 'n'] as const) {
      const { rows } = await request.query(`SELECT ${column} FROM ps_items WHERE id = $1`, [1]);
      expect(rows).toEqual([{ [column]: row[column] }]);
    }
    expect((await prepared(database)).map((p) => p.statement).sort()).toEqual([
      'SELECT id FROM ps_items WHERE id = $1',
      'SELECT name FROM ps_items WHERE id = $1',
    ]);
  });

  it('prepares nothing when switched off', async () => {
    const database = connect({ preparedStatements: false });
    expect((await database.forRequest(observer()).query('SELECT name FROM ps_items WHERE id = $1', [1])).rows).toEqual([{ name: 'one' }]);
    expect(await prepared(database)).toEqual([]);
  });

  it('after a schema change, a write in autocommit runs again on its connection, and applies once', async () => {
    const database = connect();
    const bump = 'UPDATE ps_items SET n = n + 1 WHERE id = $1 RETURNING *';
    expect((await database.forRequest(observer()).query(bump, [2])).rows).toEqual([{ id: 2, name: 'two', n: 1 }]);

    await db.admin('ALTER TABLE ps_items ADD COLUMN note text');
    const o = observer();
    expect((await database.forRequest(o).query(bump, [2])).rows).toEqual([{ id: 2, name: 'two', n: 2, note: null }]);
    expect(o.retries).toBe(0); // run again by the connector, on the same connection: nothing else to retry
    expect((await db.admin('SELECT n FROM ps_items WHERE id = 2')).rows).toEqual([{ n: 2 }]);
  });

  it('after a schema change seen on one connection, no connection prepared before it uses its statements: a transaction runs again at most once', async () => {
    const database = connect({ max: 3 });
    const text = 'SELECT * FROM ps_items WHERE id = $1';
    // Three transactions at once: the statement is prepared on three connections.
    const arrive = barrier(3);
    await Promise.all(
      [1, 2, 3].map((id) =>
        database.forRequest(observer()).transaction(async (tx: Queryable) => {
          await tx.query(text, [id]);
          await arrive();
        }),
      ),
    );
    expect(database.stats()!.total).toBe(3);

    await db.admin('ALTER TABLE ps_items ADD COLUMN extra int');
    for (let i = 0; i < 3; i++) {
      const o = observer();
      const rows = await database.forRequest(o).transaction(async (tx) => (await tx.query(text, [1])).rows);
      expect(rows).toEqual([expect.objectContaining({ id: 1, extra: null })]);
      expect(o.retries).toBeLessThanOrEqual(1);
    }
    for (let i = 0; i < 3; i++) {
      const { rows } = await database.forRequest(observer('read')).query(text, [3]);
      expect(rows).toEqual([expect.objectContaining({ id: 3, extra: null })]);
    }
  });
});

describe('pg-pool connector on PGlite (one backend shared by every connection)', () => {
  it('names nothing, and serves the same parameterised statement on several connections', async () => {
    const server = await startEmbeddedPostgres();
    const database = createPgPoolDatabase(
      { ...POOL, max: 3, connectionString: server.url, applicationName: 'poolgate-prepared-pglite' },
      { Pool: pg.Pool, Client: pg.Client },
    );
    try {
      // Twenty at once on up to three connections, twice: each connection runs the same text.
      for (const round of [1, 2]) {
        const answers = await Promise.all(
          Array.from({ length: 20 }, (_, i) => database.forRequest(observer()).query<{ n: number }>('SELECT $1::int AS n', [i * round])),
        );
        expect(answers.map((a) => a.rows[0]!.n)).toEqual(Array.from({ length: 20 }, (_, i) => i * round));
      }
      expect(database.stats()!.total).toBeGreaterThan(1);
      const { rows } = await database.forRequest(observer()).query('SELECT name FROM pg_prepared_statements');
      expect(rows).toEqual([]);
    } finally {
      await database.close();
      await server.stop();
    }
  });
});
