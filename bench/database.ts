/**
 * The bench's scratch databases, shared by every bench program (bench/run.ts, soak.ts, mixed.ts):
 * `<prefix><pid>` created on the server named, refused on the embedded PGlite, dropped at the end
 * (and by the next run when its process died), with the fitness schema and the demo data.
 */
import os from 'node:os';
import pg from 'pg';
import type { Queryable } from '../src/db/types.js';
import { migrate } from '../src/db/migrate.js';
import { MIGRATIONS } from '../src/fitness/migrations.js';
import { seed } from '../src/fitness/seed.js';
import type { PgbenchTarget } from './load.js';
import { dropStaleDatabases } from './stale.js';

/** The user the bench's writes go to, so the demo user's /summary stays the same size. */
export const WRITER_USER_ID = '00000000-0000-4000-8000-0000000000b1';
/** The shared server when neither BENCH_DATABASE_URL nor DATABASE_URL names one. */
export const DEFAULT_URL = 'postgres://postgres@127.0.0.1:5432/test';
const ADMIN_APP = 'poolgate-bench-admin';

/** BENCH_DATABASE_URL, else DATABASE_URL, else the shared server. */
export const sourceDatabaseUrl = (): string => process.env.BENCH_DATABASE_URL || process.env.DATABASE_URL || DEFAULT_URL;

/** host:port/db of a URL, never its user or password. */
export function describeUrl(u: URL): string {
  return `${u.hostname}:${u.port || '5432'}${u.pathname}`;
}

