/**
 * Conformance of the local Neon proxy: the real `@neondatabase/serverless` driver — `neon()` over
 * HTTP and `Pool` over WebSocket — must see exactly what `pg` sees for the same SQL on the same
 * database: values (parsed by each driver from the text the proxy forwards), field metadata,
 * command tags, row counts, transactions and Postgres errors.
 */
import { neon, NeonDbError, Pool as NeonPool } from '@neondatabase/serverless';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { fieldShape, useNeonProxy } from '../helpers/neon.js';

let db: TestDatabase;
let proxy: NeonProxy;
let direct: pg.Pool;
let wsPool: NeonPool;
let sql: ReturnType<typeof neon>;

beforeAll(async () => {
  db = await createTestDatabase('poolgate_neon_conf');
  proxy = await startNeonProxy({ databaseUrls: [db.url], port: 0 });
  useNeonProxy(proxy);
  sql = neon(db.url);
  wsPool = new NeonPool({ connectionString: db.url, max: 2 });
  wsPool.on('error', () => {});
  direct = new pg.Pool({ connectionString: db.url, max: 2 });
  direct.on('error', () => {});
  await direct.query('CREATE TABLE conf_items (id serial PRIMARY KEY, name text CONSTRAINT conf_items_name_key UNIQUE, qty int)');
});

afterAll(async () => {
  await wsPool?.end().catch(() => {});
  await direct?.end().catch(() => {});
  await proxy?.close();
  await db?.drop();
});

