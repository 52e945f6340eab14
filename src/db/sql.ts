/** Pieces every backend shares: the BEGIN statement for TxOptions, and per-statement timing. */
import { now } from '../stats/clock.js';
import type { QueryObserver, QueryResult, Queryable, TxOptions } from './types.js';

export function beginStatement(opts: TxOptions): string {
  let sql = 'BEGIN';
  if (opts.isolation) sql += ` ISOLATION LEVEL ${opts.isolation.toUpperCase()}`;
  if (opts.readOnly) sql += ' READ ONLY';
  return sql;
}

/** Anything with pg's `query(text, values)` shape: a pg client, a Neon WebSocket client. */
export interface RawClient {
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[]; rowCount: number | null }>;
}

/** Wraps a client so each statement's time reaches the request's observer. */
export function instrument(client: RawClient, observer: QueryObserver): Queryable {
  return {
    async query<R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
      const started = now();
      try {
        const res = await client.query(text, params as unknown[]);
        return { rows: res.rows as R[], rowCount: res.rowCount ?? null };
      } finally {
        observer.queried(now() - started);
      }
    },
  };
}