export class BenchError extends Error {
  override name = 'BenchError';
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

export interface BenchDatabase {
  /** Scratch databases of earlier runs that died without dropping theirs, dropped now. */
  staleDropped: string[];
  url: string;
  name: string;
  server: string;
  postgres: string;
  maxConnections: number;
  /** How the bench's connections to this server authenticate, in full and in a few words. */
  auth: string;
  authShort: string;
  /** Server settings a private instance copies, so that only auth and TLS differ. */
  settings: Record<string, string>;
  pgbench: PgbenchTarget;
  drop(): Promise<void>;
}

/** What the private instance copies from the shared server (as current_setting() shows them). */
const COPIED_SETTINGS = [
  'max_connections',
  'shared_buffers',
  'work_mem',
  'maintenance_work_mem',
  'effective_cache_size',
  'fsync',
  'synchronous_commit',
  'wal_level',
  'max_wal_size',
  'min_wal_size',
  'autovacuum',
  'jit',
  'huge_pages',
];

/**
 * How a connection made with `source` authenticates, as far as a client can tell: TLS from
 * pg_stat_ssl; no password in the URL and a connection accepted means trust (or peer/ident).
 */
async function describeAuth(client: pg.Client, source: URL): Promise<{ auth: string; authShort: string }> {
  const ssl = (
    await client.query<{ ssl: boolean; version: string | null; cipher: string | null }>(
      'SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()',
    )
  ).rows[0];
  const tls = ssl?.ssl ? `over ${ssl.version} (${ssl.cipher})` : 'no TLS';
  if (!source.password) return { auth: `trust (no password asked), ${tls}`, authShort: `trust, ${ssl?.ssl ? 'TLS' : 'no TLS'}` };
  const scram = await client
    .query<{ scram: boolean }>(`SELECT rolpassword LIKE 'SCRAM-SHA-256$%' AS scram FROM pg_authid WHERE rolname = current_user`)
    .then((r) => r.rows[0]?.scram)
    .catch(() => undefined);
  const method = scram === true ? 'SCRAM-SHA-256' : scram === false ? 'md5' : 'password';
  return {
    auth: `${method} password auth, ${tls}`,
    authShort: `${method === 'SCRAM-SHA-256' ? 'SCRAM' : method}, ${ssl?.ssl ? 'TLS' : 'no TLS'}`,
  };
}

export async function createBenchDatabase(
  sourceUrl: string,
  { prefix = 'poolgate_bench_', applicationName = ADMIN_APP }: { prefix?: string; applicationName?: string } = {},
): Promise<BenchDatabase> {
  const source = new URL(sourceUrl);
  const admin = new pg.Client({ connectionString: sourceUrl, application_name: applicationName, connectionTimeoutMillis: 5_000 });
  admin.on('error', () => {});
  try {
    await admin.connect();
  } catch (err) {
    throw new BenchError(`cannot reach PostgreSQL at ${describeUrl(source)} (${(err as Error).message}); set BENCH_DATABASE_URL`);
  }
  let version: string;
  let serverVersion: string;
  let maxConnections: number;
  let auth: { auth: string; authShort: string };
  let settings: Record<string, string>;
  try {
    version = (await admin.query<{ v: string }>('SELECT version() AS v')).rows[0]!.v;
    if (/PGlite|emscripten|wasm32/i.test(version)) {
      throw new BenchError(
        'refusing to run against the embedded PGlite. It is one single-threaded WebAssembly backend behind a socket: every ' +
          'connection shares it and statements queue, so pool sizes, connection counts and concurrency figures would mean ' +
          'nothing. Point BENCH_DATABASE_URL at a real PostgreSQL (e.g. postgres://postgres@127.0.0.1:5432/test).',
        2,
      );
    }
    serverVersion = (await admin.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v.split(' ')[0]!;
    maxConnections = Number((await admin.query<{ m: string }>("SELECT current_setting('max_connections') AS m")).rows[0]!.m);
    auth = await describeAuth(admin, source);
    const { rows } = await admin.query<{ name: string; value: string }>(
      'SELECT name, current_setting(name) AS value FROM pg_settings WHERE name = ANY($1)',
      [COPIED_SETTINGS],
    );
    settings = Object.fromEntries(rows.map((r) => [r.name, r.value]));
  } catch (err) {
    await admin.end().catch(() => {});
    throw err;
  }
  const name = `${prefix}${process.pid}`;
  const dropped = await dropStaleDatabases(admin, source, prefix);
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${name}`);
  } catch (err) {
    await admin.end().catch(() => {});
    throw new BenchError(
      `cannot create the scratch database ${name} on ${describeUrl(source)} (${(err as Error).message}); the role needs CREATEDB`,
    );
  }
  const url = new URL(sourceUrl);
  url.pathname = `/${name}`;
  let dropping: Promise<void> | undefined;
  return {
    staleDropped: dropped,
    url: url.toString(),
    name,
    server: `${source.hostname}:${source.port || '5432'}`,
    postgres: serverVersion,
    maxConnections,
    ...auth,
    settings,
    pgbench: {
      host: source.hostname.replace(/^\[(.*)\]$/, '$1'),
      port: Number(source.port || 5432),
      user: decodeURIComponent(source.username) || os.userInfo().username,
      password: source.password ? decodeURIComponent(source.password) : undefined,
      database: name,
    },
    drop: () =>
      (dropping ??= (async () => {
        try {
          await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        } finally {
          await admin.end().catch(() => {});
        }
      })()),
  };
}

/** Schema, demo user (reads) and a second user for the writes, so /summary stays the same size. */
export async function prepareSchema(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, application_name: ADMIN_APP });
  await client.connect();
  const q: Queryable = {
    async query<R>(text: string, params?: readonly unknown[]) {
      const r = await client.query(text, params as unknown[]);
      return { rows: r.rows as R[], rowCount: r.rowCount ?? null };
    },
  };
  const runTx = async <T>(fn: (tx: Queryable) => Promise<T>): Promise<T> => {
    await client.query('BEGIN');
    try {
      const result = await fn(q);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    }
  };
  try {
    await migrate(runTx, { name: 'fitness', migrations: MIGRATIONS });
    await runTx(seed);
    await client.query(`INSERT INTO users (id, email, name) VALUES ($1, 'bench-writer@poolgate.dev', 'Bench Writer')`, [WRITER_USER_ID]);
    await client.query(`INSERT INTO user_preferences (user_id, units) VALUES ($1, 'metric')`, [WRITER_USER_ID]);
  } finally {
    await client.end();
  }
}
