/**
 * `poolgate/functions`: the guide's API for plain Node code without Hono — Netlify functions,
 * scripts, queues. `createNodeClient()` builds the pg Pool backend from the same configuration as
 * the gateway (parseConfig: POOL_MAX, POOL_ACQUIRE_TIMEOUT_MS, REQUEST_TIMEOUT_MS … apply), and the
 * module-level functions (`executeQuery`, `executeTransaction`, `sql`, …) share ONE client, built
 * from process.env on first use: a warm function container reuses its connections. When it cannot
 * be built (DATABASE_URL unset), the call fails with one ConfigError line and the next tries again.
 *
 * Shutdown. A Netlify (AWS Lambda) function container is frozen between invocations and later
 * thrown away, usually without a signal: do not close the pool at the end of a handler (the next
 * warm invocation would connect again). Keep POOL_MAX small — every container holds its own pool —
 * and let POOL_IDLE_TIMEOUT_MS reap idle connections; a connection the server dropped while the
 * container was frozen is discarded, and a call that had not reached the database is retried.
 * `closePool()` is for scripts: call it when done so the process can exit. A long-running process
 * may opt in with `createNodeClient({ closeOnSignal: true })`: on SIGTERM/SIGINT, calls already on
 * a connection finish, waiting ones are refused (`shutting_down`), the pool ends, and the process
 * then dies of the signal as it would have without the listener.
 */
import { nodeLog } from './node-log.js';
import { neon, neonConfig, type NeonQueryFunction } from '@neondatabase/serverless';
import pg from 'pg';
import { createClient } from '../client.js';
import type {
  CallOptions,
  ClientSql,
  HealthReport,
  PoolgateClient,
  QueryKind,
  QueryOptions,
  SqlTag,
  Transaction,
  TransactionOptions,
} from '../client.js';
import { ConfigError, parseConfig, validateDatabaseUrl } from '../config.js';
import { useLocalNeonProxy } from '../db/connectors/neon.js';
import { createPgDatabase } from '../db/connectors/pg-pool.js';
import type { QueryResult, Row, Statement } from '../db/types.js';
import type { StatsSnapshot } from '../stats/registry.js';
import { nodeLoop } from './node-loop.js';

export { AppError, toAppError } from '../errors.js';
export { ConfigError } from '../config.js';
export { statement } from '../client.js';
export type * from '../client.js';

type Env = Record<string, string | undefined>;

export interface NodeClientOptions {
  /** A postgres:// URL; default: DATABASE_URL of `env`. */
  connectionString?: string;
  /** Where DATABASE_URL, POOL_*, REQUEST_TIMEOUT_MS and NEON_PROXY_URL are read from (default process.env). */
  env?: Env;
  /** Names this process in getStats() (default "node functions"). */
  scope?: string;
  /** Close the pool on SIGTERM/SIGINT, then die of the signal (long-running processes; see the module header). */
  closeOnSignal?: boolean;
}

/** The escape hatches: they bypass the core (no admission, breaker, retries or deadline). */
export interface NodeExtras {
  /** The pg.Pool under the client (shared with it: do not end it, call close()). */
  getPgPool(): pg.Pool;
  /** A Neon HTTP `sql` function for the same database (NEON_PROXY_URL: through a local Neon proxy). */
  getNeonClient(): NeonQueryFunction<false, false>;
}

export type NodeClient = PoolgateClient & NodeExtras;

/** The connection string to use, checked; one ConfigError line when there is none. */
function connectionStringOf(options: NodeClientOptions, env: Env): string {
  if (options.connectionString !== undefined) return validateDatabaseUrl('connectionString', options.connectionString);
  const url = env.DATABASE_URL?.trim();
  if (!url) throw new ConfigError('DATABASE_URL', 'is required (a postgres:// URL; or pass createNodeClient({ connectionString }))');
  return url;
}

/** A Neon HTTP function for `connectionString`, pointed at NEON_PROXY_URL when it is set (development). */
function neonClientFor(connectionString: string, env: Env): NeonQueryFunction<false, false> {
  const proxyUrl = env.NEON_PROXY_URL?.trim();
  if (proxyUrl) useLocalNeonProxy(neonConfig, proxyUrl);
  return neon(connectionString);
}

