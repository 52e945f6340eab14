/**
 * The generic migration runner on a real database, each case in a schema of its own: poolgate's
 * tables (prefixed) and the app's steps in id order, once, even from several pools at once; each
 * app's ids its own, so two apps share a database; a bad list or app name is refused before the
 * database is touched; a failing step leaves nothing of its run; an applied step whose text
 * changed is reported, not run again; a database migrated before the rename, or before apps had
 * names, keeps working and keeps its records.
 */
import { createHash, randomBytes } from 'node:crypto';
import pg from 'pg';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate, MigrationError, type RunTransaction } from '../../src/db/migrate.js';
import { defineApp, type Migration } from '../../src/definition.js';
import { fitness } from '../../src/fitness/app.js';
import { route } from '../../src/index.js';
import { runMigrations } from '../../src/runtime/migrate.js';
import { startGateway } from '../../src/runtime/node.js';
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
    // The suite's DROP DATABASE … WITH (FORCE) ends what is still connected (57P01): an idle client's
    // error reaches the pool's 'error' event, and one closing after pool.end() its own.
    pool.on('error', () => {});
    pool.on('connect', (client) => {
      client.on('error', () => {});
      void client.query(`SET search_path TO ${schema}`);
    });
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
/** Another app's first step: the same id as `notes`. */
const tasks: Migration = { id: 1, name: 'tasks', sql: 'CREATE TABLE tasks (id serial PRIMARY KEY, title text NOT NULL)' };
/** `notes` as edited after it was applied. */
const editedNotes: Migration = { ...notes, sql: 'CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL, pinned boolean)' };
const EDITED_WARNING =
  'migration 1 ("notes") of app "notes" was edited after it was applied and is not run again; restore its text and put the change in a new migration (id 3)';
const OWN = ['poolgate_forward_nonces', 'poolgate_idempotency_keys', 'poolgate_migrations'];
/** The migrations table as poolgate wrote it before apps had names: ids shared by every app. */
const OLD_SHAPE =
  'CREATE TABLE poolgate_migrations (id integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())';

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex');

/** The ids `migrate` applied for the app `name` (by default the notes app). */
async function applied(runTx: RunTransaction, migrations: Migration[], name = 'notes'): Promise<number[]> {
  const report = await migrate(runTx, { name, migrations });
  expect(report.warnings).toEqual([]);
  return report.applied;
}

/** What poolgate_migrations records in `schema`, without the times. */
async function recorded(schema: string): Promise<{ app: string; id: number; name: string; checksum: string | null }[]> {
  const { rows } = await db.admin(`SELECT app, id, name, checksum FROM ${schema}.poolgate_migrations ORDER BY app, id`);
  return rows as { app: string; id: number; name: string; checksum: string | null }[];
}

