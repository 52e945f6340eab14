/**
 * The migration runner for any poolgate app: poolgate's own tables (idempotency records, forward
 * nonces — prefixed `poolgate_`, since they live in the application's database) and then the
 * app's migrations not yet applied, in id order, recorded in `poolgate_migrations` under the app's
 * name (ids are the app's own: several apps share a database) with a checksum of their SQL, so an
 * applied step edited since is reported. One transaction under an advisory lock, so several
 * processes starting at once apply each step once, and a failing step leaves nothing of its run
 * behind.
 */
import { cachedTables } from '../cache/policy.js';
import { GENERATIONS_TABLE, installTriggers } from '../cache/triggers.js';
import type { Migration } from '../definition.js';
import type { RouteSpec } from '../routes/types.js';
import type { Queryable } from './types.js';

/** Misuse of the migration list, or a step that failed; the message is one sentence fit for a terminal. */
export class MigrationError extends Error {
  override name = 'MigrationError';
}

/** Runs `fn` in one transaction (BEGIN … COMMIT, ROLLBACK on any error). */
export type RunTransaction = <T>(fn: (tx: Queryable) => Promise<T>) => Promise<T>;

/** What the runner needs of an app: its name (required with migrations: its steps are recorded under it) and its steps. */
export interface MigratingApp {
  readonly name?: string | undefined;
  readonly migrations?: readonly Migration[] | undefined;
  /** Its routes: the tables their cache policies read get the generation triggers (cache/triggers.ts). */
  readonly routes?: readonly Pick<RouteSpec, 'cache'>[] | undefined;
}

/** What a run did: the ids it applied, in order, and one line per applied step whose text has changed since. */
export interface MigrationReport {
  applied: number[];
  warnings: string[];
}

/** The same key as before the runner was generic, so old and new versions still exclude each other. */
const LOCK_KEY = 0x706f6f6c; // 'pool'
/** `poolgate_migrations.id` is a Postgres integer. */
const MAX_ID = 2_147_483_647;
/** A short identifier: it keys the app's rows in `poolgate_migrations` and shows in messages. */
const APP_NAME = /^[a-z][a-z0-9_-]{0,39}$/;

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

/**
 * One row per applied step, keyed by (app, id). `app` is '' on rows written before apps had names
 * (and by an older poolgate still running during a deploy): an app adopts such a row when its own
 * step has the same id and name. `checksum` is the sha256 (hex) of the step's SQL, NULL until a
 * row from before checksums is adopted.
 */
const MIGRATIONS_TABLE = `
  CREATE TABLE IF NOT EXISTS poolgate_migrations (
    app text NOT NULL DEFAULT '',
    id integer NOT NULL,
    name text NOT NULL,
    checksum text,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, id)
  )
`;

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
 * free (only rows from before apps had names, matched by id and name: an app's own migration 2 is
 * never touched).
 */
async function adoptLegacyTables(tx: Queryable, fresh: Set<string>): Promise<void> {
  for (const legacy of LEGACY_TABLES) {
    if (!fresh.has(legacy.to)) continue;
    const gone = await tx.query("DELETE FROM poolgate_migrations WHERE app = '' AND id = $1 AND name = $2", [legacy.id, legacy.name]);
    if (!gone.rowCount) continue;
    const legacyExists = await tx.query<{ ok: boolean }>('SELECT to_regclass($1) IS NOT NULL AS ok', [legacy.from]);
    if (legacyExists.rows[0]?.ok) {
      await tx.query(`INSERT INTO ${legacy.to} (${legacy.columns}) SELECT ${legacy.columns} FROM ${legacy.from} WHERE expires_at > now()`);
    }
  }
}

/**
 * A migrations table of the old shape (ids shared by every app, no checksums) gets the `app` and
 * `checksum` columns and the (app, id) key in place; its rows keep app '' until adopted.
 */
async function upgradeMigrationsTable(tx: Queryable): Promise<void> {
  const { rows } = await tx.query<{ has_app: boolean; pkey: string | null }>(`
    SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('poolgate_migrations') AND attname = 'app' AND NOT attisdropped) AS has_app,
      (SELECT conname FROM pg_constraint WHERE conrelid = to_regclass('poolgate_migrations') AND contype = 'p') AS pkey`);
  const found = rows[0];
  if (!found || found.has_app) return;
  const dropKey = found.pkey ? `DROP CONSTRAINT "${found.pkey.replaceAll('"', '""')}", ` : '';
  await tx.query(
    `ALTER TABLE poolgate_migrations ADD COLUMN app text NOT NULL DEFAULT '', ADD COLUMN checksum text, ${dropKey}ADD PRIMARY KEY (app, id)`,
  );
}

/** A step as `poolgate_migrations` records it. */
interface Recorded {
  name: string;
  checksum: string | null;
}

/** The steps recorded for `app`, and those from before apps had names, each by id. */
async function recordedSteps(tx: Queryable, app: string): Promise<{ own: Map<number, Recorded>; legacy: Map<number, Recorded> }> {
  const { rows } = await tx.query<Recorded & { app: string; id: number }>(
    "SELECT app, id, name, checksum FROM poolgate_migrations WHERE app = $1 OR app = ''",
    [app],
  );
  const own = new Map<number, Recorded>();
  const legacy = new Map<number, Recorded>();
  for (const r of rows) (r.app === app ? own : legacy).set(r.id, r);
  return { own, legacy };
}