/** On SIGTERM/SIGINT: `close`, then die of the signal unless someone else listens for it. Returns the remover. */
function closeOnSignals(close: () => Promise<void>): () => void {
  const handlers = (['SIGTERM', 'SIGINT'] as const).map((signal) => {
    const die = () => {
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    return [signal, () => void close().then(die, die)] as const;
  });
  for (const [signal, handler] of handlers) process.once(signal, handler);
  return () => {
    for (const [signal, handler] of handlers) process.removeListener(signal, handler);
  };
}

/**
 * A client over a pg Pool of its own, configured like the gateway (POOL_MAX, POOL_ACQUIRE_TIMEOUT_MS,
 * STATEMENT_TIMEOUT_MS …; REQUEST_TIMEOUT_MS is every call's default deadline).
 * @example
 * import { createNodeClient } from 'poolgate/functions';
 * const db = createNodeClient({ env: { ...process.env, POOL_MAX: '4' } });
 * const { rows } = await db.executeQuery('SELECT * FROM users WHERE id = $1', [id], 'read');
 * await db.close();
 */
export function createNodeClient(options: NodeClientOptions = {}): NodeClient {
  const env = options.env ?? process.env;
  const connectionString = connectionStringOf(options, env);
  const config = parseConfig({ ...env, DATABASE_URL: connectionString });
  // On stderr: a library's lines stay out of the application's own stdout.
  const log =
    config.logLevel === 'silent'
      ? undefined
      : nodeLog({ level: config.logLevel, format: config.logFormat, sink: (line) => console.warn(line) });
  const database = createPgDatabase(
    { ...config.pool, connectionString, requestTimeoutMs: config.requestTimeoutMs },
    { urls: config.replicaUrls, ...config.replicas },
    { Pool: pg.Pool, Client: pg.Client, log, loop: nodeLoop },
  );
  let neonClient: NeonQueryFunction<false, false> | undefined;
  let removeSignals: (() => void) | undefined;
  const client = createClient(database, {
    scope: options.scope ?? 'node functions',
    timeoutMs: config.requestTimeoutMs,
    onClose: () => removeSignals?.(),
    extras: {
      getPgPool: () => database.pool,
      getNeonClient: () => (neonClient ??= neonClientFor(connectionString, env)),
    } satisfies NodeExtras,
  });
  if (options.closeOnSignal) removeSignals = closeOnSignals(() => client.close());
  return client;
}

let defaultClient: NodeClient | undefined;
let closingDefault: Promise<void> | undefined;

/** The process's one client, built from process.env on first use; a failed build is tried again next call. */
const current = (): NodeClient => (defaultClient ??= createNodeClient({ scope: 'node functions (default client)' }));

/** executeQuery on the default client (see PoolgateClient.executeQuery). */
export async function executeQuery<R = Row>(
  text: string,
  params?: readonly unknown[],
  kind?: QueryKind | QueryOptions,
): Promise<QueryResult<R>> {
  return current().executeQuery<R>(text, params, kind);
}

/** executeTransaction on the default client: BEGIN … COMMIT done for you; `fn` may run again on 40001/40P01. */
export async function executeTransaction<T>(fn: (tx: Transaction) => Promise<T>, options?: TransactionOptions): Promise<T> {
  return current().executeTransaction(fn, options);
}

/** readBatch on the default client. */
export async function readBatch(statements: readonly Statement[], options?: CallOptions): Promise<QueryResult[]> {
  return current().readBatch(statements, options);
}

const lazyTag =
  (pick: (client: NodeClient) => SqlTag): SqlTag =>
  async <R = Row>(strings: TemplateStringsArray, ...values: unknown[]) =>
    pick(current())<R>(strings, ...values);

/** The `sql` tag of the default client: sql`SELECT * FROM users WHERE id = ${id}`; `sql.read` for reads. */
export const sql: ClientSql = Object.assign(
  lazyTag((c) => c.sql),
  { read: lazyTag((c) => c.sql.read) },
);

/** healthCheck on the default client (rejects with the ConfigError when it cannot be built). */
export async function healthCheck(timeoutMs?: number): Promise<HealthReport> {
  return current().healthCheck(timeoutMs);
}

/** getStats of the default client (throws the ConfigError when it cannot be built). */
export const getStats = (): StatsSnapshot => current().getStats();

/** The default client's pg.Pool (an escape hatch: no admission, breaker or deadline). */
export const getPgPool = (): pg.Pool => current().getPgPool();

/** A Neon HTTP `sql` function for DATABASE_URL (an escape hatch: no breaker or deadline). */
export const getNeonClient = (): NeonQueryFunction<false, false> => current().getNeonClient();

/**
 * Ends the default client's pool, for scripts (not at the end of a function handler). A second
 * call while it closes returns the same promise; a later call builds a new client.
 */
export function closePool(): Promise<void> {
  if (defaultClient) {
    closingDefault = defaultClient.close();
    defaultClient = undefined;
  }
  return closingDefault ?? Promise.resolve();
}
