/**
 * The generic migration runner on a real database, each case in a schema of its own: poolgate's
 * tables (prefixed) and the app's steps in id order, once, even from several pools at once; a bad
 * list is refused before the database is touched; a failing step leaves nothing of its run; a
 * database migrated before the rename keeps working and keeps its live records.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate, MigrationError, type RunTransaction } from '../../src/db/migrate.js';
import type { Migration } from '../../src/definition.js';
import { runMigrations } from '../../src/runtime/migrate.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';

let db: TestDatabase;
const pools: pg.Pool[] = [];

beforeAll(async () => {
  db = await createTestDatabase('poolgate_migrate');
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end().catch(() => {})));
  await db?.drop();
});

/** A fresh schema, first on the search path of every connection of `runTx` (so unqualified names land there). */
async function freshSchema(): Promise<{ schema: string; runTx: () => RunTransaction; tables: () => Promise<string[]> }> {
  const schema = `m_${randomBytes(4).toString('hex')}`;
  await db.admin(`CREATE SCHEMA ${schema}`);
  const runTx = (): RunTransaction => {
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    pools.push(pool);
    pool.on('connect', (client) => void client.query(`SET search_path TO ${schema}`));
    return async (fn) => {
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        const result = await fn(client);
        await client.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK');
        throw err;
      } finally {
        client.release();
      }
    };
  };
  const tables = async () =>
    (await db.admin('SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename', [schema])).rows.map(
      (r) => r.tablename as string,
    );
  return { schema, runTx, tables };
}

const notes: Migration = { id: 1, name: 'notes', sql: 'CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)' };
const tags: Migration = { id: 2, name: 'tags', sql: 'CREATE TABLE tags (note_id integer REFERENCES notes (id), tag text NOT NULL)' };
const OWN = ['poolgate_forward_nonces', 'poolgate_idempotency_keys', 'poolgate_migrations'];

