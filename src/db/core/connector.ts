/**
 * What a backend must know, and nothing more: how to get a session, run a statement on it,
 * cancel it and give it back (SessionConnector), or how to run a statement or an atomic batch in
 * one round trip without a session (OneShotConnector). Transactions, deadlines, retries, the
 * breaker and the observer calls are the core's (src/db/core/database.ts), written once.
 */
import type { BudgetFigures, ClientKind, PipelineStats, QueryResult, RefusedFeatures, Statement, TxOptions } from '../types.js';

/**
 * One server session: a pooled connection, checked out by one request at a time. Transaction
 * control is typed (begin/commit/rollback): no statement text is matched across this seam.
 */
export interface Session {
  /**
   * One statement, in the extended protocol (the server refuses several commands in one). With
   * `script`, the process's own SQL (a migration of several statements) goes as a simple Query.
   */
  query(text: string, params?: readonly unknown[], script?: boolean): Promise<QueryResult>;
  /** Opens a transaction with these options (the connector may write it with the next statement). */
  begin(options: TxOptions): Promise<void>;
  /**
   * Commits; the server's tag is ROLLBACK when the transaction had failed. With `position`, the
   * primary's WAL position after the COMMIT comes back too, read in the same round trip where the
   * connector can (the consistency token); none when nothing was written or it could not be read.
   */
  commit(options?: { position?: boolean }): Promise<QueryResult & { position?: string }>;
  rollback(): Promise<void>;
  /**
   * Asks the server to stop what this session is running now (a protocol-level cancel where the
   * driver has one). Best effort and immediate; the running statement then fails.
   */
  cancel(): void;
  /**
   * Gives the session back; `discard` when it must never be reused (broken, cancelled). The
   * connector discards it as well when the server says it is not idle (ReadyForQuery status other
   * than 'I') or a statement changed the session (a SET, RESET … command tag).
   */
  release(discard: boolean): void;
}

export interface Checkout {
  session: Session;
  /** The session was opened for this checkout (a reused one was not). */
  opened: boolean;
}

/** Where one request's sessions come from: a pool shared by the process, or one made for the request. */
export interface SessionSource {
  /** `deadline` (now()-based ms): a connector that waits and tries again (53300 under a budget) stops there. */
  acquire(deadline?: number): Promise<Checkout>;
  /** Ends what this source opened for its request; absent for a shared pool. */
  end?(): Promise<void>;
}

/** A shared pool's own figures (the core adds acquisitions, waits, retries and cancels). */
export interface PoolFigures {
  max: number;
  total: number;
  idle: number;
  waiting: number;
  openedCount: number;
  closedCount: number;
  errorCount: number;
  /** What the server, or a pooler in front of it, refused. */
  refused?: RefusedFeatures;
  /** The share of a connection budget shared with other instances (pg-budget.ts), where there is one. */
  budget?: BudgetFigures;
}

export interface SessionConnector {
  readonly kind: ClientKind;
  /** The breaker's name in /stats, /metrics and /health/ready. */
  readonly upstream: string;
  /** Called when a request first needs a session; a shared pool returns the same source each time. */
  source(): SessionSource;
  /** An error that says "busy", not "down" (no breaker count), e.g. 53300 while our pool holds live connections. */
  isBusy?(err: unknown): boolean;
  figures?(): PoolFigures;
  /** A pool that sizes itself calls `listener` with its new size, so admission follows it. */
  onResize?(listener: (max: number) => void): void;
  close(): Promise<void>;
}

export interface OneShotConnector {
  readonly kind: ClientKind;
  readonly upstream: string;
  /** Takes only the single statements of `read` routes (and read batches); the rest goes to sessions. */
  readonly readsOnly?: boolean;
  /**
   * Its connections carry other requests' statements at the same time (the pipelined lanes): a
   * statement that may change its session (mayChangeSession) never goes there, but to a session.
   */
  readonly shared?: boolean;
  /** False when the connector should not take `statements` now (full, or they are slow): with sessions beside it, they go there. */
  hasRoom?(statements?: readonly Statement[]): boolean;
  /** What a read of `statements` it did not take took on the sessions (their own time), so it knows them. */
  learn?(statements: readonly Statement[], ms: number): void;
  figures?(): PipelineStats;
  /** Opens what the connector needs before the first request; false when it will take no work here. */
  warm?(): Promise<boolean>;
  close?(): Promise<void>;
  /** One statement in one round trip; `signal` aborts it. */
  query(statement: Statement, signal: AbortSignal): Promise<QueryResult>;
  /** The statements in one transaction, in one round trip. */
  batch(statements: readonly Statement[], options: TxOptions, signal: AbortSignal): Promise<QueryResult[]>;
}
