/**
 * The backends the database contract suite runs against, each built the way production builds it
 * (createPgPoolDatabase; createDatabase over the Neon connectors, the real `@neondatabase/serverless`
 * driver pointed at the local Neon proxy), each on a database of its own, plus a recording
 * observer. A backend states up front what it cannot do and why (`cannot`), so a case that needs
 * it is skipped by name with that reason instead of passing vacuously.
 */
import { Client as NeonClient, neon, neonConfig, Pool as NeonPool } from '@neondatabase/serverless';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createPgPoolDatabase } from '../../src/db/connectors/pg-pool.js';
import { neonHttpConnector, neonWsConnector, useLocalNeonProxy, type NeonDriver } from '../../src/db/connectors/neon.js';
import { createDatabase } from '../../src/db/core/database.js';
import type { ClientKind, Database, QueryObserver } from '../../src/db/types.js';
import { startEmbeddedPostgres } from '../../src/local/embedded.js';
import { startNeonProxy } from '../../src/local/neon-proxy/index.js';
import { createTestDatabase, realPostgresUrl } from '../helpers/db.js';
import { closedPortUrl as closedHttpPortUrl } from '../helpers/edge.js';
import { behindPgBouncerSkip, startPgBouncer, type PoolMode } from '../helpers/pgbouncer.js';

/** Abilities a case may need; a backend lacking one names the reason in `cannot`. */
export type Ability =
  /** transaction(): BEGIN … COMMIT on one session of the request's own. */
  | 'interactiveTransactions'
  /** Sessions that run at the same time on the server (overlapping transactions, a concurrent insert). */
  | 'concurrentSessions'
  /** pg_stat_activity and pg_terminate_backend per connection. */
  | 'serverView'
  /** A statement that takes seconds on the server while the client stays responsive. */
  | 'longStatements'
  /** A statement cut short by a deadline or an abort stops running on the server too. */
  | 'serverCancel';

export interface Backend {
  readonly name: string;
  readonly kind: ClientKind;
  /** query() runs on a session (acquired() is reported), not as a one-shot round trip. */
  readonly sessions: boolean;
  /** Read batches (and a `read` route's statements) go one-shot on this kind beside the sessions (pipelined lanes). */
  readonly readsOn?: ClientKind;
  /** Why the whole backend cannot run here; undefined when it can. */
  readonly unavailable?: string;
  readonly cannot: Partial<Record<Ability, string>>;
  start(): Promise<StartedBackend>;
}

export interface StartedBackend {
  readonly database: Database;
  /** SQL as the admin user on the backend's own database, with pg (never through the backend). */
  admin(sql: string, params?: unknown[]): Promise<pg.QueryResult>;
  /** A database of the same backend whose server is a port nothing listens on. */
  unreachable(): Database;
  /** Terminates leftover statements, closes the database, proxy and pools, drops the database. */
  stop(): Promise<void>;
}

export const POOL = {
  max: 4,
  min: 0,
  idleTimeoutMs: 10_000,
  connectionTimeoutMs: 2_000,
  acquireTimeoutMs: 2_000,
  queueMax: 100,
  statementTimeoutMs: 10_000,
  queryTimeoutMs: 11_000,
};

/**
 * Every backend's result-size bound (RESULT_MAX_ROWS, RESULT_MAX_BYTES), small enough to pass in a
 * case; the local Neon proxy's HTTP response cap is set to the same bytes (Neon HTTP's bound on size).
 */
export const RESULT_LIMITS = { maxRows: 1_000, maxBytes: 200_000 };

const pgDriver = { Pool: pg.Pool, Client: pg.Client };
const neonDriver: NeonDriver = { neon, Pool: NeonPool, Client: NeonClient };

/** Why the embedded PGlite cannot do some things (one backend, in this very process). */
const PGLITE = {
  concurrentSessions:
    'PGlite has a single backend: pglite-socket runs one connection at a time and holds it for a whole transaction, so nothing overlaps',
  serverView: 'PGlite has no per-connection backends to watch in pg_stat_activity or to pg_terminate_backend',
  longStatements:
    'PGlite runs in this process: pg_sleep blocks the event loop, so no deadline timer or abort can fire until it returns (and pglite-socket ignores CancelRequest)',
} satisfies Partial<Record<Ability, string>>;