describe('migrate', () => {
  it("creates poolgate's own tables, then applies the app's migrations in id order", async () => {
    const { schema, runTx, tables } = await freshSchema();
    expect(await migrate(runTx(), [tags, notes])).toEqual([1, 2]);
    expect(await tables()).toEqual(['notes', ...OWN, 'tags']);
    const indexes = await db.admin('SELECT indexname FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname', [schema]);
    expect(indexes.rows.map((r) => r.indexname)).toEqual(
      expect.arrayContaining(['poolgate_forward_nonces_expires', 'poolgate_idempotency_keys_expires']),
    );
    const recorded = await db.admin(`SELECT id, name FROM ${schema}.poolgate_migrations ORDER BY id`);
    expect(recorded.rows).toEqual([
      { id: 1, name: 'notes' },
      { id: 2, name: 'tags' },
    ]);
  });

  it('applies nothing on a second run, and only the new step once the list grows', async () => {
    const { runTx } = await freshSchema();
    expect(await migrate(runTx(), [notes])).toEqual([1]);
    expect(await migrate(runTx(), [notes])).toEqual([]);
    expect(await migrate(runTx(), [notes, tags])).toEqual([2]);
    expect(await migrate(runTx(), [])).toEqual([]); // steps recorded but no longer listed are left alone
  });

  it('applies each step once when three pools run it at the same moment', async () => {
    const { schema, runTx } = await freshSchema();
    const runs = await Promise.all([runTx(), runTx(), runTx()].map((tx) => migrate(tx, [notes, tags])));
    expect(runs.filter((ids) => ids.length > 0)).toEqual([[1, 2]]);
    expect((await db.admin(`SELECT count(*)::int AS n FROM ${schema}.poolgate_migrations`)).rows[0].n).toBe(2);
  });

  it.each([
    ['a duplicate id', [notes, { ...tags, id: 1 }], /migration id 1 is used twice \("notes" and "tags"\)/],
    ['id 0', [{ ...notes, id: 0 }], /migrations\[0\]: id must be a whole number from 1 to 2147483647, got 0/],
    ['a negative id', [notes, { ...tags, id: -2 }], /migrations\[1\]: id must be a whole number.*got -2/],
    ['a fractional id', [{ ...notes, id: 1.5 }], /id must be a whole number.*got 1\.5/],
    ['a string id', [{ ...notes, id: '1' as unknown as number }], /id must be a whole number.*got 1/],
    ['an id beyond integer', [{ ...notes, id: 2 ** 31 }], /id must be a whole number.*got 2147483648/],
    ['no sql', [{ ...notes, sql: ' ' }], /migration 1 \("notes"\): sql must be a non-empty string/],
    ['no name', [{ ...notes, name: '' }], /migration 1: name must be a non-empty string/],
  ])('refuses %s before touching the database', async (_what, list, message) => {
    let called = false;
    const runTx: RunTransaction = () => {
      called = true;
      throw new Error('must not run');
    };
    const refused = migrate(runTx, list);
    await expect(refused).rejects.toThrow(MigrationError);
    await expect(refused).rejects.toThrow(message);
    expect(called).toBe(false);
  });

  it('rolls back everything of the run when a step fails, naming the step and the server error', async () => {
    const { runTx, tables } = await freshSchema();
    const broken: Migration = { id: 2, name: 'broken', sql: 'CREAT TABLE nope (id int)' };
    const failed = migrate(runTx(), [notes, broken]);
    await expect(failed).rejects.toThrow(MigrationError);
    await expect(failed).rejects.toThrow(
      /^migration 2 \("broken"\) failed: syntax error at or near "CREAT" \(42601\); nothing of this run was applied$/,
    );
    expect(await tables()).toEqual([]); // not notes, nor poolgate's own tables
    expect(await migrate(runTx(), [notes, tags])).toEqual([1, 2]);
  });

  it('keeps a database migrated before the rename working: live records moved over once, ids 2 and 3 freed', async () => {
    const { schema, runTx, tables } = await freshSchema();
    await db.admin(`
      SET search_path TO ${schema};
      CREATE TABLE poolgate_migrations (id integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
      INSERT INTO poolgate_migrations (id, name) VALUES (1, 'notes'), (2, 'idempotency keys'), (3, 'forward nonces');
      CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
      CREATE TABLE idempotency_keys (key text PRIMARY KEY, request_hash text NOT NULL, status integer NOT NULL, body text,
        created_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz NOT NULL);
      CREATE TABLE forward_nonces (nonce text PRIMARY KEY, expires_at timestamptz NOT NULL);
      INSERT INTO idempotency_keys (key, request_hash, status, body, expires_at) VALUES
        ('live', 'h1', 201, '{"id":1}', now() + interval '1 hour'), ('expired', 'h2', 201, NULL, now() - interval '1 minute');
      INSERT INTO forward_nonces VALUES ('live-nonce', now() + interval '1 minute'), ('old-nonce', now() - interval '1 minute');
      RESET search_path;
    `);
    expect(await migrate(runTx(), [notes])).toEqual([]);
    expect(await tables()).toEqual(['forward_nonces', 'idempotency_keys', 'notes', ...OWN]);
    const keys = await db.admin(`SELECT key, request_hash, status, body FROM ${schema}.poolgate_idempotency_keys`);
    expect(keys.rows).toEqual([{ key: 'live', request_hash: 'h1', status: 201, body: '{"id":1}' }]);
    const nonces = await db.admin(`SELECT nonce FROM ${schema}.poolgate_forward_nonces`);
    expect(nonces.rows).toEqual([{ nonce: 'live-nonce' }]);

    // Only when poolgate's tables are created: a later run copies nothing more.
    await db.admin(
      `INSERT INTO ${schema}.idempotency_keys (key, request_hash, status, expires_at) VALUES ('late', 'h3', 200, now() + interval '1 hour')`,
    );
    // Ids 2 and 3 were poolgate's: freed, so the app's own migration 2 applies.
    expect(await migrate(runTx(), [notes, tags])).toEqual([2]);
    expect((await db.admin(`SELECT count(*)::int AS n FROM ${schema}.poolgate_idempotency_keys`)).rows[0].n).toBe(1);
  });

  it("leaves a user's own idempotency_keys table alone", async () => {
    const { schema, runTx } = await freshSchema();
    const theirs: Migration = { id: 1, name: 'their keys', sql: 'CREATE TABLE idempotency_keys (key text, expires_at timestamptz)' };
    const stamp = "INSERT INTO idempotency_keys VALUES ('k', now() + interval '1 hour')";
    expect(await migrate(runTx(), [theirs, { id: 2, name: 'idempotency keys', sql: stamp }])).toEqual([1, 2]);
    expect((await db.admin(`SELECT count(*)::int AS n FROM ${schema}.poolgate_idempotency_keys`)).rows[0].n).toBe(0);
  });
});

describe('runMigrations (npm run migrate, poolgate migrate)', () => {
  it('needs DATABASE_URL, said in one ConfigError line', async () => {
    await expect(runMigrations({})).rejects.toThrow(/^DATABASE_URL: is required to migrate/);
  });

  it("applies poolgate's tables and the app's migrations to DATABASE_URL, once", async () => {
    const own = await createTestDatabase('poolgate_migrate_run');
    try {
      expect(await runMigrations({ DATABASE_URL: own.url }, { migrations: [notes] })).toEqual([1]);
      expect(await runMigrations({ DATABASE_URL: own.url }, { migrations: [notes] })).toEqual([]);
      expect(await runMigrations({ DATABASE_URL: own.url })).toEqual([]);
      const names = await own.admin("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename");
      expect(names.rows.map((r) => r.tablename)).toEqual(['notes', ...OWN]);
    } finally {
      await own.drop();
    }
  });
});
