/**
 * Round trips of a transaction on the pg Pool, counted on the wire by the bench's latency proxy
 * (a client burst answered by a server burst is one): BEGIN goes in the same write as the
 * transaction's first statement (pgSession, shared with the Neon WebSocket), so BEGIN + a
 * statement + COMMIT is 2 round trips, not 3. A named statement the connection has not parsed
 * yet is the exception (pg would mark the name parsed at BEGIN's ParseComplete): its first
 * transaction pays the separate BEGIN once.
 *
 * And the meaning is kept, at the session: a BEGIN that fails fails the statement written with it,
 * which did not run; the statement's own result comes back; the session is usable afterwards.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLatencyProxy, type LatencyProxy } from '../../bench/latency-proxy.js';
import { createPgPoolDatabase, PgPoolConnector } from '../../src/db/connectors/pg-pool.js';
import type { QueryObserver } from '../../src/db/types.js';
import { POOL } from '../contract/backends.js';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';

const driver = { Pool: pg.Pool, Client: pg.Client };
const observer: QueryObserver = { intent: 'transactional', acquired() {}, queried() {}, served() {} };

describe('a transaction on the pg Pool, counted on the wire', () => {
  let db: TestDatabase;
  let proxy: LatencyProxy;

  beforeAll(async () => {
    db = await createTestDatabase('poolgate_tx_trips');
    await db.admin('CREATE TABLE trips (id serial PRIMARY KEY, name text NOT NULL UNIQUE)');
    const { hostname, port } = new URL(db.url);
    proxy = await startLatencyProxy({ target: { host: hostname, port: Number(port) }, upDelayMs: 5 });
  });

  afterAll(async () => {
    await proxy?.close();
    await db?.drop();
  });

  const count = async (name: string) => (await db.admin('SELECT count(*)::int AS n FROM trips WHERE name = $1', [name])).rows[0].n;

  /** Round trips `work` took through the proxy. */
  async function tripsOf(work: () => Promise<unknown>): Promise<number> {
    const before = proxy.stats().roundTripCount;
    await work();
    return proxy.stats().roundTripCount - before;
  }

  it.skipIf(!realPostgresUrl)(
    onRealPostgres('BEGIN + a statement + COMMIT: 2 round trips (the first use of a statement on a connection: 3)', PGLITE_CANNOT.lanes),
    async () => {
      const database = createPgPoolDatabase(
        { ...POOL, max: 1, min: 1, connectionString: proxy.urlFor(db.url), applicationName: 'tx-trips' },
        driver,
      );
      try {
        await database.warm(1);
        const request = () => database.forRequest(observer);
        await request().query('SELECT $1::int', [0]); // the one-time probe of the server (SELECT version()) is behind us
        const insert = (name: string) => () => request().transaction((tx) => tx.query('INSERT INTO trips (name) VALUES ($1)', [name]));
        const first = await tripsOf(insert(`first-${randomUUID()}`));
        const again = await tripsOf(insert(`again-${randomUUID()}`));
        const noParams = await tripsOf(() => request().transaction((tx) => tx.query('SELECT 1')));
        const readOnly = await tripsOf(() => request().readBatch([{ text: 'SELECT $1::int AS n', params: [1] }, { text: 'SELECT 2' }]));
        console.log(`[tx-trips] first use ${first}, named ${again}, no parameters ${noParams}, read batch of 2 ${readOnly}`);
        expect(first).toBe(3); // the prepare: BEGIN alone, then Parse/Bind/Execute, then COMMIT
        expect(again).toBe(2);
        expect(noParams).toBe(2);
        expect(readOnly).toBe(4); // BEGIN alone (the first statement is not parsed here yet), the two statements, COMMIT
      } finally {
        await database.close();
      }
    },
  );

  it('a BEGIN that fails fails the statement written with it, which did not run; the session stays usable', async () => {
    const connector = new PgPoolConnector({ ...POOL, max: 1, connectionString: db.url, applicationName: 'tx-trips-bad-begin' }, driver);
    const { session } = await connector.source().acquire();
    try {
      const name = `bad-begin-${randomUUID()}`;
      // Parsed on this connection once, so the named form is piggybacked too.
      await session.query('INSERT INTO trips (name) VALUES ($1)', [`warm-${randomUUID()}`]);
      for (const [text, params] of [
        ['INSERT INTO trips (name) VALUES ($1)', [name]],
        [`INSERT INTO trips (name) VALUES ('${name}')`, undefined],
      ] as const) {
        await session.begin({ isolation: 'nonsense' as 'serializable' }); // BEGIN ISOLATION LEVEL NONSENSE, written with the next statement
        const err = (await session.query(text, params).catch((e: unknown) => e)) as { code?: string };
        expect(err.code).toBe('42601');
      }
      expect(await count(name)).toBe(0);
      expect((await session.query(`SELECT current_setting('transaction_isolation') AS iso`)).rows).toEqual([{ iso: 'read committed' }]);
      // No transaction is open: VACUUM refuses to run inside one.
      expect(await session.query('VACUUM trips')).toMatchObject({ command: 'VACUUM' });
    } finally {
      session.release(false);
      await connector.close();
    }
  });

  it('the statement written with BEGIN answers with its own rows, named or not, and the transaction is one', async () => {
    const connector = new PgPoolConnector({ ...POOL, max: 1, connectionString: db.url, applicationName: 'tx-trips-results' }, driver);
    const { session } = await connector.source().acquire();
    try {
      for (let i = 0; i < 2; i++) {
        await session.begin({ isolation: 'repeatable read' });
        const first = await session.query('SELECT $1::int AS n, now() AS t', [41 + i]);
        expect(first.rows).toEqual([{ n: 41 + i, t: expect.any(Date) }]);
        const iso = await session.query(`SELECT current_setting('transaction_isolation') AS iso, now() AS t`);
        expect(iso.rows[0]).toEqual({ iso: 'repeatable read', t: first.rows[0]!.t });
        expect(await session.commit()).toMatchObject({ command: 'COMMIT' });
      }
      await session.begin({});
      expect((await session.query('SELECT 7 AS seven')).rows).toEqual([{ seven: 7 }]);
      await session.rollback();
    } finally {
      session.release(false);
      await connector.close();
    }
  });
});
