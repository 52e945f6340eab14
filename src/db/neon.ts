/**
 * The edge backend on `@neondatabase/serverless`. One-shot reads go over HTTP (`neon()`), a
 * batch of independent reads is one read-only HTTP transaction, and a read that needs an
 * interactive session gets a WebSocket `Pool` created for this request only and ended after it
 * (workerd forbids reusing I/O objects across requests, so a module-scope pool would hang).
 * The driver module is passed in: the core never imports it.
 */
import type * as Neon from '@neondatabase/serverless';
import { AppError, isConnectionError } from '../errors.js';
import { createBreaker } from '../resilience/breaker.js';
import { now } from '../stats/clock.js';
import { beginStatement, instrument } from './sql.js';
import type { Database, Db, QueryObserver, QueryResult, Queryable, ReadyReport, Statement, TxOptions } from './types.js';

export type NeonDriver = Pick<typeof Neon, 'neon' | 'Pool'>;

export interface NeonDatabaseOptions {
  connectionString: string;
  driver: NeonDriver;
  /** Upper bound for one HTTP query or batch; the fetch is aborted after it. */
  queryTimeoutMs: number;
}

/**
 * @example
 * import * as driver from '@neondatabase/serverless';
 * const database = createNeonDatabase({ connectionString: env.DATABASE_URL, driver, queryTimeoutMs: 10_000 });
 */
export function createNeonDatabase(options: NeonDatabaseOptions): Database {
  const sql = options.driver.neon(options.connectionString, { fullResults: true });
  const breaker = createBreaker('neon-http', { isFailure: isConnectionError });

  /**
   * Runs `run` through the breaker with an abort signal bounded by the query timeout and the
   * request's deadline; an abort becomes a 504. HTTP queries are not retried here: a fetch that
   * failed may still have run its statement.
   */
  async function bounded<T>(observer: QueryObserver, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const left = observer.deadline === undefined ? Infinity : observer.deadline - now();
    if (left <= 0) throw new AppError(504, 'timeout', 'The request ran out of time before reaching the database.');
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), Math.min(options.queryTimeoutMs, left));
    try {
      return await breaker.execute(() => run(controller.signal));
    } catch (err) {
      if (controller.signal.aborted) {
        throw new AppError(504, 'timeout', 'The database did not answer in time; the request was abandoned.', { cause: err });
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** A request's Db also owns the request's WebSocket pool, if it opened one; `end()` (run by connStats via waitUntil) ends it. */
  function forRequest(observer: QueryObserver): Db {
    let pool: Neon.Pool | undefined;

    async function transaction<T>(fn: (tx: Queryable) => Promise<T>, opts: TxOptions = {}): Promise<T> {
      observer.served('neon-ws');
      const started = now();
      pool ??= new options.driver.Pool({ connectionString: options.connectionString, max: 1 });
      const client = await pool.connect();
      observer.acquired(now() - started, true);
      const tx = instrument(client, observer);
      let broken = false;
      try {
        await tx.query(beginStatement(opts));
        const result = await fn(tx);
        await tx.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {
          broken = true;
        });
        throw err;
      } finally {
        client.release(broken || undefined);
      }
    }

    return {
      kind: 'neon-http',
      async query<R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
        observer.served('neon-http');
        const t0 = now();
        try {
          const res = await bounded(observer, (signal) =>
            sql.query(text, params as unknown[], { fullResults: true, fetchOptions: { signal } }),
          );
          return { rows: res.rows as R[], rowCount: res.rowCount ?? null };
        } finally {
          observer.queried(now() - t0);
        }
      },
      async readBatch(statements: readonly Statement[]): Promise<QueryResult[]> {
        observer.served('neon-http');
        const t0 = now();
        try {
          const results = await bounded(observer, (signal) =>
            sql.transaction(
              statements.map((s) => sql.query(s.text, s.params as unknown[])),
              { isolationLevel: 'RepeatableRead', readOnly: true, fullResults: true, fetchOptions: { signal } },
            ),
          );
          return results.map((r) => ({ rows: r.rows as QueryResult['rows'], rowCount: r.rowCount ?? null }));
        } finally {
          observer.queried(now() - t0, statements.length);
        }
      },
      transaction,
      async end() {
        const p = pool;
        pool = undefined;
        if (p) await p.end();
      },
    };
  }

  async function ping(timeoutMs: number): Promise<ReadyReport> {
    const started = now();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      await sql.query('SELECT 1', [], { fullResults: true, fetchOptions: { signal: controller.signal } });
      return { ok: true, latencyMs: now() - started };
    } catch {
      return { ok: false, latencyMs: now() - started, reason: controller.signal.aborted ? 'timeout' : 'database_unavailable' };
    } finally {
      clearTimeout(timer);
    }
  }

  return {
    kind: 'neon-http',
    forRequest,
    ping,
    stats: () => undefined,
    breakers: () => [breaker.snapshot()],
    close: async () => {},
  };
}

/** Points the driver at a local Neon-compatible proxy (development and tests only). */
export function useLocalNeonProxy(neonConfig: typeof Neon.neonConfig, proxyUrl: string): void {
  const u = new URL(proxyUrl);
  neonConfig.fetchEndpoint = () => `${u.origin}/sql`;
  neonConfig.wsProxy = (host, port) => `${u.host}/v2?address=${host}:${port}`;
  neonConfig.useSecureWebSocket = u.protocol === 'https:';
  neonConfig.pipelineConnect = false;
  neonConfig.pipelineTLS = false;
}
