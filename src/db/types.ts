/**
 * The contract the routes are written against. One implementation, the core (src/db/core/), runs
 * over any connector (the `pg` Pool on Node, Neon HTTP and Neon WebSocket at the edge); routes
 * only ever see `Db`, a per-request view that reports acquire waits and query times to that
 * request's observer.
 */
import type { Span } from '@opentelemetry/api';
import type { BreakerSnapshot } from '../resilience/breaker.js';

export type ClientKind = 'pg-pool' | 'pg-pipeline' | 'neon-http' | 'neon-ws' | 'forwarded';

export type Row = Record<string, unknown>;

export interface QueryResult<R = Row> {
  rows: R[];
  rowCount: number | null;
  /** The server's command tag (SELECT, INSERT, COMMIT, ROLLBACK …), where the driver reports it. */
  command?: string;
}

export interface Statement {
  text: string;
  params?: readonly unknown[];
}

export interface Queryable {
  /** Parameterised SQL only: values always travel in `params`, never in `text`. */
  query<R = Row>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>>;
}

export interface TxOptions {
  isolation?: 'read committed' | 'repeatable read' | 'serializable';
  readOnly?: boolean;
}

/** What a route handler gets: one-shot reads, snapshot read batches, and transactions. */
export interface Db extends Queryable {
  readonly kind: ClientKind;
  /** Independent read statements seen from one snapshot, in one round trip where the driver can. */
  readBatch(statements: readonly Statement[]): Promise<QueryResult[]>;
  /** Checks out one connection, runs BEGIN … COMMIT around `fn`, rolls back on any error, always releases. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>, options?: TxOptions): Promise<T>;
  /** Releases what this request opened (the edge's per-request WebSocket pool); called after the response. Undefined when nothing was opened. */
  end?(): Promise<void> | undefined;
}

/** Receives what one request did with the database (the stats middleware implements it). */
export interface QueryObserver {
  /** A connection was obtained after `waitMs`; `opened` when it had to be newly opened. */
  acquired(waitMs: number, opened: boolean): void;
  /** One statement (or one batch round trip) took `durationMs`. */
  queried(durationMs: number, statements?: number): void;
  /** Which client served the request. */
  served(kind: ClientKind): void;
  /** Which server served its reads, where there are replicas: `primary` or a replica's name. */
  readFrom?(server: string): void;
  /** When the request must be finished by (the clock's ms); work is cut short to meet it. */
  readonly deadline?: number;
  /** Aborts when the client goes away: the request's database work is cancelled at once. */
  readonly signal?: AbortSignal;
  /**
   * What the route declared. A single statement of a `read` route may run again after a lost
   * connection; anything else only when it provably never reached the database. Default: transactional.
   */
  readonly intent?: 'read' | 'transactional';
  /** A statement or connect was retried (counted in the stats). */
  retried?(): void;
  /** Work of the process itself (migrations at start), kept out of the acquisition figures. */
  readonly internal?: boolean;
  /** The primary's WAL position after this request's write (where replicas are configured): its consistency token. */
  committed?(lsn: string): void;
  /** The position the request's client asked its reads to have seen (its consistency token); none: any replica in bounds. */
  readonly consistency?: string;
  /** The request's OpenTelemetry span (conn-stats): each database call is a child span of it while it records (stats/otel.ts). */
  readonly span?: Span;
}

export interface PoolStats {
  max: number;
  total: number;
  active: number;
  idle: number;
  waiting: number;
  openedCount: number;
  closedCount: number;
  acquisitionCount: number;
  /** Share of acquisitions that did not have to open a connection (1 when none yet). */
  reuseRate: number;
  errorCount: number;
  acquireTimeoutCount: number;
  queueRejectedCount: number;
  /** Admission in front of the pool (resilience/gate.ts); absent without a gate. */
  admission?: AdmissionStats;
  /** Attempts made again under the retry rules, and retries the budget refused. */
  retryCount: number;
  retryDeniedCount: number;
  /** Statements cancelled on the server because their request's deadline passed. */
  cancelledCount: number;
  /** The pipelined lanes for reads, where there are any. */
  pipeline?: PipelineStats;
  /** What the server, or a pooler in front of it, refused (this pool does without it since): the SQLSTATE that said so. */
  refused?: RefusedFeatures;
  /** This instance's share of the connection budget every instance on the server shares (POOL_BUDGET), where there is one. */
  budget?: BudgetFigures;
}

