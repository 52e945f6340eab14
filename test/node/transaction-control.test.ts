/**
 * Transaction control is the core's, and a connection goes back clean (issue 19, case 4). Real
 * PostgreSQL, through the guide's API (`poolgate/functions`) and the route handlers' `db`, on a
 * pool of ONE connection (POOL_MAX 2, one of them a read lane), so the next caller gets the very
 * connection the previous one used unless it was discarded.
 *
 * Before: `SELECT 1; COMMIT` inside executeTransaction committed the rows around it; `SELECT 1;
 * BEGIN` left the pooled connection in a transaction, so the next caller's INSERT was acknowledged
 * and then gone; `; BEGIN ISOLATION LEVEL REPEATABLE READ` froze a shared lane's snapshot; `SET
 * default_transaction_read_only = on` failed the next caller's write; a caller's BEGIN replaced a
 * requested SERIALIZABLE transaction.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPgPoolDatabase, type PgServerDatabase } from '../../src/db/connectors/pg-pool.js';
import type { QueryObserver } from '../../src/db/types.js';
import { createNodeClient, type NodeClient } from '../../src/runtime/functions.js';
import { POOL } from '../contract/backends.js';
import { createTestDatabase, realPostgresUrl, type TestDatabase, onRealPostgres, PGLITE_CANNOT } from '../helpers/db.js';
import { appErrorOf } from '../helpers/observer.js';

let db: TestDatabase;
let client: NodeClient;
let database: PgServerDatabase;

const tag = () => randomBytes(4).toString('hex');
const itemsNamed = async (name: string) => Number((await db.admin('SELECT count(*) AS n FROM items WHERE name = $1', [name])).rows[0].n);
const observer = (intent: QueryObserver['intent'] = 'transactional'): QueryObserver => ({
  intent,
  acquired() {},
  queried() {},
  served() {},
});

const refusal = appErrorOf;

beforeAll(async () => {
  db = await createTestDatabase('poolgate_txcontrol');
  await db.admin('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)');
  client = createNodeClient({ env: { DATABASE_URL: db.url, POOL_MAX: '2', PG_PIPELINE_LANES: '1', POOL_MIN: '0', LOG_LEVEL: 'silent' } });
  database = createPgPoolDatabase(
    { ...POOL, connectionString: db.url, max: 1, min: 0, pipelineLanes: 0, applicationName: 'txcontrol' },
    { Pool: pg.Pool, Client: pg.Client },
  );
});

afterAll(async () => {
  await client?.close().catch(() => {});
  await database?.close().catch(() => {});
  await db?.drop();
});

describe.skipIf(!realPostgresUrl)(
  onRealPostgres('transaction control the core owns (real PostgreSQL, one pooled connection)', PGLITE_CANNOT.lanes),
  () => {
    it('COMMIT hidden behind a SELECT in executeTransaction, then an insert, then a throw: nothing is committed', async () => {
      const name = `hidden-${tag()}`;
      const seen: unknown[] = [];
      const failed = client.executeTransaction(async (tx) => {
        await tx.query('INSERT INTO items (name) VALUES ($1)', [name]);
        await tx.query('SELECT 1; COMMIT').catch((e: unknown) => seen.push(e));
        await tx.query('INSERT INTO items (name) VALUES ($1)', [name]).catch(() => {});
        throw new Error('the callback fails');
      });
      await expect(failed).rejects.toThrow('the callback fails');
      expect(seen).toHaveLength(1);
      expect(seen[0]).toMatchObject({ status: 500, code: 'statement_refused' });
      expect(await itemsNamed(name)).toBe(0);
    });

    it("executeQuery('SELECT 1; BEGIN') is refused and the next caller's INSERT is there afterwards", async () => {
      const refused = await refusal(client.executeQuery('SELECT 1; BEGIN'));
      expect(refused).toMatchObject({ status: 500, code: 'statement_refused' });
      expect(refused.message).toMatch(/^Several statements in one text refused: send one statement per query/);
      const name = `after-begin-${tag()}`;
      expect((await client.executeQuery('INSERT INTO items (name) VALUES ($1)', [name])).rowCount).toBe(1);
      expect(await itemsNamed(name)).toBe(1);
    });

    it("'; BEGIN ISOLATION LEVEL REPEATABLE READ' as a read is refused; the shared lane still sees new rows", async () => {
      const name = `lane-${tag()}`;
      const refused = await refusal(client.executeQuery('; BEGIN ISOLATION LEVEL REPEATABLE READ', [], 'read'));
      expect(refused.message).toMatch(
        /^"BEGIN" refused: it would leave a pooled connection inside a transaction: use db\.transaction\(fn\)/,
      );
      const count = () => client.executeQuery<{ n: number }>('SELECT count(*)::int AS n FROM items WHERE name = $1', [name], 'read');
      expect((await count()).rows).toEqual([{ n: 0 }]);
      await db.admin('INSERT INTO items (name) VALUES ($1)', [name]);
      expect((await count()).rows).toEqual([{ n: 1 }]);
    });

    it('SET default_transaction_read_only = on by one caller never reaches the next caller', async () => {
      await client.executeQuery('SET default_transaction_read_only = on');
      const name = `after-set-${tag()}`;
      expect((await client.executeQuery('INSERT INTO items (name) VALUES ($1)', [name])).rowCount).toBe(1);
      await client.executeTransaction(async (tx) => void (await tx.query('SET default_transaction_read_only = on')));
      await client.executeTransaction(async (tx) => void (await tx.query('INSERT INTO items (name) VALUES ($1)', [name])));
      expect(await itemsNamed(name)).toBe(2);
    });

    it("a route's own BEGIN inside a SERIALIZABLE transaction is refused; the transaction stays SERIALIZABLE", async () => {
      const request = database.forRequest(observer());
      const levels: string[] = [];
      const refused = await refusal(
        request.transaction(
          async (tx) => {
            levels.push((await tx.query<{ l: string }>('SELECT current_setting($1) AS l', ['transaction_isolation'])).rows[0]!.l);
            await tx.query('BEGIN');
          },
          { isolation: 'serializable' },
        ),
      );
      expect(refused.message).toMatch(/^"BEGIN" refused: db\.transaction\(\) and executeTransaction run BEGIN and COMMIT themselves/);
      expect(levels).toEqual(['serializable']);
      expect(await refusal(request.query('begin'))).toMatchObject({ code: 'statement_refused' });
      expect(await refusal(request.query('start transaction read only'))).toMatchObject({ code: 'statement_refused' });
      expect(await refusal(request.query('ROLLBACK'))).toMatchObject({ code: 'statement_refused' });
    });

    it('a connection the server reports inside a transaction at release is discarded, never reused', async () => {
      const { session } = await database.sessions!.connector.source().acquire();
      const { rows } = await session.query('SELECT pg_backend_pid() AS pid');
      await session.query('BEGIN', undefined, true); // the process's own SQL (script) is not refused: the server's status is the guard
      session.release(false);
      const next = await database.forRequest(observer()).query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      expect(next.rows[0]!.pid).not.toBe(rows[0]!.pid);
      expect((await database.forRequest(observer()).query<{ s: string }>('SELECT 1 AS s')).rows).toEqual([{ s: 1 }]);
    });
  },
);
