/**
 * The edge's connectors on `@neondatabase/serverless` (passed in; nothing here imports it):
 * Neon HTTP for one-shot statements and read batches, and Neon WebSocket for sessions, from a
 * `Pool` made for one request and ended after it (workerd forbids reusing I/O objects across
 * requests, so a module-scope pool would hang). Every pool and client gets an 'error' listener.
 *
 * The result bound (RESULT_MAX_ROWS, RESULT_MAX_BYTES): on a WebSocket session as on the pg Pool
 * (the driver's bundled pg reads row by row: rows past it are dropped). Neon HTTP answers with one
 * JSON document the driver reads whole, so neither bound can stop it early: its size is bounded by
 * Neon's own response cap (10 MiB; HTTP 507, answered as result_too_large), and rows past
 * RESULT_MAX_ROWS are refused once it is parsed; RESULT_MAX_BYTES is not counted there.
 */
import type { Log } from '../../log/logger.js';
import type * as Neon from '@neondatabase/serverless';
import { describeError } from '../../errors.js';
import { createDatabase, type CoreDatabase } from '../core/database.js';
import { Replica, REPLICA_BREAKER, ReplicatedDatabase } from '../core/replicas.js';
import type { BreakerTuning } from '../../resilience/breaker.js';
import type { OneShotConnector, Session, SessionConnector, SessionSource } from '../core/connector.js';
import { RESULT_MAX_BYTES, RESULT_MAX_ROWS } from '../../config.js';
import type { Database, QueryResult, Statement, TxOptions } from '../types.js';
import { sendCancelRequest } from './cancel.js';
import { classified } from './driver-errors.js';
import {
  extended,
  isIdle,
  pgSession,
  queryClassOf,
  resultTooLarge,
  toResult,
  withBegin,
  type PgQueryClass,
  type ResultLimits,
} from './pg-session.js';

export type NeonDriver = Pick<typeof Neon, 'neon' | 'Pool' | 'Client'>;

export interface NeonConnectorOptions {
  connectionString: string;
  driver: NeonDriver;
  log?: Log;
  /** RESULT_MAX_ROWS / RESULT_MAX_BYTES (default: config's); see the module header for Neon HTTP. */
  resultLimits?: ResultLimits;
  /** Appended to the breakers' names (`neon-http-replica-1`): a replica's breakers are its own. */
  upstreamSuffix?: string;
}

const limitsOf = (options: NeonConnectorOptions): ResultLimits =>
  options.resultLimits ?? { maxRows: RESULT_MAX_ROWS, maxBytes: RESULT_MAX_BYTES };

/** The status Neon HTTP answered with, where the driver keeps it (only in its message: "Server error (HTTP status 507): …"). */
const httpStatusOf = (err: unknown): number | undefined => {
  if ((err as { name?: unknown } | undefined)?.name !== 'NeonDbError') return undefined;
  const status = /^Server error \(HTTP status (\d{3})\)/.exec((err as Error).message)?.[1];
  return status === undefined ? undefined : Number(status);
};

/**
 * A Neon HTTP result as the core's, within the bound: a response past Neon's cap (507) or rows past
 * RESULT_MAX_ROWS are result_too_large (500), never a lost connection to retry or count against the breaker.
 */
async function httpResults<T>(limits: ResultLimits, work: Promise<T>, rowsOf: (result: T) => QueryResult[]): Promise<QueryResult[]> {
  let results: QueryResult[];
  try {
    results = rowsOf(await work);
  } catch (err) {
    if (httpStatusOf(err) === 507) throw resultTooLarge(limits, "Neon HTTP's response size limit");
    throw classified(err, 'statement');
  }
  if (results.some((r) => r.rows.length > limits.maxRows)) throw resultTooLarge(limits);
  return results;
}

const ISOLATION = { 'read committed': 'ReadCommitted', 'repeatable read': 'RepeatableRead', serializable: 'Serializable' } as const;

export function neonHttpConnector(options: NeonConnectorOptions): OneShotConnector {
  const sql = options.driver.neon(options.connectionString, { fullResults: true });
  const limits = limitsOf(options);
  return {
    kind: 'neon-http',
    upstream: `neon-http${options.upstreamSuffix ?? ''}`,
    async query(s: Statement, signal: AbortSignal) {
      const work = sql.query(s.text, s.params as unknown[], { fullResults: true, fetchOptions: { signal } });
      return (await httpResults(limits, work, (r) => [toResult(r)]))[0]!;
    },
    batch(statements: readonly Statement[], tx: TxOptions, signal: AbortSignal) {
      const queries = statements.map((s) => sql.query(s.text, s.params as unknown[]));
      const work = sql.transaction(queries, {
        isolationLevel: tx.isolation && ISOLATION[tx.isolation],
        readOnly: tx.readOnly,
        fullResults: true,
        fetchOptions: { signal },
      });
      return httpResults(limits, work, (results) => results.map(toResult));
    },
  };
}