/** What /stats shows of one replica. */
export interface ReplicaFigures {
  name: string;
  up: boolean;
  standby: boolean;
  lagMs: number;
  replayed?: string;
  inFlight: number;
  servedCount: number;
  /** Reads that failed here for the replica's sake and ran again on the primary. */
  fellBackCount: number;
  checkCount: number;
  checkErrorCount: number;
  pool?: PoolStats;
}

export interface ReplicaSetFigures {
  maxLagMs: number;
  /** Reads served by the primary because no replica fit: none up or within lag, or none past the request's token. */
  onPrimary: { noReplica: number; token: number };
  /** Reads with a token served by a replica that had replayed past it. */
  tokensHonoured: number;
  replicas: ReplicaFigures[];
}

/** A connection budget shared with other instances on one server (db/connectors/pg-budget.ts). */
export interface BudgetFigures {
  /** What this instance may hold now, lanes and pool together. */
  share: number;
  /** The limit shared: the server's (less superuser_reserved_connections) or POOL_BUDGET. */
  limit: number;
  reserve: number;
  /** Live poolgate instances seen (this one included). */
  instances: number;
  /** Backends that are no poolgate instance's (operators, other applications). */
  others: number;
  /** Looks at the server so far, and how many failed. */
  sampledCount: number;
  sampleErrorCount: number;
  /** Connects the server refused with 53300 (pool and lanes). */
  refusedCount: number;
}

export interface RefusedFeatures {
  /** Named prepared statements (26000, 42P05): statements run unnamed. */
  namedStatements?: string;
  /** statement_timeout as a startup parameter (08P01): connections open without it. */
  statementTimeoutAtStartup?: string;
}

export interface PipelineStats {
  /** Lanes open now, and statements in flight on them. */
  lanes: number;
  inFlight: number;
  openedCount: number;
  closedCount: number;
  /** Lanes that sent a CancelRequest (a read cut short) and were retired. */
  cancelledCount: number;
  /** Reads sent to the pool because every lane was stalled behind a slow statement or its queue was long. */
  overflowCount: number;
  /** Reads sent to the pool because their recent time was above a few ms (slow reads never share a lane). */
  slowToPoolCount?: number;
  /** Statements that waited on a lane behind another request's statement that ran past the stall threshold (50 ms). */
  waitedBehindSlowCount?: number;
  /** Reads waiting for room on the lanes (first come, first served), and those that gave up or were refused. */
  waiting?: number;
  acquireTimeoutCount?: number;
  queueRejectedCount?: number;
  admission?: AdmissionStats;
}

/** What the admission gate predicts a newcomer would wait now, and the requests it shed, by why. */
export interface AdmissionStats {
  estimateMs: number;
  shed: { wait: number; deadline: number; overload: number; queue_full: number };
}

export interface ReadyReport {
  ok: boolean;
  latencyMs: number;
  /** A stable reason code when not ok; never a driver message. */
  reason?: string;
}

/** A backend shared by all requests of a process (or isolate). */
export interface Database {
  readonly kind: ClientKind;
  forRequest(observer: QueryObserver): Db;
  /** A cheap round trip with a short timeout, for readiness checks. */
  ping(timeoutMs: number): Promise<ReadyReport>;
  /** Pool-level figures, where the backend has a pool. */
  stats(): PoolStats | undefined;
  /** Circuit breakers guarding this backend's upstreams. */
  breakers(): BreakerSnapshot[];
  /** The read replicas beside the primary (DATABASE_REPLICA_URLS), where there are any. */
  replicaFigures?(): ReplicaSetFigures;
  /** Opens `count` pooled connections now, so the first requests do not pay for connecting. */
  warm?(count: number): Promise<void>;
  /** Ends the backend once; a second call returns the same promise. */
  close(): Promise<void>;
}