/** A step to apply, with the checksum of its text. */
interface Pending {
  step: Migration;
  checksum: string;
}

/** The step being run, for the error that names it (the driver's error passes through untouched, so the core can retry it). */
interface Running {
  step?: Migration | undefined;
}

/**
 * Each pending step of `app`: applied and recorded when new; adopted (its checksum filled in) when
 * a row from before apps had names holds the same id and name; compared when already applied.
 */
async function applyPending(tx: Queryable, app: string, pending: readonly Pending[], running: Running): Promise<MigrationReport> {
  const { own, legacy } = await recordedSteps(tx, app);
  const report: MigrationReport = { applied: [], warnings: [] };
  const nextId = Math.max(...pending.map(({ step }) => step.id), ...own.keys()) + 1;
  for (const { step, checksum } of pending) {
    const mine = own.get(step.id);
    if (mine) {
      if (mine.checksum !== checksum) report.warnings.push(editedLine(app, step, nextId));
    } else if (legacy.get(step.id)?.name === step.name) {
      await tx.query("UPDATE poolgate_migrations SET app = $1, checksum = $3 WHERE app = '' AND id = $2", [app, step.id, checksum]);
    } else {
      running.step = step;
      await tx.query(step.sql);
      running.step = undefined;
      await tx.query('INSERT INTO poolgate_migrations (app, id, name, checksum) VALUES ($1, $2, $3, $4)', [
        app,
        step.id,
        step.name,
        checksum,
      ]);
      report.applied.push(step.id);
    }
  }
  return report;
}

/** The warning for an applied step whose text changed: it is not run again, so the edit never reaches the database. */
function editedLine(app: string, step: Migration, nextId: number): string {
  return `migration ${step.id} ("${step.name}") of app "${app}" was edited after it was applied and is not run again; restore its text and put the change in a new migration (id ${nextId})`;
}

/**
 * Applies poolgate's tables and the migrations of `app` not applied yet; reports the ids it
 * applied, in order, and a line for each applied step whose SQL has changed since. The app and
 * its list are checked before the database is touched.
 * @example const { applied, warnings } = await migrate((fn) => db.transaction(fn), app);
 */
export async function migrate(runTx: RunTransaction, app: MigratingApp): Promise<MigrationReport> {
  const steps = checkMigrations(app.migrations ?? []);
  const name = checkAppName(app.name, steps.length > 0) ?? '';
  const pending = await Promise.all(steps.map(async (step) => ({ step, checksum: await checksumOf(step.sql) })));
  const running: Running = {};
  try {
    return await runTx(async (tx) => {
      running.step = undefined; // the core may run this again (a serialization failure or deadlock)
      await tx.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
      const fresh = await missingOwnTables(tx);
      await tx.query(OWN_TABLES);
      await tx.query(MIGRATIONS_TABLE);
      await upgradeMigrationsTable(tx);
      await adoptLegacyTables(tx, fresh);
      const report = pending.length ? await applyPending(tx, name, pending, running) : { applied: [], warnings: [] };
      await cacheTriggers(tx, cachedTables(app.routes ?? []));
      return report;
    });
  } catch (err) {
    const step = running.step;
    if (!step) throw err;
    throw new MigrationError(`migration ${step.id} ("${step.name}") failed: ${describeSqlError(err)}; nothing of this run was applied`, {
      cause: err,
    });
  }
}

/** sha256 (hex) of a step's SQL, line endings taken as \n (a CRLF checkout is no edit). */
export async function checksumOf(sql: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(sql.replaceAll('\r\n', '\n')));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * The app's name when valid; a MigrationError when it is not a short identifier, or missing while
 * the app has migrations (an app without migrations needs none). defineApp runs the same check.
 */
export function checkAppName(name: unknown, hasMigrations: boolean): string | undefined {
  if (name === undefined) {
    if (!hasMigrations) return undefined;
    throw new MigrationError("an app with migrations needs a name (its migrations are recorded under it): defineApp({ name: 'notes', … })");
  }
  if (typeof name !== 'string' || !APP_NAME.test(name)) {
    const got = typeof name === 'string' ? JSON.stringify(name) : typeof name;
    throw new MigrationError(
      `app name must be a short identifier (a lowercase letter, then up to 39 lowercase letters, digits, "_" or "-"), got ${got}`,
    );
  }
  return name;
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

/** The read cache's generations table and triggers, where the app caches any route (none: nothing changes). */
async function cacheTriggers(tx: Queryable, tables: readonly string[]): Promise<void> {
  if (tables.length === 0) return;
  await tx.query(GENERATIONS_TABLE);
  await installTriggers(tx, tables).catch((err: unknown) => {
    throw isSqlError(err) ? err : new MigrationError((err as Error).message);
  });
}

const isSqlError = (err: unknown) => typeof (err as { code?: unknown }).code === 'string';

/** What went wrong in a step's SQL: the server's first line and its SQLSTATE (schema text, no secrets). */
function describeSqlError(err: unknown): string {
  const e = err as { message?: unknown; code?: unknown } | undefined;
  const message = typeof e?.message === 'string' && e.message ? (e.message.split('\n')[0] ?? e.message) : String(err);
  return typeof e?.code === 'string' ? `${message} (${e.code})` : message;
}