const NO_REAL_POSTGRES = 'TEST_DATABASE_URL is not set (this backend needs a real PostgreSQL server)';

/** `reasons`, each saying that a real server would run the case (what the run's closing line counts). */
const onRealServer = (reasons: Partial<Record<Ability, string>>): Partial<Record<Ability, string>> =>
  Object.fromEntries(Object.entries(reasons).map(([ability, why]) => [ability, `${why}; set TEST_DATABASE_URL to run it`]));

/** `postgres://…@127.0.0.1:<port>/…` of a port that was free a moment ago and has nothing listening. */
export async function closedPortUrl(): Promise<string> {
  const { port } = new URL(await closedHttpPortUrl());
  return `postgres://postgres@127.0.0.1:${port}/contract_unreachable`;
}

const TABLE_DDL = 'CREATE TABLE contract_items (id int PRIMARY KEY, name text NOT NULL, n int)';

/** A fresh database (real when TEST_DATABASE_URL is set, else PGlite) with the suite's table; `stop()` undoes it all. */
async function freshDatabase(prefix: string) {
  const db = await createTestDatabase(prefix);
  try {
    await db.admin(TABLE_DDL);
  } catch (err) {
    await db.drop();
    throw err;
  }
  return db;
}

/** Ends every statement still running on the test database except the admin's own (leftovers of the gap cases). */
async function terminateLeftovers(admin: StartedBackend['admin']): Promise<void> {
  await admin(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name <> 'poolgate-test-admin'`,
  ).catch(() => {});
}

const appName = (what: string) => `poolgate-contract-${what}-${process.pid}-${randomBytes(3).toString('hex')}`;

function pgPoolBackend(name: string, embedded: boolean, pipelineLanes = 0, pgBouncer?: PoolMode): Backend {
  return {
    name,
    kind: 'pg-pool',
    sessions: true,
    ...(pipelineLanes > 0 ? { readsOn: 'pg-pipeline' as const } : {}),
    unavailable: pgBouncer ? behindPgBouncerSkip() : embedded || realPostgresUrl ? undefined : NO_REAL_POSTGRES,
    cannot: embedded ? PGLITE : {},
    async start() {
      const closed = await closedPortUrl();
      const make = (connectionString: string) =>
        // Reads stay on the lanes whatever this machine's load makes them measure (routing by time: mixed-latency.test.ts).
        createPgPoolDatabase(
          {
            ...POOL,
            pipelineLanes,
            pipelineSlowReadMs: 60_000,
            resultMaxRows: RESULT_LIMITS.maxRows,
            resultMaxBytes: RESULT_LIMITS.maxBytes,
            connectionString,
            applicationName: appName('pg-pool'),
          },
          pgDriver,
        );
      if (embedded) {
        const server = await startEmbeddedPostgres();
        const adminPool = new pg.Pool({ connectionString: server.url, max: 1 });
        adminPool.on('error', () => {});
        try {
          await adminPool.query(TABLE_DDL);
        } catch (err) {
          await adminPool.end();
          await server.stop();
          throw err;
        }
        const database = make(server.url);
        return {
          database,
          admin: (sql, params) => adminPool.query(sql, params),
          unreachable: () => make(closed),
          async stop() {
            await database.close().catch(() => {});
            await adminPool.end().catch(() => {});
            await server.stop();
          },
        };
      }
      const bouncer = pgBouncer ? await startPgBouncer(pgBouncer) : undefined;
      const db = await freshDatabase('poolgate_contract_pg').catch(async (err: unknown) => {
        await bouncer?.stop();
        throw err;
      });
      // Through PgBouncer: the backend's connections go to it; the admin's, straight to the server.
      const database = make(bouncer ? bouncer.url(db.url) : db.url);
      try {
        await database.warm(0); // the lanes, if any, answer from the first read on
      } catch (err) {
        await database.close().catch(() => {});
        await bouncer?.stop();
        await db.drop();
        throw err;
      }
      return {
        database,
        admin: (sql, params) => db.admin(sql, params),
        unreachable: () => make(closed),
        async stop() {
          await terminateLeftovers((sql, params) => db.admin(sql, params));
          await database.close().catch(() => {});
          await bouncer?.stop();
          await db.drop();
        },
      };
    },
  };
}

/**
 * A Neon backend through the local proxy. neonConfig is process-global (the driver reads its
 * fetch endpoint and WebSocket proxy from there), so start() points it at this backend's own
 * proxy; the backends' describe blocks run one after another, never side by side.
 */
function neonBackend(kind: 'neon-http' | 'neon-ws'): Backend {
  // Without a database the proxy serves PGlite, whose limits a real server would lift.
  const pglite = realPostgresUrl ? {} : onRealServer(PGLITE);
  const cannot: Partial<Record<Ability, string>> =
    kind === 'neon-http'
      ? {
          ...pglite,
          interactiveTransactions: 'neon-http is one-shot only: transaction() refuses with "This backend runs no interactive transactions"',
        }
      : { ...pglite };
  return {
    name: realPostgresUrl ? kind : `${kind} (on the embedded PGlite)`,
    kind,
    sessions: kind === 'neon-ws',
    cannot,
    async start() {
      const closed = await closedPortUrl();
      const db = await freshDatabase(`poolgate_contract_${kind.replace('-', '_')}`);
      const logs: string[] = [];
      const log = (line: string) => void logs.push(line);
      let proxy;
      try {
        proxy = await startNeonProxy({
          databaseUrls: [db.url, closed],
          port: 0,
          host: '127.0.0.1',
          log,
          maxResponseBytes: RESULT_LIMITS.maxBytes,
        });
      } catch (err) {
        await db.drop();
        throw err;
      }
      useLocalNeonProxy(neonConfig, proxy.url);
      const make = (connectionString: string) => {
        const options = { connectionString, driver: neonDriver, log, resultLimits: RESULT_LIMITS };
        return kind === 'neon-http'
          ? createDatabase({ oneShot: neonHttpConnector(options), oneShotTimeoutMs: 10_000 })
          : createDatabase({ sessions: neonWsConnector(options) });
      };
      const database = make(db.url);
      const started = proxy;
      return {
        database,
        admin: (sql, params) => db.admin(sql, params),
        unreachable: () => make(closed),
        async stop() {
          // Before the proxy closes: its pool waits for a checked-out connection still in pg_sleep.
          if (db.real) await terminateLeftovers((sql, params) => db.admin(sql, params));
          await database.close().catch(() => {});
          await started.close();
          await db.drop();
        },
      };
    },
  };
}

export const BACKENDS: readonly Backend[] = [
  pgPoolBackend('pg-pool on PostgreSQL', false),
  pgPoolBackend('pg-pool on PGlite', true),
  // Read statements and read batches on 2 pipelined lanes; the rest on the pool's other 2 connections.
  pgPoolBackend('pg-pool with pipelined reads on PostgreSQL', false, 2),
  // The same, with named statements on (the default), through PgBouncer 1.18 at its defaults.
  pgPoolBackend('pg-pool with pipelined reads through PgBouncer in transaction mode', false, 2, 'transaction'),
  pgPoolBackend('pg-pool with pipelined reads through PgBouncer in session mode', false, 2, 'session'),
  neonBackend('neon-http'),
  neonBackend('neon-ws'),
];

/** An observer that keeps everything it is told, for the per-request assertions. */
export interface Recording extends QueryObserver {
  readonly acquisitions: { waitMs: number; opened: boolean }[];
  readonly queries: { durationMs: number; statements: number | undefined }[];
  readonly servedBy: ClientKind[];
  readonly retries: number;
}

export function recorder(options: Pick<QueryObserver, 'deadline' | 'signal' | 'intent'> = {}): Recording {
  const acquisitions: Recording['acquisitions'] = [];
  const queries: Recording['queries'] = [];
  const servedBy: ClientKind[] = [];
  let retries = 0;
  return {
    ...options,
    acquisitions,
    queries,
    servedBy,
    get retries() {
      return retries;
    },
    acquired: (waitMs, opened) => void acquisitions.push({ waitMs, opened }),
    queried: (durationMs, statements) => void queries.push({ durationMs, statements }),
    served: (kind) => void servedBy.push(kind),
    retried: () => void retries++,
  };
}

/** A name no other statement carries, to find one statement in pg_stat_activity. */
export const marker = (what: string) => `contract_${what}_${randomBytes(4).toString('hex')}`;

/** Polls `check` until it returns truthy; throws after `timeoutMs`. */
export async function waitFor<T>(check: () => Promise<T>, what: string, timeoutMs = 3_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
