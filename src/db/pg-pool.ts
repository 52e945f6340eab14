/**
 * The Node backend: a `pg` Pool behind a bounded gate, with the guide's defaults and the parts
 * the guide forgot: `min` connections actually opened (pg's `min` only stops the idle reaper),
 * an 'error' listener on the pool and on every client (a terminated backend must never crash the
 * process), connections that failed mid-use destroyed rather than reused, a breaker on
 * connecting, retries only where src/resilience/retry.ts allows them, and request deadlines that
 * cancel the statement on the server. The `pg` module is passed in: this file imports no driver.
 */
import type pg from 'pg';
import type { PoolConfig } from '../config.js';
import { AppError, describeError, isConnectionError } from '../errors.js';
import { createBreaker, type Breaker } from '../resilience/breaker.js';
import { Gate } from '../resilience/gate.js';
import { RetryBudget, withRetry } from '../resilience/retry.js';
import { now } from '../stats/clock.js';
import { beginStatement, instrument } from './sql.js';
import type { Database, Db, PoolStats, QueryObserver, QueryResult, Queryable, ReadyReport, Statement, TxOptions } from './types.js';

export interface PgPoolDatabaseOptions extends PoolConfig {
  connectionString: string;
  /** Requests' deadline; the session statement_timeout is never longer. */
  requestTimeoutMs?: number;
}

/** How far past the session statement timeout a transaction must already be before it pays for SET LOCAL. */
const LATE_MS = 500;

/**
 * How long past the deadline the out-of-band cancel gets to end the statement before the
 * connection is cut on our side. The cancel travels over the network too: when that network is
 * silent (no reset, nothing answers), only the cut ends the request.
 */
const CANCEL_GRACE_MS = 1_000;

export interface PgPoolDeps {
  Pool: new (config: pg.PoolConfig) => pg.Pool;
  /** Used for out-of-band cancels (pg_cancel_backend) when a deadline passes mid-statement. */
  Client?: new (config: pg.ClientConfig) => pg.Client;
  log?: (line: string) => void;
  breaker?: Breaker;
  budget?: RetryBudget;
}

export interface PgPoolDatabase extends Database {
  /** Opens `min` connections now, so the first requests do not pay for connecting. */
  warm(): Promise<void>;
  /** The underlying pool, for tests and the shutdown path. */
  readonly pool: pg.Pool;
}

const NO_OBSERVER: QueryObserver = { acquired() {}, queried() {}, served() {} };
const READ_ONLY_SQL = /^\s*(SELECT|WITH|VALUES|SHOW|TABLE)\b/i;
const WRITES = /\b(INSERT|UPDATE|DELETE|MERGE|CREATE|ALTER|DROP|TRUNCATE|LOCK|FOR\s+UPDATE|FOR\s+SHARE|nextval|setval|pg_advisory)\b/i;

/** A deadline tighter than the statement timeout cuts it; an expired one fails at once. */
function remainingMs(observer: QueryObserver): number | undefined {
  if (observer.deadline === undefined) return undefined;
  const left = observer.deadline - now();
  if (left <= 0) throw new AppError(504, 'timeout', 'The request ran out of time before reaching the database.');
  return left;
}

/**
 * @example
 * const db = createPgPoolDatabase({ ...config.pool, connectionString }, { Pool: pg.Pool, Client: pg.Client });
 * await db.warm();
 * const rows = (await db.forRequest(observer).query('SELECT 1 AS x')).rows;
 */
