/**
 * poolgate without Hono: the connection-pooling guide's API (executeQuery, executeTransaction, the
 * `sql` tag, healthCheck, getStats) kept, and made safe by running every call through the one core
 * — admission with a bounded wait, the breaker, retries judged by the call's intent, a deadline
 * that cancels on the server. Each call is one unit of work with an observer of its own, recorded
 * in the stats registry under its call type and kind (`executeQuery read`), as a route would be.
 * Runtime-neutral: src/runtime/functions.ts (Node) and edge-functions.ts build the Database.
 *
 * Errors:
 * - `AppError` (src/errors.ts), with a stable `code`, for poolgate's own decisions and for a
 *   database that could not be used: `pool_exhausted` (no connection within
 *   POOL_ACQUIRE_TIMEOUT_MS), `overloaded` (the wait queue is full), `timeout` (the call's deadline
 *   or the server's statement_timeout passed; the statement was cancelled), `client_closed` (the
 *   call's signal aborted), `circuit_open` (the database kept failing), `database_unavailable`
 *   (refused, unreachable, the connection lost — the driver's error is its `cause`, and its
 *   message names no host or secret), `shutting_down` (the client was closed), and
 *   `statement_refused` (500) for a transaction-control statement (BEGIN, COMMIT …) or several
 *   statements in one text, refused the same way on every path (src/db/core/statement-kind.ts);
 * - the driver's own error for what the database said about the SQL, with its SQLSTATE in `code`
 *   (`23505`, `40001` once the retries are spent, …) and `constraint`, `detail`;
 * - a TypeError for other misuse (a `sql` call without a template, a tx used after its callback).
 * `toAppError(err)` maps any of them onto one AppError (status, code), e.g. to answer an HTTP request.
 */
import { formatToken, laterLsn } from './db/consistency.js';
import type { Database, Db, QueryResult, Queryable, Row, Statement, TxOptions } from './db/types.js';
import { AppError, isConnectionError, isTimeoutError, toAppError } from './errors.js';
import { newMetrics, type RequestMetrics } from './middleware/conn-stats.js';
import { now } from './stats/clock.js';
import { StatsRegistry, type StatsSnapshot } from './stats/registry.js';

/** `read`: no effect, so it may run again after a lost connection. `write` (default): never retried blindly. */
export type QueryKind = 'read' | 'write';

export interface CallOptions {
  /** This call's deadline, counted from its start (default: the client's `timeoutMs`). */
  timeoutMs?: number;
  /** Aborting it cancels the call's database work at once (`client_closed`, or the signal's reason when that is an AppError). */
  signal?: AbortSignal;
  /**
   * Read-your-writes with read replicas (DATABASE_REPLICA_URLS): a token a write returned
   * (`client.consistencyToken()`, or a Poolgate-Consistency header); the read is served only where
   * that write is seen. Malformed: `invalid_consistency_token`.
   */
  consistency?: string;
}

export interface QueryOptions extends CallOptions {
  kind?: QueryKind;
}

export interface TransactionOptions extends TxOptions, CallOptions {}

/** A tagged template: each `${value}` travels as a parameter ($1, $2 …), never inside the SQL text. */
export type SqlTag = <R = Row>(strings: TemplateStringsArray, ...values: unknown[]) => Promise<R[]>;

/** `sql` runs as a write (never retried blindly); `sql.read` as a read. */
export type ClientSql = SqlTag & { readonly read: SqlTag };

/** What executeTransaction's callback gets: statements on the transaction's one connection. */
export interface Transaction extends Queryable {
  sql: SqlTag;
}

export interface HealthReport {
  healthy: boolean;
  latencyMs: number;
  /** A stable reason code when not healthy (`database_unavailable`, `timeout`, `circuit_open` …). */
  reason?: string;
}

