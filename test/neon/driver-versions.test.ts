/**
 * The local Neon proxy against both supported majors of the real driver: the current
 * `@neondatabase/serverless` (1.x) and the previous major, 0.10.x, installed side by side as the
 * npm alias `neon-serverless-0-10`. A focused set of conformance cases — HTTP one-shot query with
 * typed results, HTTP transaction with options, Postgres errors with their SQLSTATE, a WebSocket
 * `Pool` session and a WebSocket `Client` — runs through each driver against one real proxy and a
 * database of the suite's own.
 *
 * Each driver module bundles its own `neonConfig`, so each is pointed at the proxy separately.
 *
 * Documented differences between the majors, asserted per version below:
 * - 1.x runs a parameterised query with `sql.query(text, params, opts)`; calling `sql(text, params)`
 *   as a plain function throws (it is only a tagged-template function). 0.10.x has no
 *   `sql.query`: the query function itself is called as `sql(text, params, opts)`.
 * - Options (`fullResults`, `arrayMode`, `isolationLevel`, `readOnly`, `deferrable`) and the shape
 *   of results (rows, or `{ command, rowCount, rows, fields, rowAsArray }` with `fullResults`) are
 *   the same in both.
 */
import { readFileSync } from 'node:fs';
import * as neonCurrent from '@neondatabase/serverless';
import * as neonPrevious from 'neon-serverless-0-10';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NeonProxySettings } from '../../src/db/connectors/neon.js';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { fieldShape, useNeonProxy } from '../helpers/neon.js';

/** The `neonConfig` fields the proxy needs; both majors have them. */
/** What the suite sets on each driver module's own `neonConfig`. */
type NeonConfigLike = NeonProxySettings & { webSocketConstructor: unknown };

type HttpOptions = { fullResults?: boolean; arrayMode?: boolean };

interface Driver {
  label: string;
  tag: 'v1' | 'v010';
  /** The major.minor the installed package must report. */
  expectedVersion: RegExp;
  packageJson: string;
  neonConfig: NeonConfigLike;
  neon: (url: string) => any;
  Pool: new (config: { connectionString: string; max?: number }) => neonCurrent.Pool;
  Client: new (config: { connectionString: string }) => neonCurrent.Client;
  NeonDbError: new (...args: never[]) => Error;
  /** A parameterised one-shot HTTP query, the way this major spells it. */
  query: (sql: any, text: string, params: unknown[], opts?: HttpOptions) => Promise<any>;
}

const nodeModules = new URL('../../node_modules/', import.meta.url);

const drivers: Driver[] = [
  {
    label: '@neondatabase/serverless 1.x',
    tag: 'v1',
    expectedVersion: /^1\./,
    packageJson: '@neondatabase/serverless/package.json',
    neonConfig: neonCurrent.neonConfig,
    neon: (url) => neonCurrent.neon(url),
    Pool: neonCurrent.Pool,
    Client: neonCurrent.Client,
    NeonDbError: neonCurrent.NeonDbError,
    // 1.x: `sql.query(text, params, opts)` (plain `sql(text, params)` throws).
    query: (sql, text, params, opts) => sql.query(text, params, opts),
  },
  {
    label: '@neondatabase/serverless 0.10.x',
    tag: 'v010',
    expectedVersion: /^0\.10\./,
    packageJson: 'neon-serverless-0-10/package.json',
    neonConfig: neonPrevious.neonConfig,
    neon: (url) => neonPrevious.neon(url),
    Pool: neonPrevious.Pool as unknown as Driver['Pool'],
    Client: neonPrevious.Client as unknown as Driver['Client'],
    NeonDbError: neonPrevious.NeonDbError,
    // 0.10.x: no `sql.query`; the query function itself takes (text, params, opts).
    query: (sql, text, params, opts) => sql(text, params, opts),
  },
];

let db: TestDatabase;
let proxy: NeonProxy;
let direct: pg.Pool;

beforeAll(async () => {
  db = await createTestDatabase('poolgate_neon_versions');
  proxy = await startNeonProxy({ databaseUrls: [db.url], port: 0 });
  for (const driver of drivers) useNeonProxy(proxy, driver.neonConfig);
  direct = new pg.Pool({ connectionString: db.url, max: 2 });
  direct.on('error', () => {});
  await direct.query('CREATE TABLE dv_items (id serial PRIMARY KEY, name text CONSTRAINT dv_items_name_key UNIQUE, qty int)');
});