export function neonWsConnector(options: NeonConnectorOptions): SessionConnector {
  const log = options.log ?? (() => {});
  const onError = (err: unknown) =>
    log(
      `poolgate: neon websocket error (${describeError(err)}); the connection will be discarded`,
      { event: 'connection.errored', upstream: 'neon', error: describeError(err) },
      'warn',
    );
  return {
    kind: 'neon-ws',
    upstream: `neon-ws${options.upstreamSuffix ?? ''}`,
    source(): SessionSource {
      let pool: Neon.Pool | undefined;
      // COMMITs answered before the server did (read-only transactions): end() waits for them.
      const commits = new Set<Promise<unknown>>();
      const inBackground = (commit: Promise<unknown>) => {
        const settled: Promise<void> = commit.then(
          () => void commits.delete(settled),
          (err: unknown) => {
            commits.delete(settled);
            log(
              `poolgate: a read-only transaction's COMMIT failed (${describeError(err)})`,
              { event: 'commit.failed', error: describeError(err) },
              'warn',
            );
          },
        );
        commits.add(settled);
      };
      return {
        async acquire() {
          if (!pool) {
            pool = new options.driver.Pool({ connectionString: options.connectionString, max: 1 });
            pool.on('error', onError);
          }
          let client: Neon.PoolClient;
          try {
            client = await pool.connect();
          } catch (err) {
            throw classified(asConnectionError(err), 'connect');
          }
          client.on('error', onError);
          const cancel = () => sendCancelRequest(options.driver.Client, options.connectionString, client, log);
          const session = wsSession(
            client,
            { Query: queryClassOf(options.driver.Client), limits: limitsOf(options) },
            cancel,
            inBackground,
          );
          return { session, opened: true };
        },
        async end() {
          const p = pool;
          pool = undefined;
          await Promise.all(commits);
          await p?.end();
        },
      };
    },
    close: async () => {},
  };
}

/**
 * A failed WebSocket rejects with the socket's ErrorEvent, not an Error (e.g. "Unexpected server
 * response: 502" when the proxy cannot reach the database): name it for what it is (08006
 * connection_failure), so it maps to 503 and counts against the breaker like any other lost
 * connection.
 */
function asConnectionError(err: unknown): Error {
  if (err instanceof Error) return err;
  const message = (err as { message?: unknown } | undefined)?.message;
  const detail = typeof message === 'string' && message ? ` (${message})` : '';
  return Object.assign(new Error(`The WebSocket to the database could not be opened${detail}.`), { code: '08006', cause: err });
}

/**
 * A WebSocket session (pgSession: BEGIN written with the first statement, a read-only COMMIT read
 * in the background). Its cancel sends a CancelRequest through the proxy (a socket of its own) and
 * closes this socket, so the statement stops and nothing more runs on it.
 */
function wsSession(
  client: Neon.PoolClient,
  { Query, limits }: { Query: PgQueryClass | undefined; limits: ResultLimits },
  sendCancel: () => void,
  inBackground: (commit: Promise<unknown>) => void,
): Session {
  return pgSession({
    run: async (text, params, begin, script) => {
      try {
        if (begin !== undefined) return toResult(await withBegin(client, Query, begin, text, params, undefined, script, limits));
        return toResult(script ? await client.query(text) : await extended(client, Query, text, params, undefined, limits));
      } catch (err) {
        throw classified(err, 'statement', client);
      }
    },
    cancel: () => {
      sendCancel();
      client.release(true);
    },
    release: (discard) => {
      try {
        client.release(discard || !isIdle(client as { getTransactionStatus?: () => string | null }) || undefined);
      } catch {
        // Already released by cancel().
      }
    },
    inBackground,
  });
}

/**
 * The edge backend: Neon HTTP for reads and read batches, Neon WebSocket for sessions.
 * @example
 * import * as driver from '@neondatabase/serverless';
 * const database = createNeonDatabase({ connectionString: env.DATABASE_URL, driver, queryTimeoutMs: 10_000 });
 */
export function createNeonDatabase(options: NeonConnectorOptions & { queryTimeoutMs: number; breaker?: BreakerTuning }): CoreDatabase {
  return createDatabase({
    oneShot: neonHttpConnector(options),
    sessions: neonWsConnector(options),
    oneShotTimeoutMs: options.queryTimeoutMs,
    breaker: options.breaker,
  });
}

/**
 * The edge backend with its read replicas, if any (DATABASE_REPLICA_URLS; db/core/replicas.ts):
 * each replica Neon HTTP and WebSocket of its own. Writes never run here (they are forwarded), so
 * the primary tells no positions: the Node function's responses carry the tokens these reads honour.
 */
export function createNeonReplicatedDatabase(
  options: NeonConnectorOptions & { queryTimeoutMs: number },
  replicas: { urls: readonly string[]; maxLagMs: number; checkIntervalMs: number },
): Database {
  const primary = createNeonDatabase(options);
  if (replicas.urls.length === 0) return primary;
  const set = replicas.urls.map((url, i) => {
    const database = createNeonDatabase({
      ...options,
      connectionString: url,
      upstreamSuffix: `-replica-${i + 1}`,
      breaker: REPLICA_BREAKER,
    });
    return new Replica(`replica-${i + 1}`, database);
  });
  return new ReplicatedDatabase(primary, set, { maxLagMs: replicas.maxLagMs, checkIntervalMs: replicas.checkIntervalMs });
}

/** The driver settings a local proxy needs (the same in driver 1.x and 0.10.x). */
export interface NeonProxySettings {
  fetchEndpoint: string | ((host: string, port: number | string) => string);
  wsProxy: string | ((host: string, port: number | string) => string) | undefined;
  useSecureWebSocket: boolean;
  pipelineConnect: false | 'password';
  pipelineTLS: boolean;
}

/**
 * Points the driver at a local Neon-compatible proxy (development and tests only). The proxy does
 * the startup as Neon's does (src/local/neon-proxy/auth.ts), so the driver's pipelined connect
 * ('password': startup, password and first query in one write) works whatever Postgres asks for;
 * plain ws carries no TLS to pipeline.
 */
export function useLocalNeonProxy(neonConfig: NeonProxySettings, proxyUrl: string): void {
  const u = new URL(proxyUrl);
  neonConfig.fetchEndpoint = () => `${u.origin}/sql`;
  neonConfig.wsProxy = (host, port) => `${u.host}/v2?address=${host}:${port}`;
  neonConfig.useSecureWebSocket = u.protocol === 'https:';
  neonConfig.pipelineConnect = 'password';
  neonConfig.pipelineTLS = false;
}