export interface PoolgateClient {
  /**
   * One statement; values travel in `params` ($1, $2 …). `kind` (or `{ kind, timeoutMs, signal }`)
   * says whether it may be retried after a lost connection: `'read'` may, `'write'` (default) may not.
   */
  executeQuery<R = Row>(text: string, params?: readonly unknown[], kind?: QueryKind | QueryOptions): Promise<QueryResult<R>>;
  /** sql`SELECT * FROM users WHERE id = ${id}` → rows; `sql.read` for reads that may be retried. */
  readonly sql: ClientSql;
  /**
   * BEGIN … COMMIT around `fn` on one connection, ROLLBACK on any error. On a serialization
   * failure or deadlock (40001, 40P01) the WHOLE transaction runs again, so `fn` must be
   * re-runnable: no side effects outside the database (send the e-mail after it returns). Do not
   * issue BEGIN, COMMIT or ROLLBACK in `fn`: they are refused (`statement_refused`).
   */
  executeTransaction<T>(fn: (tx: Transaction) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /** Independent reads from one snapshot (one round trip on Neon HTTP; REPEATABLE READ READ ONLY on a pool). */
  readBatch(statements: readonly Statement[], options?: CallOptions): Promise<QueryResult[]>;
  /** A cheap round trip within `timeoutMs` (default 2 s); never throws. */
  healthCheck(timeoutMs?: number): Promise<HealthReport>;
  /** Pool figures, breakers, and one entry per call type and kind (`method: 'executeQuery', route: 'read'`). */
  getStats(): StatsSnapshot;
  /** Ends the pool once; a second call returns the same promise. Later calls fail with `shutting_down`. */
  close(): Promise<void>;
  /**
   * With read replicas: the consistency token of this client's latest write (`lsn=…`), to pass as
   * `{ consistency }` to reads that must see it, or to hand to another process. Undefined before any.
   */
  consistencyToken(): string | undefined;
}

export interface ClientOptions<E extends object = object> {
  /** Names this process (or isolate) in the stats. */
  scope: string;
  /** Every call's deadline unless it sets its own (default 15 s). */
  timeoutMs?: number;
  /** Share one with a Hono app to see both in one /stats; default: a registry of this client's own. */
  registry?: StatsRegistry;
  /** Runtime-specific escape hatches merged into the client (getPgPool, getNeonClient). */
  extras?: E;
  /** Runs once, when close() is first called (e.g. to remove signal listeners). */
  onClose?: () => void;
}

const DEFAULT_TIMEOUT_MS = 15_000;
const HEALTH_TIMEOUT_MS = 2_000;
const INTENT = { read: 'read', write: 'transactional' } as const;

function kindOf(kind: unknown): QueryKind {
  if (kind === 'read' || kind === 'write') return kind;
  throw new TypeError(`kind must be 'read' (may run again after a lost connection) or 'write' (the default), got ${JSON.stringify(kind)}.`);
}

/**
 * The parameterised statement of a tagged template: `${value}` becomes $1, $2 …
 * @example readBatch([statement`SELECT * FROM users WHERE id = ${id}`, statement`SELECT count(*) FROM workouts`])
 */
export function statement(strings: TemplateStringsArray, ...values: unknown[]): Statement {
  if (!Array.isArray(strings) || !Array.isArray((strings as { raw?: unknown }).raw)) {
    throw new TypeError(
      'sql is a tagged template (sql`SELECT … WHERE id = ${id}`); a plain string would carry its values inside the SQL text. ' +
        'For text with $1 placeholders use executeQuery(text, params).',
    );
  }
  const text = strings.reduce((sql, part, i) => `${sql}$${i}${part}`);
  return { text, params: values };
}

function sqlTag(run: (s: Statement) => Promise<QueryResult>): SqlTag {
  return async <R>(strings: TemplateStringsArray, ...values: unknown[]) => (await run(statement(strings, ...values))).rows as R[];
}

/**
 * A transaction's handle for one attempt. It refuses work once the attempt is over: a statement
 * sent later would run on a connection that is back in the pool, maybe inside someone else's work.
 */
function openTransaction(q: Queryable): { tx: Transaction; end(): void } {
  let ended = false;
  const query = <R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> => {
    if (ended) return Promise.reject(new TypeError('This transaction has ended: use its tx only inside the executeTransaction callback.'));
    return q.query<R>(text, params);
  };
  const tx = { query, sql: sqlTag((s) => query(s.text, s.params)) };
  return { tx, end: () => void (ended = true) };
}

/** The state every call shares: the database, the stats, the default deadline, whether closed. */
class Calls {
  readonly registry: StatsRegistry;
  readonly #database: Database;
  readonly #timeoutMs: number;
  readonly #onClose: (() => void) | undefined;
  #closing: Promise<void> | undefined;
  /** The primary's position after this client's latest write (replicas only). */
  latestPosition: string | undefined;

  constructor(database: Database, options: ClientOptions) {
    this.#database = database;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#onClose = options.onClose;
    this.registry =
      options.registry ??
      new StatsRegistry({
        scope: options.scope,
        pool: () => database.stats(),
        breakers: () => database.breakers(),
        replicas: () => database.replicaFigures?.(),
      });
  }