export function createPgPoolDatabase(options: PgPoolDatabaseOptions, deps: PgPoolDeps): PgPoolDatabase {
  const log = deps.log ?? (() => {});
  // No statement may outlive the request that runs it: a startup parameter, so it costs no round trip.
  const sessionStatementTimeoutMs = Math.min(options.statementTimeoutMs, options.requestTimeoutMs ?? Infinity);
  const pool = new deps.Pool({
    connectionString: options.connectionString,
    max: options.max,
    min: options.min,
    idleTimeoutMillis: options.idleTimeoutMs,
    connectionTimeoutMillis: options.connectionTimeoutMs,
    statement_timeout: sessionStatementTimeoutMs,
    query_timeout: options.queryTimeoutMs,
    application_name: options.applicationName,
    keepAlive: true,
  });
  const gate = new Gate({ permits: options.max, queueMax: options.queueMax, timeoutMs: options.acquireTimeoutMs });
  // 53300 while the pool still holds live connections says "no room for one more of ours", not
  // "the server is down": opening the breaker would shut out requests those connections can serve.
  const atConnectionLimit = (err: unknown) => (err as { code?: unknown } | undefined)?.code === '53300' && pool.totalCount > 0;
  const breaker = deps.breaker ?? createBreaker('postgres', { isFailure: (err) => isConnectionError(err) && !atConnectionLimit(err) });
  const budget = deps.budget ?? new RetryBudget();

  const fresh = new WeakSet<pg.PoolClient>();
  let openedCount = 0;
  let closedCount = 0;
  let acquisitionCount = 0;
  let openedOnAcquireCount = 0;
  let errorCount = 0;
  let cancelledCount = 0;

  pool.on('connect', (client) => {
    openedCount++;
    fresh.add(client);
    // Stays for the client's whole life: pg-pool listens only while a client is idle, so an
    // error on a checked-out client (backend terminated mid-request) would otherwise be unhandled.
    client.on('error', (err) => {
      errorCount++;
      log(`poolgate: db client error (${describeError(err)}); the connection will be discarded`);
    });
  });
  pool.on('remove', () => {
    closedCount++;
  });
  // Required (pg-pool emits 'error' for idle clients and an unheard emit would crash the process),
  // but silent: the client's own listener above has already counted and logged the same error.
  pool.on('error', () => {});

  interface Lease {
    client: pg.PoolClient;
    release(destroy: boolean): void;
  }

  async function checkout(observer: QueryObserver, timeoutMs?: number, counted = true): Promise<Lease> {
    const started = now();
    const left = remainingMs(observer);
    const releasePermit = await gate.acquire(Math.min(timeoutMs ?? options.acquireTimeoutMs, left ?? Infinity));
    let client: pg.PoolClient;
    try {
      client = await withRetry(() => breaker.execute(() => pool.connect()), {
        scope: 'connect',
        budget,
        deadline: observer.deadline,
        now,
        onRetry: () => observer.retried?.(),
      });
    } catch (err) {
      releasePermit();
      throw err;
    }
    const opened = fresh.delete(client);
    if (counted && !observer.internal) {
      acquisitionCount++;
      if (opened) openedOnAcquireCount++;
    }
    observer.acquired(now() - started, opened);
    let done = false;
    return {
      client,
      release(destroy) {
        if (done) return;
        done = true;
        client.release(destroy || undefined);
        releasePermit();
      },
    };
  }

  /** Broken connections and client-side timeouts (the server may still be busy) are not reused. */
  const mustDestroy = (err: unknown) =>
    isConnectionError(err) || /Query read timeout/.test(String((err as { message?: unknown } | undefined)?.message));

  /**
   * Enforces the request's deadline on the server without a round trip on the fast path: if the
   * lease is still held when the deadline passes, a separate connection sends pg_cancel_backend
   * for this backend, so the running statement fails with 57014. `disarm()` says whether that
   * happened; such a connection is then destroyed rather than reused, so a cancel that lands late
   * can never hit another request's statement.
   */
  function guardDeadline(client: pg.PoolClient, observer: QueryObserver): { disarm(): boolean } {
    const left = remainingMs(observer);
    const pid = (client as unknown as { processID?: number }).processID;
    if (left === undefined || !deps.Client || !pid) return { disarm: () => false };
    const Client = deps.Client;
    let fired = false;
    let cut: ReturnType<typeof setTimeout> | undefined;
    const timer = setTimeout(() => {
      fired = true;
      cancelledCount++;
      // Still held CANCEL_GRACE_MS later: the cancel did not get through. Cutting the socket fails
      // the pending statement as a lost connection (the request ends; the lease is destroyed).
      cut = setTimeout(
        () => (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy(),
        CANCEL_GRACE_MS,
      );
      (cut as { unref?: () => void }).unref?.();
      const canceller = new Client({
        connectionString: options.connectionString,
        application_name: `${options.applicationName}-cancel`,
        connectionTimeoutMillis: 2_000,
      });
      canceller.on('error', () => {});
      canceller
        .connect()
        .then(() => canceller.query('SELECT pg_cancel_backend($1)', [pid]))
        .catch((err) => log(`poolgate: could not cancel a statement past its deadline (${describeError(err)})`))
        .finally(() => canceller.end().catch(() => {}));
    }, left);
    (timer as { unref?: () => void }).unref?.();
    return {
      disarm() {
        clearTimeout(timer);
        clearTimeout(cut);
        return fired;
      },
    };
  }

  async function transactionOnce<T>(observer: QueryObserver, fn: (tx: Queryable) => Promise<T>, opts: TxOptions): Promise<T> {
    const lease = await checkout(observer);
    const tx = instrument(lease.client, observer);
    let destroy = false;
    let guard: { disarm(): boolean } = { disarm: () => false };
    try {
      guard = guardDeadline(lease.client, observer);
      await tx.query(beginStatement(opts));
      const left = remainingMs(observer);
      if (left !== undefined && left < sessionStatementTimeoutMs - LATE_MS) {
        // Already late (a long wait for a connection): the server enforces what is left, too.
        await tx.query(`SET LOCAL statement_timeout = ${Math.max(1, Math.floor(left))}`);
      }
      const result = await fn(tx);
      await tx.query('COMMIT');
      return result;
    } catch (err) {
      destroy = mustDestroy(err);
      if (!destroy) {
        try {
          await lease.client.query('ROLLBACK');
        } catch {
          destroy = true;
        }
      }
      throw err;
    } finally {
      const cancelled = guard.disarm();
      lease.release(destroy || cancelled);
    }
  }

  function transaction<T>(observer: QueryObserver, fn: (tx: Queryable) => Promise<T>, opts: TxOptions = {}): Promise<T> {
    // A whole transaction may run again on 40001/40P01: the server rolled it back, nothing applied.
    return withRetry(() => transactionOnce(observer, fn, opts), {
      scope: 'transaction',
      budget,
      deadline: observer.deadline,
      now,
      onRetry: () => observer.retried?.(),
    });
  }

  async function queryOnce<R>(observer: QueryObserver, text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
    const lease = await checkout(observer);
    let destroy = false;
    let guard: { disarm(): boolean } = { disarm: () => false };
    try {
      guard = guardDeadline(lease.client, observer);
      return await instrument(lease.client, observer).query<R>(text, params);
    } catch (err) {
      destroy = mustDestroy(err);
      throw err;
    } finally {
      const cancelled = guard.disarm();
      lease.release(destroy || cancelled);
    }
  }

  function forRequest(observer: QueryObserver): Db {
    let servedReported = false;
    const served = () => {
      if (!servedReported) {
        servedReported = true;
        observer.served('pg-pool');
      }
    };
    return {
      kind: 'pg-pool',
      query<R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
        served();
        const readOnly = READ_ONLY_SQL.test(text) && !WRITES.test(text);
        if (!readOnly) return queryOnce<R>(observer, text, params);
        return withRetry(() => queryOnce<R>(observer, text, params), {
          scope: 'read',
          budget,
          deadline: observer.deadline,
          now,
          onRetry: () => observer.retried?.(),
        });
      },
      readBatch(statements: readonly Statement[]) {
        served();
        return transaction(
          observer,
          async (tx) => {
            const results: QueryResult[] = [];
            for (const s of statements) results.push(await tx.query(s.text, s.params));
            return results;
          },
          { isolation: 'repeatable read', readOnly: true },
        );
      },
      transaction<T>(fn: (tx: Queryable) => Promise<T>, opts?: TxOptions) {
        served();
        return transaction(observer, fn, opts);
      },
    };
  }

  async function ping(timeoutMs: number): Promise<ReadyReport> {
    const started = now();
    const observer: QueryObserver = { ...NO_OBSERVER, deadline: now() + timeoutMs };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const attempt = (async () => {
      const lease = await checkout(observer, timeoutMs, false);
      let destroy = false;
      try {
        await lease.client.query('SELECT 1');
      } catch (err) {
        destroy = true;
        throw err;
      } finally {
        lease.release(destroy);
      }
    })();
    try {
      await Promise.race([
        attempt,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new AppError(504, 'timeout', 'ping timed out')), timeoutMs);
        }),
      ]);
      return { ok: true, latencyMs: now() - started };
    } catch (err) {
      attempt.catch(() => {});
      const reason = err instanceof AppError ? err.code : isConnectionError(err) ? 'database_unavailable' : 'ping_failed';
      return { ok: false, latencyMs: now() - started, reason };
    } finally {
      clearTimeout(timer);
    }
  }

  function stats(): PoolStats {
    const total = pool.totalCount;
    const idle = pool.idleCount;
    return {
      max: options.max,
      total,
      active: total - idle,
      idle,
      waiting: gate.waiting + pool.waitingCount,
      openedCount,
      closedCount,
      acquisitionCount,
      reuseRate: acquisitionCount === 0 ? 1 : (acquisitionCount - openedOnAcquireCount) / acquisitionCount,
      errorCount,
      acquireTimeoutCount: gate.timedOutCount,
      queueRejectedCount: gate.rejectedCount,
      retryCount: budget.retriedCount,
      retryDeniedCount: budget.deniedCount,
      cancelledCount,
    };
  }

  async function warm(): Promise<void> {
    const leases = await Promise.all(Array.from({ length: options.min }, () => checkout(NO_OBSERVER, undefined, false)));
    // Opened here, but they are not what a request would pay for: keep them "not fresh".
    for (const lease of leases) lease.release(false);
  }

  let closing: Promise<void> | undefined;
  return {
    kind: 'pg-pool',
    pool,
    forRequest,
    ping,
    stats,
    breakers: () => [breaker.snapshot()],
    warm,
    close() {
      closing ??= (async () => {
        gate.close();
        await pool.end();
      })();
      return closing;
    },
  };
}
