/**
 * The Node backend: a `pg` Pool behind a bounded gate, with the guide's defaults and the parts
 * the guide forgot: `min` connections actually opened (pg's `min` only stops the idle reaper),
 * an 'error' listener on the pool and on every client (a terminated backend must never crash the
 * process), connections that failed mid-use are destroyed rather than reused, and figures for
 * reuse rate and acquire waits. The `pg` module is passed in, so this file imports no driver.
 */
import type pg from 'pg';
import type { PoolConfig } from '../config.js';
import { AppError, describeError, isConnectionError, isTimeoutError } from '../errors.js';
import { Gate } from '../resilience/gate.js';
import { now } from '../stats/clock.js';
import type { Database, Db, PoolStats, QueryObserver, QueryResult, Queryable, ReadyReport, Statement, TxOptions } from './types.js';

export interface PgPoolDatabaseOptions extends PoolConfig {
  connectionString: string;
}

export interface PgPoolDeps {
  Pool: new (config: pg.PoolConfig) => pg.Pool;
  log?: (line: string) => void;
}

export interface PgPoolDatabase extends Database {
  /** Opens `min` connections now, so the first requests do not pay for connecting. */
  warm(): Promise<void>;
  /** The underlying pool, for tests and the shutdown path. */
  readonly pool: pg.Pool;
}

const NO_OBSERVER: QueryObserver = { acquired() {}, queried() {}, served() {} };

/**
 * @example
 * const db = createPgPoolDatabase({ ...config.pool, connectionString }, { Pool: pg.Pool });
 * await db.warm();
 * const rows = (await db.forRequest(observer).query('SELECT 1 AS x')).rows;
 */
export function createPgPoolDatabase(options: PgPoolDatabaseOptions, deps: PgPoolDeps): PgPoolDatabase {
  const log = deps.log ?? (() => {});
  const pool = new deps.Pool({
    connectionString: options.connectionString,
    max: options.max,
    min: options.min,
    idleTimeoutMillis: options.idleTimeoutMs,
    connectionTimeoutMillis: options.connectionTimeoutMs,
    statement_timeout: options.statementTimeoutMs,
    query_timeout: options.queryTimeoutMs,
    application_name: options.applicationName,
    keepAlive: true,
  });
  const gate = new Gate({ permits: options.max, queueMax: options.queueMax, timeoutMs: options.acquireTimeoutMs });

  const fresh = new WeakSet<pg.PoolClient>();
  let openedCount = 0;
  let closedCount = 0;
  let acquisitionCount = 0;
  let openedOnAcquireCount = 0;
  let errorCount = 0;

  pool.on('connect', (client) => {
    openedCount++;
    fresh.add(client);
    // Stays for the client's whole life: pg-pool listens only while a client is idle, so an
    // error on a checked-out client (backend terminated mid-request) would otherwise be unhandled.
    client.on('error', (err) => {
      errorCount++;
      log(`db client error (${describeError(err)}); the connection will be discarded`);
    });
  });
  pool.on('remove', () => {
    closedCount++;
  });
  pool.on('error', (err) => {
    errorCount++;
    log(`db idle client error (${describeError(err)}); removed from pool`);
  });

  interface Lease {
    client: pg.PoolClient;
    release(destroy: boolean): void;
  }

  async function checkout(observer: QueryObserver, timeoutMs?: number, counted = true): Promise<Lease> {
    const started = now();
    const releasePermit = await gate.acquire(timeoutMs);
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (err) {
      releasePermit();
      throw err;
    }
    const opened = fresh.delete(client);
    if (counted) {
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

  /** Connection failures and client-side timeouts leave a connection in an unknown state. */
  const mustDestroy = (err: unknown) => isConnectionError(err) || isTimeoutError(err);

  function instrument(client: Queryable, observer: QueryObserver): Queryable {
    return {
      async query<R>(text: string, params?: readonly unknown[]) {
        const started = now();
        try {
          const res = await client.query<R>(text, params);
          return { rows: res.rows, rowCount: res.rowCount ?? null };
        } finally {
          observer.queried(now() - started);
        }
      },
    };
  }

  async function transaction<T>(observer: QueryObserver, fn: (tx: Queryable) => Promise<T>, opts: TxOptions = {}): Promise<T> {
    const lease = await checkout(observer);
    const tx = instrument(lease.client as unknown as Queryable, observer);
    let destroy = false;
    try {
      await tx.query(beginStatement(opts));
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
      lease.release(destroy);
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
      async query<R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
        served();
        const lease = await checkout(observer);
        let destroy = false;
        try {
          return await instrument(lease.client as unknown as Queryable, observer).query<R>(text, params);
        } catch (err) {
          destroy = mustDestroy(err);
          throw err;
        } finally {
          lease.release(destroy);
        }
      },
      async readBatch(statements: readonly Statement[]) {
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
    let timer: ReturnType<typeof setTimeout> | undefined;
    const attempt = (async () => {
      const lease = await checkout(NO_OBSERVER, timeoutMs, false);
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

function beginStatement(opts: TxOptions): string {
  let sql = 'BEGIN';
  if (opts.isolation) sql += ` ISOLATION LEVEL ${opts.isolation.toUpperCase()}`;
  if (opts.readOnly) sql += ' READ ONLY';
  return sql;
}