  /** One unit of work: its own observer (deadline, signal, intent), its own Db, one stats sample. */
  async run<T>(call: string, kind: QueryKind, options: CallOptions, work: (db: Db) => Promise<T>): Promise<T> {
    if (this.#closing) throw new AppError(503, 'shutting_down', 'This poolgate client is closed; create a new one.');
    const metrics = newMetrics(options.timeoutMs ?? this.#timeoutMs);
    metrics.intent = INTENT[kind];
    metrics.signal = options.signal;
    metrics.tokenSent = () => options.consistency;
    const db = this.#database.forRequest(metrics);
    let status = 200;
    try {
      return await work(db);
    } catch (err) {
      const appErr = toAppError(err);
      status = appErr.status;
      throw isConnectionError(err) || isTimeoutError(err) ? appErr : err;
    } finally {
      // A per-call WebSocket pool (the edge's transactions) is ended before the call returns.
      await db.end?.()?.catch(() => {});
      this.latestPosition = laterLsn(this.latestPosition, metrics.position);
      this.#record(call, kind, status, metrics);
    }
  }

  async health(timeoutMs: number): Promise<HealthReport> {
    if (this.#closing) return { healthy: false, latencyMs: 0, reason: 'shutting_down' };
    const report = await this.#database.ping(timeoutMs);
    const latencyMs = Math.round(report.latencyMs * 1000) / 1000;
    return report.ok ? { healthy: true, latencyMs } : { healthy: false, latencyMs, reason: report.reason };
  }

  close(): Promise<void> {
    if (!this.#closing) this.#onClose?.();
    return (this.#closing ??= this.#database.close());
  }

  #record(call: string, kind: QueryKind, status: number, m: RequestMetrics): void {
    this.registry.record({
      method: call,
      route: kind,
      status,
      totalMs: now() - m.startedAt,
      dbMs: m.dbMs,
      acquireMs: m.acquireMs,
      queries: m.queries,
      client: m.client,
      retries: m.retries,
      server: m.server,
    });
  }
}

function queryOptions(kind: QueryKind | QueryOptions | undefined): CallOptions & { kind: QueryKind } {
  const options: QueryOptions = typeof kind === 'object' && kind !== null ? kind : { kind };
  return { ...options, kind: kindOf(options.kind ?? 'write') };
}

/**
 * The guide's API over any poolgate Database (pg Pool on Node, Neon at the edge).
 * @example
 * const client = createClient(database, { scope: 'billing script', timeoutMs: 10_000 });
 * const { rows } = await client.executeQuery('SELECT * FROM users WHERE id = $1', [id], 'read');
 * const users = await client.sql.read`SELECT * FROM users WHERE active = ${true}`;
 * const order = await client.executeTransaction(async (tx) => {
 *   const [o] = await tx.sql<{ id: number }>`INSERT INTO orders (user_id) VALUES (${id}) RETURNING id`;
 *   await tx.query('INSERT INTO order_lines (order_id, sku) VALUES ($1, $2)', [o!.id, sku]);
 *   return o;
 * });
 * try { await client.executeQuery('UPDATE …', params) } catch (err) {
 *   if (err instanceof AppError && err.code === 'pool_exhausted') { … retry later … }
 * }
 */
export function createClient<E extends object = object>(database: Database, options: ClientOptions<E>): PoolgateClient & E {
  const calls = new Calls(database, options);
  const query = (call: string, kind: QueryKind, o: CallOptions) => (s: Statement) =>
    calls.run(call, kind, o, (db) => db.query(s.text, s.params));
  const client: PoolgateClient = {
    executeQuery: async <R>(text: string, params?: readonly unknown[], kind?: QueryKind | QueryOptions) => {
      const o = queryOptions(kind);
      return (await query('executeQuery', o.kind, o)({ text, params })) as QueryResult<R>;
    },
    sql: Object.assign(sqlTag(query('sql', 'write', {})), { read: sqlTag(query('sql', 'read', {})) }),
    executeTransaction: (fn, { timeoutMs, signal, ...tx } = {}) =>
      calls.run('executeTransaction', tx.readOnly ? 'read' : 'write', { timeoutMs, signal }, (db) =>
        db.transaction(async (q) => {
          const attempt = openTransaction(q);
          try {
            return await fn(attempt.tx);
          } finally {
            attempt.end();
          }
        }, tx),
      ),
    readBatch: (statements, o = {}) => calls.run('readBatch', 'read', o, (db) => db.readBatch(statements)),
    healthCheck: (timeoutMs = HEALTH_TIMEOUT_MS) => calls.health(timeoutMs),
    getStats: () => calls.registry.snapshot(),
    close: () => calls.close(),
    consistencyToken: () => (calls.latestPosition === undefined ? undefined : formatToken({ lsn: calls.latestPosition })),
  };
  return { ...options.extras, ...client } as PoolgateClient & E;
}