/** The driver bundles its own Buffer; compare bytea values as plain byte arrays. */
function plain(value: unknown): unknown {
  if (value instanceof Uint8Array) return { bytes: [...value] };
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === 'object' && !(value instanceof Date)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

/** Runs `text` through pg, the HTTP driver and the WebSocket driver and expects one answer. */
async function expectSame(text: string, params: unknown[] = []) {
  const viaPg = await direct.query(text, params);
  const viaHttp = await sql.query(text, params, { fullResults: true });
  const viaWs = await wsPool.query(text, params);
  for (const [via, got] of [
    ['http', viaHttp],
    ['ws', viaWs],
  ] as const) {
    expect(plain(got.rows), via).toEqual(plain(viaPg.rows));
    expect(got.fields.map(fieldShape), via).toEqual(viaPg.fields.map(fieldShape));
    expect(got.command, via).toBe(viaPg.command);
    expect(got.rowCount, via).toBe(viaPg.rowCount);
  }
  return viaHttp;
}

describe('values: the driver parses what pg parses', () => {
  it.each([
    ['int2/int4/int8', `SELECT (-32768)::int2 AS a, 2147483647::int4 AS b, (-9223372036854775808)::int8 AS c, 0::int8 AS d`],
    ['numeric', `SELECT 12345678901234567890.123456789::numeric AS a, (-0.5)::numeric(10,3) AS b, 'NaN'::numeric AS c`],
    ['float4/float8', `SELECT 1.5::float4 AS a, 3.141592653589793::float8 AS b, 1e-300::float8 AS c, (-0.0)::float8 AS d`],
    [
      'float NaN/Infinity',
      `SELECT 'NaN'::float8 AS a, 'Infinity'::float8 AS b, '-Infinity'::float8 AS c, 'NaN'::float4 AS d, '-Infinity'::float4 AS e`,
    ],
    ['bool', `SELECT true AS a, false AS b`],
    ['text/varchar', `SELECT 'héllo ✓ "q" \\ ''s'::text AS a, 'abc'::varchar(10) AS b, ''::text AS c, 'x'::char(3) AS d`],
    ['uuid', `SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS a`],
    [
      'json/jsonb',
      `SELECT '{"a":[1,2.5,{"b":null}],"s":"é"}'::json AS a, '{"b":2,"a":[true]}'::jsonb AS b, 'null'::jsonb AS c, '"str"'::json AS d`,
    ],
    ['bytea', `SELECT '\\xdeadbeef00'::bytea AS a, ''::bytea AS b`],
    ['date', `SELECT '2024-02-29'::date AS a, '0044-03-15 BC'::date AS b, 'infinity'::date AS c`],
    ['timestamp', `SELECT '2024-02-29 13:14:15.123456'::timestamp AS a, '1999-12-31 23:59:59'::timestamp AS b`],
    ['timestamptz', `SELECT '2024-02-29 13:14:15.123+02'::timestamptz AS a, '-infinity'::timestamptz AS b`],
    ['interval', `SELECT '1 year 2 mons 3 days 04:05:06.789'::interval AS a, '-1 day'::interval AS b, '0'::interval AS c`],
    ['NULL', `SELECT NULL AS a, NULL::int AS b, NULL::jsonb AS c, NULL::int[] AS d`],
    [
      'arrays with NULL elements',
      `SELECT ARRAY[1,NULL,3]::int[] AS a, ARRAY['a',NULL,'b "q"','c,d']::text[] AS b, ARRAY[true,NULL]::bool[] AS c, '{}'::int[] AS d`,
    ],
    [
      '2-D and typed arrays',
      `SELECT ARRAY[[1,2],[3,4]]::int8[] AS a, ARRAY[1.5,NULL]::numeric[] AS b, ARRAY['2024-01-01'::date] AS c, ARRAY['{"k":1}'::jsonb] AS d, ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid] AS e, ARRAY['\\x01'::bytea] AS f`,
    ],
  ])('%s', async (_name, text) => {
    await expectSame(text);
  });

  it('params of several types', async () => {
    await expectSame(
      'SELECT $1::int AS a, $2::text AS b, $3::bool AS c, $4::timestamptz AS d, $5::bytea AS e, $6::jsonb AS f, $7::int[] AS g, $8::text AS h, $9::numeric AS i, $10::float8 AS j, $11::text[] AS k',
      [
        42,
        'x ✓',
        true,
        new Date('2024-01-02T03:04:05.678Z'),
        Buffer.from([0, 1, 254, 255]),
        { k: [1, 'v', null] },
        [1, null, 3],
        null,
        '12345678901234567890.12345',
        -1.25,
        ['a', 'b,c', null],
      ],
    );
  });

  it('tagged templates send their values as params', async () => {
    const name = "O'Brien; DROP TABLE conf_items";
    expect(await sql`SELECT ${name}::text AS n, ${7}::int + 1 AS m`).toEqual([{ n: name, m: 8 }]);
  });
});

describe('result shapes', () => {
  it('arrayMode returns rows as arrays, duplicate names included', async () => {
    const text = 'SELECT 1 AS a, 2 AS a, NULL::text AS b';
    const viaPg = await direct.query({ text, rowMode: 'array' });
    expect(await sql.query(text, [], { arrayMode: true })).toEqual(viaPg.rows);
    const full = await sql.query(text, [], { arrayMode: true, fullResults: true });
    expect(full.rows).toEqual([[1, 2, null]]);
    expect(full.rowAsArray).toBe(true);
  });

  it('fullResults carries command, rowCount and table column fields', async () => {
    await direct.query(`INSERT INTO conf_items (name, qty) VALUES ('fields-1', 1), ('fields-2', 2)`);
    const res = await expectSame(`SELECT id, name, qty FROM conf_items WHERE name LIKE 'fields-%' ORDER BY id`);
    expect(res.command).toBe('SELECT');
    expect(res.rowCount).toBe(2);
    expect(res.fields.every((f) => f.tableID > 0)).toBe(true);
    expect(res.fields.map((f) => f.columnID)).toEqual([1, 2, 3]);
  });

  it('commands without a row count report rowCount null', async () => {
    const viaPg = await direct.query('CREATE TABLE conf_ddl_pg (x int)');
    const viaHttp = await sql.query('CREATE TABLE conf_ddl_http (x int)', [], { fullResults: true });
    expect([viaHttp.command, viaHttp.rowCount, viaHttp.rows]).toEqual([viaPg.command, viaPg.rowCount, viaPg.rows]);
    expect(viaHttp.rowCount).toBeNull();
  });

  it('INSERT / UPDATE / DELETE report rowCount like pg', async () => {
    await direct.query('CREATE TABLE conf_dml_pg (k int, v text); CREATE TABLE conf_dml_http (k int, v text)');
    const steps = [
      `INSERT INTO {t} (k, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')`,
      `UPDATE {t} SET v = v || '!' WHERE k >= 2`,
      `INSERT INTO {t} (k, v) SELECT k + 10, v FROM {t} WHERE k = 1 RETURNING k, v`,
      `DELETE FROM {t} WHERE k < 3`,
      `UPDATE {t} SET v = 'none' WHERE k = 999`,
    ];
    for (const step of steps) {
      const viaPg = await direct.query(step.replaceAll('{t}', 'conf_dml_pg'));
      const viaHttp = await sql.query(step.replaceAll('{t}', 'conf_dml_http'), [], { fullResults: true });
      expect([viaHttp.command, viaHttp.rowCount, viaHttp.rows], step).toEqual([viaPg.command, viaPg.rowCount, viaPg.rows]);
    }
    const left = await direct.query('SELECT k, v FROM conf_dml_http ORDER BY k');
    expect(left.rows).toEqual([
      { k: 3, v: 'c!' },
      { k: 11, v: 'a' },
    ]);
  });
});

describe('HTTP batches (sql.transaction)', () => {
  const settingsSql = `SELECT current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro, current_setting('transaction_deferrable') AS def`;

  it.each([
    ['ReadUncommitted', 'read uncommitted'],
    ['ReadCommitted', 'read committed'],
    ['RepeatableRead', 'repeatable read'],
    ['Serializable', 'serializable'],
  ] as const)('isolation level %s', async (isolationLevel, expected) => {
    const client = await direct.connect();
    let viaPg: pg.QueryResult;
    try {
      await client.query(`BEGIN ISOLATION LEVEL ${expected.toUpperCase()}`);
      viaPg = await client.query(settingsSql);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    const [rows] = await sql.transaction([sql.query(settingsSql)], { isolationLevel });
    expect(rows).toEqual(viaPg.rows);
    expect(rows).toEqual([{ iso: expected, ro: 'off', def: 'off' }]);
  });

  it('read-only and deferrable reach the transaction', async () => {
    const [rows] = await sql.transaction([sql.query(settingsSql)], { isolationLevel: 'Serializable', readOnly: true, deferrable: true });
    expect(rows).toEqual([{ iso: 'serializable', ro: 'on', def: 'on' }]);
  });

  it('a write inside a read-only batch fails with 25006, like pg, and writes nothing', async () => {
    const insert = `INSERT INTO conf_items (name) VALUES ('ro-write')`;
    const client = await direct.connect();
    let viaPg: unknown;
    try {
      await client.query('BEGIN READ ONLY');
      viaPg = await client.query(insert).catch((e: unknown) => e);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
    const err = await sql.transaction([sql`SELECT 1`, sql.query(insert)], { readOnly: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NeonDbError);
    expect((err as NeonDbError).code).toBe('25006');
    expect((err as NeonDbError).message).toBe((viaPg as Error).message);
    const left = await direct.query(`SELECT count(*)::int AS n FROM conf_items WHERE name = 'ro-write'`);
    expect(left.rows).toEqual([{ n: 0 }]);
  });

  it('returns one result per statement and commits them together', async () => {
    const results = await sql.transaction([
      sql`INSERT INTO conf_items (name, qty) VALUES ('batch-a', 1) RETURNING name`,
      sql`UPDATE conf_items SET qty = qty + 1 WHERE name = 'batch-a'`,
      sql`SELECT qty FROM conf_items WHERE name = 'batch-a'`,
    ]);
    expect(results).toEqual([[{ name: 'batch-a' }], [], [{ qty: 2 }]]);
    const full = await sql.transaction((tx) => [tx`SELECT 1 AS one`, tx`DELETE FROM conf_items WHERE name = 'nope'`], {
      fullResults: true,
    });
    expect(full.map((r) => [r.command, r.rowCount])).toEqual([
      ['SELECT', 1],
      ['DELETE', 0],
    ]);
  });

  it('a batch that fails half-way rolls back everything', async () => {
    await direct.query(`INSERT INTO conf_items (name) VALUES ('dup')`);
    const err = await sql
      .transaction([
        sql`INSERT INTO conf_items (name) VALUES ('half-1')`,
        sql`INSERT INTO conf_items (name) VALUES ('dup')`,
        sql`INSERT INTO conf_items (name) VALUES ('half-3')`,
      ])
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NeonDbError);
    expect((err as NeonDbError).code).toBe('23505');
    const left = await direct.query(`SELECT name FROM conf_items WHERE name LIKE 'half-%'`);
    expect(left.rows).toEqual([]);
  });
});

describe('errors', () => {
  /** The fields NeonDbError and pg's DatabaseError share. */
  const errorShape = (e: Record<string, unknown>) => ({
    message: e.message,
    code: e.code,
    severity: e.severity,
    detail: e.detail,
    hint: e.hint,
    position: e.position,
    schema: e.schema,
    table: e.table,
    column: e.column,
    constraint: e.constraint,
    routine: e.routine,
  });

  async function expectSameError(text: string, params: unknown[] = []) {
    const viaPg = (await direct.query(text, params).catch((e: unknown) => e)) as pg.DatabaseError;
    const viaHttp = (await sql.query(text, params).catch((e: unknown) => e)) as NeonDbError;
    const viaWs = (await wsPool.query(text, params).catch((e: unknown) => e)) as pg.DatabaseError;
    expect(viaPg).toBeInstanceOf(Error);
    expect(viaHttp).toBeInstanceOf(NeonDbError);
    expect(errorShape(viaHttp as never)).toEqual(errorShape(viaPg as never));
    expect(errorShape(viaWs as never)).toEqual(errorShape(viaPg as never));
    return viaHttp;
  }

  it('unique violation: 23505 with its constraint', async () => {
    await direct.query(`INSERT INTO conf_items (name) VALUES ('unique-1')`);
    const err = await expectSameError(`INSERT INTO conf_items (name) VALUES ($1)`, ['unique-1']);
    expect(err.code).toBe('23505');
    expect(err.constraint).toBe('conf_items_name_key');
    expect(err.table).toBe('conf_items');
    expect(err.detail).toContain('unique-1');
  });

  it('undefined table: 42P01 with position', async () => {
    const err = await expectSameError('SELECT * FROM conf_missing');
    expect(err.code).toBe('42P01');
    expect(err.position).toBe('15');
  });

  it('bad input and division by zero', async () => {
    expect((await expectSameError('SELECT $1::int', ['nope'])).code).toBe('22P02');
    expect((await expectSameError('SELECT 1 / 0')).code).toBe('22012');
  });

  it('the connection stays usable after an error', async () => {
    await expect(sql`SELECT 2 AS two`).resolves.toEqual([{ two: 2 }]);
  });
});

describe('WebSocket Pool', () => {
  it('runs queries and a committed transaction', async () => {
    const client = await wsPool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`INSERT INTO conf_items (name, qty) VALUES ('ws-commit', $1)`, [5]);
      const inside = await client.query(`SELECT qty FROM conf_items WHERE name = 'ws-commit'`);
      expect(inside.rows).toEqual([{ qty: 5 }]);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    const after = await direct.query(`SELECT qty FROM conf_items WHERE name = 'ws-commit'`);
    expect(after.rows).toEqual([{ qty: 5 }]);
  });

  it('rolls a transaction back', async () => {
    const client = await wsPool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`INSERT INTO conf_items (name) VALUES ('ws-rollback')`);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
    const after = await direct.query(`SELECT 1 FROM conf_items WHERE name = 'ws-rollback'`);
    expect(after.rowCount).toBe(0);
  });

  it('ends a pool of its own cleanly', async () => {
    const pool = new NeonPool({ connectionString: db.url, max: 3 });
    const rows = await Promise.all([1, 2, 3].map((n) => pool.query('SELECT $1::int AS n', [n]).then((r) => r.rows[0])));
    expect(rows).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
    await pool.end();
    await expect(pool.query('SELECT 1')).rejects.toThrow();
  });
});
