/**
 * A result-size bound (issue 19): a statement's result past RESULT_MAX_ROWS or RESULT_MAX_BYTES
 * answers result_too_large, its rows beyond the bound are never kept, and the connection (a
 * pooled session, or a shared lane with a neighbour's read behind it) serves the next statement.
 * Before: the whole result was held in memory (a 3-million-row read took a process to 812 MB).
 * Real PostgreSQL.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPgPoolDatabase, type PgPoolDatabase } from '../../src/db/connectors/pg-pool.js';
import type { QueryObserver } from '../../src/db/types.js';
import { POOL } from '../contract/backends.js';
import { createTestDatabase, realPostgresUrl, type TestDatabase, onRealPostgres, PGLITE_CANNOT } from '../helpers/db.js';
import { appErrorOf } from '../helpers/observer.js';

const observer = (intent: QueryObserver['intent']): QueryObserver => ({ intent, acquired() {}, queried() {}, served() {} });
const driver = { Pool: pg.Pool, Client: pg.Client };

const refusal = appErrorOf;

describe.skipIf(!realPostgresUrl)(onRealPostgres('a result-size bound per statement (real PostgreSQL)', PGLITE_CANNOT.lanes), () => {
  let db: TestDatabase;
  const open: PgPoolDatabase[] = [];
  const connect = (lanes: number) => {
    const database = createPgPoolDatabase(
      {
        ...POOL,
        connectionString: db.url,
        max: 1 + lanes,
        min: 0,
        pipelineLanes: lanes,
        applicationName: 'bound',
        resultMaxRows: 1_000,
        resultMaxBytes: 50_000,
      },
      driver,
    );
    open.push(database);
    return database;
  };

  beforeAll(async () => {
    db = await createTestDatabase('poolgate_bound');
  });

  afterAll(async () => {
    await Promise.all(open.map((d) => d.close().catch(() => {})));
    await db?.drop();
  });

  it('past RESULT_MAX_ROWS: result_too_large; the same session serves the next statement', async () => {
    const database = connect(0);
    const request = () => database.forRequest(observer('transactional'));
    expect((await request().query('SELECT g FROM generate_series(1, 1000) g')).rows).toHaveLength(1_000);
    const refused = await refusal(request().query('SELECT g FROM generate_series(1, $1::int) g', [5_000]));
    expect(refused).toMatchObject({ status: 500, code: 'result_too_large' });
    expect(refused.message).toMatch(/^A statement's result passed RESULT_MAX_ROWS \(1000\) or RESULT_MAX_BYTES \(50000\): page it/);
    expect((await request().query<{ n: number }>('SELECT 7 AS n')).rows).toEqual([{ n: 7 }]);
    expect(database.stats()?.closedCount).toBe(0);
  });

  it('past RESULT_MAX_BYTES, inside a transaction: refused, rolled back', async () => {
    const database = connect(0);
    const refused = await refusal(
      database.forRequest(observer('transactional')).transaction((tx) => tx.query("SELECT repeat('x', 1000) FROM generate_series(1, 100)")),
    );
    expect(refused.code).toBe('result_too_large');
  });

  it('on a shared lane: the large read is refused, the neighbour written behind it answers', async () => {
    const database = connect(1);
    const read = (text: string, params?: unknown[]) => database.forRequest(observer('read')).query(text, params);
    await read('SELECT 1'); // the lane is open
    const [large, small] = await Promise.allSettled([
      read('SELECT g FROM generate_series(1, $1::int) g', [20_000]),
      read('SELECT $1::int AS n', [5]),
    ]);
    expect(large).toMatchObject({ status: 'rejected', reason: { code: 'result_too_large' } });
    expect(small).toMatchObject({ status: 'fulfilled', value: { rows: [{ n: 5 }] } });
    expect(database.stats()?.pipeline?.openedCount).toBe(1);
  });
});
