/**
 * A database of the test's own: on real PostgreSQL (TEST_DATABASE_URL) a fresh database with a
 * unique name, dropped afterwards; without it, a fresh in-memory embedded Postgres (PGlite).
 * Suites that need several real backends (pg_stat_activity, pg_terminate_backend, role limits)
 * check `db.real` and skip with a reason on the embedded fallback.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { startEmbeddedPostgres } from '../../src/local/embedded.js';

export interface TestDatabase {
  /** Connection string of the fresh database. */
  url: string;
  /** Its name (on real PostgreSQL). */
  name: string;
  /** True on real PostgreSQL, false on the embedded fallback. */
  real: boolean;
  /** Runs SQL as the admin user on the test database (for inspection and fault injection). */
  admin(sql: string, params?: unknown[]): Promise<pg.QueryResult>;
  drop(): Promise<void>;
}

export const realPostgresUrl = process.env.TEST_DATABASE_URL || undefined;

/**
 * The name of a test (or describe) that only a real PostgreSQL can run: as given with
 * TEST_DATABASE_URL set; without it, with why PGlite cannot, and what would run it. The run's
 * closing line (test/reporters/skip-summary.ts) counts the skipped names that say TEST_DATABASE_URL.
 * @example it.skipIf(!realPostgresUrl)(onRealPostgres('cancels on the server', 'PGlite ignores CancelRequest'), …)
 */
export function onRealPostgres(name: string, whyNotPGlite: string): string {
  return realPostgresUrl ? name : `${name} — skipped: ${whyNotPGlite}; set TEST_DATABASE_URL to run it`;
}

/** Why the embedded PGlite cannot run a test (one backend for every connection, in this process). */
export const PGLITE_CANNOT = {
  serverView: 'PGlite has no backend per connection to watch in pg_stat_activity or end with pg_terminate_backend',
  secondSession: 'a second session must hold a lock or commit meanwhile, and PGlite has one backend for every connection',
  cancel: 'PGlite runs in this process: pg_sleep blocks the event loop, and pglite-socket ignores CancelRequest',
  lanes: 'PGlite gets no pipelined lanes (and no named statements): one backend serves every connection',
  databases: 'PGlite answers for any database name',
};

export async function createTestDatabase(prefix = 'poolgate_test'): Promise<TestDatabase> {
  if (!realPostgresUrl) {
    const embedded = await startEmbeddedPostgres();
    const adminPool = new pg.Pool({ connectionString: embedded.url, max: 1 });
    return {
      url: embedded.url,
      name: 'postgres',
      real: false,
      admin: (sql, params) => adminPool.query(sql, params as unknown[]),
      async drop() {
        await adminPool.end().catch(() => {});
        await embedded.stop();
      },
    };
  }
  const name = `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
  const server = new pg.Client({ connectionString: realPostgresUrl });
  await server.connect();
  try {
    await server.query(`CREATE DATABASE ${name}`);
  } finally {
    await server.end();
  }
  const url = new URL(realPostgresUrl);
  url.pathname = `/${name}`;
  const adminPool = new pg.Pool({ connectionString: url.toString(), max: 2, application_name: 'poolgate-test-admin' });
  adminPool.on('error', () => {});
  // pg-pool's end() resolves before its clients have closed, and stops listening to them: drop()'s
  // DROP DATABASE … WITH (FORCE) may end one mid-close (57P01), which would be an uncaught error.
  adminPool.on('connect', (client) => client.on('error', () => {}));
  return {
    url: url.toString(),
    name,
    real: true,
    admin: (sql, params) => adminPool.query(sql, params as unknown[]),
    async drop() {
      await adminPool.end().catch(() => {});
      const c = new pg.Client({ connectionString: realPostgresUrl });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}