describe('migrate', () => {
  it("creates poolgate's own tables, then applies the app's migrations in id order", async () => {
    const { schema, runTx, tables } = await freshSchema();
    expect(await applied(runTx(), [tags, notes])).toEqual([1, 2]);
    expect(await tables()).toEqual(['notes', ...OWN, 'tags']);
    const indexes = await db.admin('SELECT indexname FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname', [schema]);
    expect(indexes.rows.map((r) => r.indexname)).toEqual(
      expect.arrayContaining(['poolgate_forward_nonces_expires', 'poolgate_idempotency_keys_expires']),
    );
    expect(await recorded(schema)).toEqual([
      { app: 'notes', id: 1, name: 'notes', checksum: sha256(notes.sql) },
      { app: 'notes', id: 2, name: 'tags', checksum: sha256(tags.sql) },
    ]);
  });

  it('applies nothing on a second run, and only the new step once the list grows', async () => {
    const { runTx } = await freshSchema();
    expect(await applied(runTx(), [notes])).toEqual([1]);
    expect(await applied(runTx(), [notes])).toEqual([]);
    expect(await applied(runTx(), [notes, tags])).toEqual([2]);
    expect(await applied(runTx(), [])).toEqual([]); // steps recorded but no longer listed are left alone
  });

  it('keeps each app to its own ids: two apps with a migration 1 on one database both get their table and can write', async () => {
    const { schema, runTx, tables } = await freshSchema();
    expect(await applied(runTx(), [notes])).toEqual([1]);
    expect(await applied(runTx(), [tasks], 'tasks')).toEqual([1]);
    expect(await tables()).toEqual(['notes', ...OWN, 'tasks']);
    await runTx()(async (tx) => {
      await tx.query("INSERT INTO notes (body) VALUES ('a note')");
      await tx.query("INSERT INTO tasks (title) VALUES ('a task')");
    });
    expect(await recorded(schema)).toEqual([
      { app: 'notes', id: 1, name: 'notes', checksum: sha256(notes.sql) },
      { app: 'tasks', id: 1, name: 'tasks', checksum: sha256(tasks.sql) },
    ]);
    expect(await applied(runTx(), [notes])).toEqual([]);
    expect(await applied(runTx(), [tasks], 'tasks')).toEqual([]);
  });

  it('reports an applied migration whose text changed, in one line naming the app, the step and the fix, and runs nothing again', async () => {
    const { schema, runTx } = await freshSchema();
    expect(await applied(runTx(), [notes, tags])).toEqual([1, 2]);
    const report = { applied: [], warnings: [EDITED_WARNING] };
    expect(await migrate(runTx(), { name: 'notes', migrations: [editedNotes, tags] })).toEqual(report);
    // The record keeps what ran, so the warning stays until the text is restored.
    expect(await migrate(runTx(), { name: 'notes', migrations: [editedNotes, tags] })).toEqual(report);
    expect((await recorded(schema))[0]?.checksum).toBe(sha256(notes.sql));
    expect(await applied(runTx(), [notes, tags])).toEqual([]);
    // The same text with other line endings (a CRLF checkout) is no edit.
    const labels: Migration = { id: 3, name: 'labels', sql: 'CREATE TABLE labels (\n  note_id integer,\n  label text\n)' };
    expect(await applied(runTx(), [notes, tags, labels])).toEqual([3]);
    expect(await applied(runTx(), [notes, tags, { ...labels, sql: labels.sql.replaceAll('\n', '\r\n') }])).toEqual([]);
    const columns = await db.admin('SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2', [
      schema,
      'notes',
    ]);
    expect(columns.rows.map((r) => r.column_name)).not.toContain('pinned');
  });

  it('applies each step once when three pools run it at the same moment', async () => {
    const { schema, runTx } = await freshSchema();
    const runs = await Promise.all([runTx(), runTx(), runTx()].map((tx) => applied(tx, [notes, tags])));
    expect(runs.filter((ids) => ids.length > 0)).toEqual([[1, 2]]);
    expect((await db.admin(`SELECT count(*)::int AS n FROM ${schema}.poolgate_migrations`)).rows[0].n).toBe(2);
  });

  it('upgrades a table of the old shape once and applies each step once when two apps start three runners each at once', async () => {
    const { schema, runTx } = await freshSchema();
    await db.admin(
      `SET search_path TO ${schema}; ${OLD_SHAPE}; INSERT INTO poolgate_migrations (id, name) VALUES (1, 'notes'); ${notes.sql}; RESET search_path`,
    );
    const notesRuns = [runTx(), runTx(), runTx()].map((tx) => applied(tx, [notes, tags]));
    const tasksRuns = [runTx(), runTx(), runTx()].map((tx) => applied(tx, [tasks], 'tasks'));
    const [forNotes, forTasks] = await Promise.all([Promise.all(notesRuns), Promise.all(tasksRuns)]);
    expect(forNotes.filter((ids) => ids.length > 0)).toEqual([[2]]);
    expect(forTasks.filter((ids) => ids.length > 0)).toEqual([[1]]);
    expect(await recorded(schema)).toEqual([
      { app: 'notes', id: 1, name: 'notes', checksum: sha256(notes.sql) },
      { app: 'notes', id: 2, name: 'tags', checksum: sha256(tags.sql) },
      { app: 'tasks', id: 1, name: 'tasks', checksum: sha256(tasks.sql) },
    ]);
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
    const refused = migrate(runTx, { name: 'notes', migrations: list });
    await expect(refused).rejects.toThrow(MigrationError);
    await expect(refused).rejects.toThrow(message);
    expect(called).toBe(false);
  });

  it.each([
    [
      'empty',
      '',
      /^app name must be a short identifier \(a lowercase letter, then up to 39 lowercase letters, digits, "_" or "-"\), got ""$/,
    ],
    ['two words', 'my notes', /^app name must be a short identifier .*, got "my notes"$/],
    ['capitalised', 'Notes', /^app name must be a short identifier .*, got "Notes"$/],
    ['41 characters long', `n${'x'.repeat(40)}`, /^app name must be a short identifier .*, got "nx{40}"$/],
    ['a number', 7 as unknown as string, /^app name must be a short identifier .*, got number$/],
  ])('refuses an app name that is %s before touching the database, and defineApp refuses it too', async (_what, name, message) => {
    let called = false;
    const runTx: RunTransaction = () => {
      called = true;
      throw new Error('must not run');
    };
    const refused = migrate(runTx, { name, migrations: [notes] });
    await expect(refused).rejects.toThrow(MigrationError);
    await expect(refused).rejects.toThrow(message);
    expect(called).toBe(false);
    const app = { routes: [], name, migrations: [notes] } as Parameters<typeof defineApp>[0];
    expect(() => defineApp(app)).toThrow(message);
  });

  it('asks a name only of an app with migrations, in one line naming the fix', async () => {
    const message = /^an app with migrations needs a name \(its migrations are recorded under it\): defineApp\(\{ name: 'notes', … \}\)$/;
    const { runTx, tables } = await freshSchema();
    await expect(migrate(runTx(), { migrations: [notes] })).rejects.toThrow(message);
    expect(await tables()).toEqual([]);
    expect(() => defineApp({ routes: [], migrations: [notes] } as unknown as Parameters<typeof defineApp>[0])).toThrow(message);
    expect(await migrate(runTx(), { migrations: [] })).toEqual({ applied: [], warnings: [] });
    expect(await tables()).toEqual(OWN);
    expect(() => defineApp({ routes: [] })).not.toThrow();
    expect(defineApp({ name: 'my-app_2', routes: [], migrations: [notes] }).name).toBe('my-app_2');
  });

  it('rolls back everything of the run when a step fails, naming the step and the server error', async () => {
    const { runTx, tables } = await freshSchema();
    const broken: Migration = { id: 2, name: 'broken', sql: 'CREAT TABLE nope (id int)' };
    const failed = migrate(runTx(), { name: 'notes', migrations: [notes, broken] });
    await expect(failed).rejects.toThrow(MigrationError);
    await expect(failed).rejects.toThrow(
      /^migration 2 \("broken"\) failed: syntax error at or near "CREAT" \(42601\); nothing of this run was applied$/,
    );
    expect(await tables()).toEqual([]); // not notes, nor poolgate's own tables
    expect(await applied(runTx(), [notes, tags])).toEqual([1, 2]);
  });

  it('keeps a database migrated before the rename working: live records moved over once, ids 2 and 3 freed', async () => {
    const { schema, runTx, tables } = await freshSchema();
    await db.admin(`
      SET search_path TO ${schema};
      ${OLD_SHAPE};
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
    expect(await applied(runTx(), [notes])).toEqual([]);
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
    expect(await applied(runTx(), [notes, tags])).toEqual([2]);
    expect((await db.admin(`SELECT count(*)::int AS n FROM ${schema}.poolgate_idempotency_keys`)).rows[0].n).toBe(1);
    expect(await recorded(schema)).toEqual([
      { app: 'notes', id: 1, name: 'notes', checksum: sha256(notes.sql) },
      { app: 'notes', id: 2, name: 'tags', checksum: sha256(tags.sql) },
    ]);
  });

  it('upgrades a database the fitness app migrated before apps had names: its rows kept, nothing run again, and another app then gets its migration 1', async () => {
    const { schema, runTx, tables } = await freshSchema();
    const [fitnessSchema] = fitness.migrations ?? [];
    await db.admin(`
      SET search_path TO ${schema};
      ${OLD_SHAPE};
      INSERT INTO poolgate_migrations (id, name) VALUES (1, 'fitness schema');
      ${fitnessSchema?.sql};
      INSERT INTO users (email, name) VALUES ('ada@example.com', 'Ada');
      RESET search_path;
    `);
    expect(await migrate(runTx(), fitness)).toEqual({ applied: [], warnings: [] });
    expect((await db.admin(`SELECT email FROM ${schema}.users`)).rows).toEqual([{ email: 'ada@example.com' }]);
    expect(await recorded(schema)).toEqual([{ app: 'fitness', id: 1, name: 'fitness schema', checksum: sha256(fitnessSchema!.sql) }]);
    expect(await applied(runTx(), [notes])).toEqual([1]);
    expect(await tables()).toContain('notes');
    expect(await migrate(runTx(), fitness)).toEqual({ applied: [], warnings: [] });
  });

  it("adopts an old row only for the app's own migration of the same id and name", async () => {
    const { schema, runTx } = await freshSchema();
    await db.admin(
      `SET search_path TO ${schema}; ${OLD_SHAPE}; INSERT INTO poolgate_migrations (id, name) VALUES (1, 'notes'); ${notes.sql}; RESET search_path`,
    );
    expect(await applied(runTx(), [tasks], 'tasks')).toEqual([1]); // same id, another name: not its row
    expect(await applied(runTx(), [notes])).toEqual([]);
    expect((await recorded(schema)).map((r) => [r.app, r.id])).toEqual([
      ['notes', 1],
      ['tasks', 1],
    ]);
  });

  it("leaves a user's own idempotency_keys table alone", async () => {
    const { schema, runTx } = await freshSchema();
    const theirs: Migration = { id: 1, name: 'their keys', sql: 'CREATE TABLE idempotency_keys (key text, expires_at timestamptz)' };
    const stamp = "INSERT INTO idempotency_keys VALUES ('k', now() + interval '1 hour')";
    expect(await applied(runTx(), [theirs, { id: 2, name: 'idempotency keys', sql: stamp }])).toEqual([1, 2]);
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
      const app = { name: 'notes', migrations: [notes] };
      expect(await runMigrations({ DATABASE_URL: own.url }, app)).toEqual({ applied: [1], warnings: [] });
      expect(await runMigrations({ DATABASE_URL: own.url }, app)).toEqual({ applied: [], warnings: [] });
      expect(await runMigrations({ DATABASE_URL: own.url })).toEqual({ applied: [], warnings: [] });
      const names = await own.admin("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename");
      expect(names.rows.map((r) => r.tablename)).toEqual(['notes', ...OWN]);
    } finally {
      await own.drop();
    }
  });
});

describe('the Node gateway at start', () => {
  const addNote = route({
    method: 'POST',
    path: '/api/notes',
    kind: 'transactional',
    body: z.object({ body: z.string() }),
    response: { status: 201, body: z.object({ id: z.number() }) },
    handler: async ({ db, body }) => {
      const { rows } = await db.query<{ id: number }>('INSERT INTO notes (body) VALUES ($1) RETURNING id', [body.body]);
      return { status: 201, body: rows[0]! };
    },
  });
  const notesApp = (migration: Migration) => defineApp({ name: 'notes', routes: [addNote], migrations: [migration] });

  it("serves a new app's writes on a database the fitness app migrated, and logs an edited applied migration", async () => {
    const own = await createTestDatabase('poolgate_migrate_apps');
    const env = { DATABASE_URL: own.url, PORT: '0', HOST: '127.0.0.1' };
    const lines: string[] = [];
    // Log lines are JSON objects (LOG_FORMAT=auto off a terminal): the words are their msg.
    const log = (line: string) => void lines.push((JSON.parse(line) as { msg: string }).msg);
    try {
      expect((await runMigrations({ DATABASE_URL: own.url }, fitness)).applied).toEqual([1]);
      const gateway = await startGateway(notesApp(notes), env, { log });
      try {
        const response = await fetch(`${gateway.url}/api/notes`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ body: 'first' }),
        });
        expect(response.status, await response.clone().text()).toBe(201);
      } finally {
        await gateway.close();
      }
      expect(lines).toContain('poolgate: applied migrations 1');
      lines.length = 0;
      await (await startGateway(notesApp(editedNotes), env, { log })).close();
      expect(lines).toContain(`poolgate: warning: ${EDITED_WARNING.replace('(id 3)', '(id 2)')}`); // its only step is 1
    } finally {
      await own.drop();
    }
  });
});