afterAll(async () => {
  await direct?.end().catch(() => {});
  await proxy?.close();
  await db?.drop();
});

const typedSql = 'SELECT $1::int AS i, $2::text AS t, $3::bool AS b, $4::timestamptz AS ts, $5::jsonb AS j, $6::int[] AS a, $7::text AS n';
const typedParams = [42, 'héllo ✓', true, new Date('2024-01-02T03:04:05.678Z'), { k: [1, 'v', null] }, [1, null, 3], null];
const typedRow = {
  i: 42,
  t: 'héllo ✓',
  b: true,
  ts: new Date('2024-01-02T03:04:05.678Z'),
  j: { k: [1, 'v', null] },
  a: [1, null, 3],
  n: null,
};
const settingsSql = `SELECT current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro, current_setting('transaction_deferrable') AS def`;

describe.each(drivers)('$label', (driver) => {
  /** Distinct row names per driver, so the two runs never collide on the unique constraint. */
  const tag = driver.tag;

  it('is the expected major', () => {
    const pkg = JSON.parse(readFileSync(new URL(driver.packageJson, nodeModules), 'utf8')) as { name: string; version: string };
    expect(pkg.name).toBe('@neondatabase/serverless');
    expect(pkg.version).toMatch(driver.expectedVersion);
  });

  it('HTTP: a parameterised query returns typed values and pg-equal fields', async () => {
    const sql = driver.neon(db.url);
    const viaPg = await direct.query(typedSql, typedParams);
    expect(viaPg.rows).toEqual([typedRow]);
    const full = await driver.query(sql, typedSql, typedParams, { fullResults: true });
    expect(full.rows).toEqual([typedRow]);
    expect(full.rows[0].ts).toBeInstanceOf(Date);
    expect(full.command).toBe('SELECT');
    expect(full.rowCount).toBe(1);
    expect(full.fields.map(fieldShape)).toEqual(viaPg.fields.map(fieldShape));
    expect(full.fields.map((f: pg.FieldDef) => f.dataTypeID)).toEqual([23, 25, 16, 1184, 3802, 1007, 25]);
    // Rows only by default; arrays with arrayMode.
    expect(await driver.query(sql, typedSql, typedParams)).toEqual([typedRow]);
    expect(await driver.query(sql, 'SELECT $1::int AS a, $1::int + 1 AS a', [1], { arrayMode: true })).toEqual([[1, 2]]);
    // Tagged templates send their values as params in both majors.
    const name = "O'Brien; DROP TABLE dv_items";
    expect(await sql`SELECT ${name}::text AS n, ${7}::int + 1 AS m`).toEqual([{ n: name, m: 8 }]);
  });

  it('HTTP: the query-call style of the other major is rejected by this one', () => {
    const sql = driver.neon(db.url);
    if (driver.tag === 'v1') {
      // 1.x: calling the tagged-template function with a plain string throws synchronously.
      expect(() => sql('SELECT 1', [])).toThrow(/tagged-template/);
    } else {
      // 0.10.x: there is no `sql.query`.
      expect(sql.query).toBeUndefined();
    }
  });

  it('HTTP: a transaction applies isolation, read-only and deferrable', async () => {
    const sql = driver.neon(db.url);
    const [settings] = await sql.transaction([driver.query(sql, settingsSql, [])], {
      isolationLevel: 'Serializable',
      readOnly: true,
      deferrable: true,
    });
    expect(settings).toEqual([{ iso: 'serializable', ro: 'on', def: 'on' }]);

    const results = await sql.transaction(
      [
        driver.query(sql, settingsSql, []),
        sql`INSERT INTO dv_items (name, qty) VALUES (${`${tag}-batch`}, 1) RETURNING name`,
        sql`UPDATE dv_items SET qty = qty + 1 WHERE name = ${`${tag}-batch`}`,
      ],
      { isolationLevel: 'RepeatableRead', readOnly: false, fullResults: true },
    );
    expect(results.map((r: pg.QueryResult) => [r.command, r.rowCount])).toEqual([
      ['SELECT', 1],
      ['INSERT', 1],
      ['UPDATE', 1],
    ]);
    expect(results[0].rows).toEqual([{ iso: 'repeatable read', ro: 'off', def: 'off' }]);
    const after = await direct.query('SELECT qty FROM dv_items WHERE name = $1', [`${tag}-batch`]);
    expect(after.rows).toEqual([{ qty: 2 }]);
  });

  it('HTTP: a write in a read-only transaction fails with 25006 and writes nothing', async () => {
    const sql = driver.neon(db.url);
    const err = await sql
      .transaction([sql`SELECT 1`, sql`INSERT INTO dv_items (name) VALUES (${`${tag}-ro`})`], { readOnly: true })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(driver.NeonDbError);
    expect((err as neonCurrent.NeonDbError).code).toBe('25006');
    const left = await direct.query('SELECT count(*)::int AS n FROM dv_items WHERE name = $1', [`${tag}-ro`]);
    expect(left.rows).toEqual([{ n: 0 }]);
  });

  it('HTTP: Postgres errors carry their SQLSTATE and fields', async () => {
    const sql = driver.neon(db.url);
    await direct.query('INSERT INTO dv_items (name) VALUES ($1)', [`${tag}-unique`]);
    const dup = (await driver
      .query(sql, 'INSERT INTO dv_items (name) VALUES ($1)', [`${tag}-unique`])
      .catch((e: unknown) => e)) as neonCurrent.NeonDbError;
    expect(dup).toBeInstanceOf(driver.NeonDbError);
    expect(dup.code).toBe('23505');
    expect(dup.constraint).toBe('dv_items_name_key');
    expect(dup.table).toBe('dv_items');
    expect(dup.detail).toContain(`${tag}-unique`);

    const viaPg = (await direct.query('SELECT * FROM dv_missing').catch((e: unknown) => e)) as pg.DatabaseError;
    const missing = (await driver.query(sql, 'SELECT * FROM dv_missing', []).catch((e: unknown) => e)) as neonCurrent.NeonDbError;
    expect(missing).toBeInstanceOf(driver.NeonDbError);
    expect(missing.code).toBe('42P01');
    expect(missing.position).toBe('15');
    expect(missing.message).toBe(viaPg.message);
    // The next request is unaffected.
    expect(await sql`SELECT 2 AS two`).toEqual([{ two: 2 }]);
  });

  it('WebSocket Pool: a BEGIN/COMMIT session, a rollback and an error with its code', async () => {
    const pool = new driver.Pool({ connectionString: db.url, max: 2 });
    pool.on('error', () => {});
    try {
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        await client.query('INSERT INTO dv_items (name, qty) VALUES ($1, $2)', [`${tag}-ws-commit`, 5]);
        const inside = await client.query('SELECT qty FROM dv_items WHERE name = $1', [`${tag}-ws-commit`]);
        expect(inside.rows).toEqual([{ qty: 5 }]);
        await client.query('COMMIT');

        await client.query('BEGIN');
        await client.query('INSERT INTO dv_items (name) VALUES ($1)', [`${tag}-ws-rollback`]);
        await client.query('ROLLBACK');
      } finally {
        client.release();
      }
      const after = await direct.query('SELECT name, qty FROM dv_items WHERE name LIKE $1 ORDER BY name', [`${tag}-ws-%`]);
      expect(after.rows).toEqual([{ name: `${tag}-ws-commit`, qty: 5 }]);

      const err = (await pool.query('SELECT * FROM dv_missing').catch((e: unknown) => e)) as pg.DatabaseError;
      expect(err).toBeInstanceOf(Error);
      expect(err.code).toBe('42P01');
      const typed = await pool.query(typedSql, typedParams);
      expect(typed.rows).toEqual([typedRow]);
    } finally {
      await pool.end();
    }
  });

  it('WebSocket Client: connects, queries with params and ends', async () => {
    const client = new driver.Client({ connectionString: db.url });
    client.on('error', () => {});
    await client.connect();
    try {
      const res = await client.query(typedSql, typedParams);
      expect(res.rows).toEqual([typedRow]);
      expect(res.command).toBe('SELECT');
      expect(res.rowCount).toBe(1);
      const err = (await client.query('INSERT INTO dv_items (id) VALUES (NULL)').catch((e: unknown) => e)) as pg.DatabaseError;
      expect(err.code).toBe('23502');
      expect((await client.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await client.end();
    }
  });
});
