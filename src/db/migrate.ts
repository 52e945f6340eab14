/**
 * The migration runner for any poolgate app: poolgate's own tables (idempotency records, forward
 * nonces — prefixed `poolgate_`, since they live in the application's database) and then the
 * app's migrations not yet applied, in id order, recorded in `poolgate_migrations`. One
 * transaction under an advisory lock, so several processes starting at once apply each step
 * once, and a failing step leaves nothing of its run behind.
 */
import type { Migration } from '../definition.js';
import type { Queryable } from './types.js';

/** Misuse of the migration list, or a step that failed; the message is one sentence fit for a terminal. */
export class MigrationError extends Error {
  override name = 'MigrationError';
}

/** Runs `fn` in one transaction (BEGIN … COMMIT, ROLLBACK on any error). */
export type RunTransaction = <T>(fn: (tx: Queryable) => Promise<T>) => Promise<T>;

/** The same key as before the runner was generic, so old and new versions still exclude each other. */
const LOCK_KEY = 0x706f6f6c; // 'pool'
/** `poolgate_migrations.id` is a Postgres integer. */
const MAX_ID = 2_147_483_647;

const OWN_TABLES = `
  CREATE TABLE IF NOT EXISTS poolgate_idempotency_keys (
    key text PRIMARY KEY,
    request_hash text NOT NULL,
    status integer NOT NULL,
    body text, -- the JSON exactly as first sent, so a replay is byte-identical
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
  );
  CREATE INDEX IF NOT EXISTS poolgate_idempotency_keys_expires ON poolgate_idempotency_keys (expires_at);
  CREATE TABLE IF NOT EXISTS poolgate_forward_nonces (
    nonce text PRIMARY KEY,
    expires_at timestamptz NOT NULL
  );
  CREATE INDEX IF NOT EXISTS poolgate_forward_nonces_expires ON poolgate_forward_nonces (expires_at);
`;

/**
 * Databases migrated before the rename recorded poolgate's tables as the example app's ids 2 and
 * 3. Their live records move over once, when the new tables are created, so a keyed retry (or a
 * replayed forward) straddling the upgrade still finds them.
 */
const LEGACY_TABLES = [
  {
    id: 2,
    name: 'idempotency keys',
    from: 'idempotency_keys',
    to: 'poolgate_idempotency_keys',
    columns: 'key, request_hash, status, body, created_at, expires_at',
  },
  { id: 3, name: 'forward nonces', from: 'forward_nonces', to: 'poolgate_forward_nonces', columns: 'nonce, expires_at' },
] as const;

/** Which of poolgate's own tables do not exist yet. */
async function missingOwnTables(tx: Queryable): Promise<Set<string>> {
  const { rows } = await tx.query<{ relname: string }>(
    `SELECT relname FROM unnest(ARRAY['poolgate_idempotency_keys', 'poolgate_forward_nonces']) AS relname WHERE to_regclass(relname) IS NULL`,
  );
  return new Set(rows.map((r) => r.relname));
}

/**
 * Once, when poolgate's tables are new in a database that recorded them as ids 2 and 3: their
 * live records move over, and those two bookkeeping rows go, so the app's own ids 2 and 3 are
 * free (matched by id and name: an app's own migration 2 is never touched).
 */
async function adoptLegacyTables(tx: Queryable, done: Map<number, string>, fresh: Set<string>): Promise<void> {
  for (const legacy of LEGACY_TABLES) {
    if (!fresh.has(legacy.to) || done.get(legacy.id) !== legacy.name) continue;
    const legacyExists = await tx.query<{ ok: boolean }>('SELECT to_regclass($1) IS NOT NULL AS ok', [legacy.from]);
    if (legacyExists.rows[0]?.ok) {
      await tx.query(`INSERT INTO ${legacy.to} (${legacy.columns}) SELECT ${legacy.columns} FROM ${legacy.from} WHERE expires_at > now()`);
    }
    await tx.query('DELETE FROM poolgate_migrations WHERE id = $1 AND name = $2', [legacy.id, legacy.name]);
    done.delete(legacy.id);
  }
}

/**
 * Applies poolgate's tables and the migrations of `migrations` not applied yet; returns the ids
 * it applied, in order. The list is checked before the database is touched.
 * @example const applied = await migrate((fn) => db.transaction(fn), app.migrations ?? []);
 */
export async function migrate(runTx: RunTransaction, migrations: readonly Migration[]): Promise<number[]> {
  const pending = checkMigrations(migrations);
  let running: Migration | undefined;
  try {
    return await runTx(async (tx) => {
      running = undefined; // the core may run this again (a serialization failure or deadlock)
      await tx.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
      const fresh = await missingOwnTables(tx);
      await tx.query(OWN_TABLES);
      await tx.query(
        'CREATE TABLE IF NOT EXISTS poolgate_migrations (id integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())',
      );
      const recorded = await tx.query<{ id: number; name: string }>('SELECT id, name FROM poolgate_migrations');
      const done = new Map(recorded.rows.map((r) => [r.id, r.name]));
      await adoptLegacyTables(tx, done, fresh);
      const applied: number[] = [];
      for (const m of pending) {
        if (done.has(m.id)) continue;
        running = m;
        await tx.query(m.sql);
        running = undefined;
        await tx.query('INSERT INTO poolgate_migrations (id, name) VALUES ($1, $2)', [m.id, m.name]);
        applied.push(m.id);
      }
      return applied;
    });
  } catch (err) {
    if (!running) throw err;
    throw new MigrationError(
      `migration ${running.id} ("${running.name}") failed: ${describeSqlError(err)}; nothing of this run was applied`,
      {
        cause: err,
      },
    );
  }
}

/** The list sorted by id, or a MigrationError naming the first problem. */
function checkMigrations(migrations: readonly Migration[]): Migration[] {
  if (!Array.isArray(migrations)) throw new MigrationError('migrations must be an array of { id, name, sql }');
  const byId = new Map<number, Migration>();
  migrations.forEach((m: Partial<Migration> | undefined, index) => {
    const id = m?.id;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 1 || id > MAX_ID) {
      throw new MigrationError(`migrations[${index}]: id must be a whole number from 1 to ${MAX_ID}, got ${String(id)}`);
    }
    if (typeof m?.name !== 'string' || !m.name.trim()) throw new MigrationError(`migration ${id}: name must be a non-empty string`);
    if (typeof m.sql !== 'string' || !m.sql.trim())
      throw new MigrationError(`migration ${id} ("${m.name}"): sql must be a non-empty string`);
    const twin = byId.get(id);
    if (twin) throw new MigrationError(`migration id ${id} is used twice ("${twin.name}" and "${m.name}"); give each migration its own id`);
    byId.set(id, m as Migration);
  });
  return [...byId.values()].sort((a, b) => a.id - b.id);
}

/** What went wrong in a step's SQL: the server's first line and its SQLSTATE (schema text, no secrets). */
function describeSqlError(err: unknown): string {
  const e = err as { message?: unknown; code?: unknown } | undefined;
  const message = typeof e?.message === 'string' && e.message ? (e.message.split('\n')[0] ?? e.message) : String(err);
  return typeof e?.code === 'string' ? `${message} (${e.code})` : message;
}
