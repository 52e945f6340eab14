/**
 * The one execution core: a `Database` over a session connector (pg Pool, Neon WebSocket), a
 * one-shot connector (Neon HTTP), or both. Each request gets a `Db` that routes its calls —
 * one-shot where the backend has it, sessions for transactions — and reports to its observer.
 */
import type { Log } from '../../log/logger.js';
import { logBreakerChanges } from '../../resilience/breaker.js';
import { AppError } from '../../errors.js';
import type { BreakerSnapshot, BreakerTuning } from '../../resilience/breaker.js';
import type { GateOptions } from '../../resilience/gate.js';
import { RetryBudget } from '../../resilience/retry.js';
import { ShedLog } from '../../resilience/shed-log.js';
import { now } from '../../stats/clock.js';
import { observePool, type PoolFiguresSource } from '../../stats/otel.js';
import type {
  ClientKind,
  Database,
  Db,
  PipelineStats,
  PoolStats,
  QueryObserver,
  QueryResult,
  Queryable,
  ReadyReport,
  Statement,
  TxOptions,
} from '../types.js';
import type { OneShotConnector, SessionConnector, SessionSource } from './connector.js';
import { OneShotRunner } from './one-shot.js';
import { SessionRunner } from './sessions.js';
import { asRefused, mayChangeSession, refuseTransactionControl } from './statement-kind.js';

export interface CoreOptions {
  sessions?: SessionConnector;
  oneShot?: OneShotConnector;
  /** Bounded wait and queue in front of a shared session pool. */
  admission?: GateOptions;
  /** The same in front of a one-shot connector of fixed capacity (the pipelined lanes). */
  oneShotAdmission?: GateOptions;
  /** The statement_timeout sessions are opened with (see SessionRunner). */
  sessionStatementTimeoutMs?: number;
  /** Upper bound of one one-shot round trip (default 10 s). */
  oneShotTimeoutMs?: number;
  budget?: RetryBudget;
  /** Where the admission gates' shed summary goes, one line per interval (resilience/shed-log.ts); none: not logged. */
  log?: Log;
  /** Applied to the breakers the runners create (threshold, probe schedule; tests pass a fake clock). */
  breaker?: BreakerTuning;
  /** Tell requests the WAL position after their writes (a primary with replicas: the consistency token; see SessionRunner). */
  positions?: boolean;
}

const READ_BATCH: TxOptions = { isolation: 'repeatable read', readOnly: true };
const PING_OBSERVER = { acquired() {}, queried() {}, served() {}, internal: true } satisfies QueryObserver;

/** The caller's breaker tuning, with its transitions logged when there is a log. */
const breakerTuning = (options: CoreOptions): BreakerTuning | undefined =>
  options.log ? { ...options.breaker, onChange: logBreakerChanges(options.log, options.breaker?.onChange) } : options.breaker;

/**
 * @example
 * const database = createDatabase({ sessions: pgPoolConnector(config, pg), admission: { permits: 20, queueMax: 1000, timeoutMs: 5000 } });
 * const user = await database.forRequest(observer).query('SELECT * FROM users WHERE id = $1', [id]);
 */
export function createDatabase(options: CoreOptions): CoreDatabase {
  return new CoreDatabase(options);
}

export class CoreDatabase implements Database {
  readonly kind: ClientKind;
  readonly sessions: SessionRunner | undefined;
  readonly oneShot: OneShotRunner | undefined;
  readonly #budget: RetryBudget;
  readonly #shedLog: ShedLog | undefined;
  /** What the OpenTelemetry connection gauges read (held here: they hold it weakly), and its unregister call. */
  readonly #poolFigures: PoolFiguresSource | undefined;
  readonly #unobserve: (() => void) | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: CoreOptions) {
    if (!options.sessions && !options.oneShot) throw new Error('createDatabase needs a session connector, a one-shot connector, or both.');
    this.#budget = options.budget ?? new RetryBudget();
    const shedLog = (this.#shedLog = options.log && new ShedLog({ log: options.log }));
    this.sessions =
      options.sessions &&
      new SessionRunner(options.sessions, {
        admission: options.admission,
        onShed: shedLog && ((reason) => shedLog.count('pool', reason)),
        sessionStatementTimeoutMs: options.sessionStatementTimeoutMs,
        budget: this.#budget,
        breakerOptions: breakerTuning(options),
        positions: options.positions,
      });
    this.oneShot =
      options.oneShot &&
      new OneShotRunner(options.oneShot, {
        timeoutMs: options.oneShotTimeoutMs ?? 10_000,
        admission: options.oneShotAdmission,
        onShed: shedLog && ((reason) => shedLog.count('lanes', reason)),
        budget: this.#budget,
        // One upstream, one breaker: both paths open and close it.
        breaker: this.sessions?.connector.upstream === options.oneShot.upstream ? this.sessions.breaker : undefined,
        breakerOptions: breakerTuning(options),
      });
    // A reads-only one-shot connector serves beside the sessions; the backend is the sessions'.
    this.kind = (options.oneShot?.readsOnly ? options.sessions : undefined)?.kind ?? (options.oneShot ?? options.sessions)!.kind;
    if (this.sessions) {
      this.#poolFigures = { name: this.sessions.connector.upstream, figures: () => this.stats() };
      this.#unobserve = observePool(this.#poolFigures);
    }
  }

  forRequest(observer: QueryObserver): Db {
    return new RequestDb(this, observer);
  }

  async ping(timeoutMs: number): Promise<ReadyReport> {
    const started = now();
    const observer = { ...PING_OBSERVER, deadline: started + timeoutMs };
    // Where a read would go: a reads-only one-shot beside the sessions (the pipelined lanes) only
    // when it has room — on PGlite, never, and the ping must not open a lane there either.
    const oneShot = this.sessions && this.oneShot?.connector.hasRoom?.() === false ? undefined : this.oneShot;
    try {
      if (oneShot) await oneShot.query(observer, { text: 'SELECT 1' });
      else await this.#pingSession(observer);
      return { ok: true, latencyMs: now() - started };
    } catch (err) {
      const reason = err instanceof AppError ? err.code : 'database_unavailable';
      return { ok: false, latencyMs: now() - started, reason };
    }
  }

  async warm(count: number): Promise<void> {
    if (this.sessions && count > 0) await this.sessions.warm(this.sessions.connector.source(), count);
    await this.oneShot?.connector.warm?.();
  }

  stats(): PoolStats | undefined {
    const runner = this.sessions;
    const pool = runner?.figures();
    if (!runner || !pool) return undefined;
    const acquisitions = runner.acquisitionCount;
    return {
      max: pool.max,
      total: pool.total,
      active: pool.total - pool.idle,
      idle: pool.idle,
      waiting: runner.waiting + pool.waiting,
      openedCount: pool.openedCount,
      closedCount: pool.closedCount,
      acquisitionCount: acquisitions,
      reuseRate: acquisitions === 0 ? 1 : (acquisitions - runner.openedOnAcquireCount) / acquisitions,
      errorCount: pool.errorCount,
      ...runner.gateFigures,
      retryCount: this.#budget.retriedCount,
      retryDeniedCount: this.#budget.deniedCount,
      cancelledCount: runner.cancelledCount,
      ...this.#pipelineStats(),
      ...(pool.refused ? { refused: pool.refused } : {}),
      ...(pool.budget ? { budget: pool.budget } : {}),
    };
  }

  /** The pipelined lanes' own figures and their admission's, where there are lanes. */
  #pipelineStats(): { pipeline?: PipelineStats } {
    const figures = this.oneShot?.connector.figures?.();
    if (!figures) return {};
    const gate = this.oneShot!.gateFigures;
    return { pipeline: { ...figures, waiting: this.oneShot!.waiting, ...gate } };
  }

  breakers(): BreakerSnapshot[] {
    const breakers = new Set([this.oneShot?.breaker, this.sessions?.breaker].filter((b) => b !== undefined));
    return [...breakers].map((b) => b.snapshot());
  }

  close(): Promise<void> {
    this.oneShot?.close();
    this.#shedLog?.close();
    this.#unobserve?.();
    return (this.#closing ??= Promise.all([this.sessions?.close(), this.oneShot?.connector.close?.()]).then(() => {}));
  }

  /** A session round trip that gives up at the deadline even if getting a session hangs. */
  async #pingSession(observer: QueryObserver & { deadline: number }): Promise<void> {
    const sessions = this.sessions!;
    const source = sessions.connector.source();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const attempt = sessions.statement(source, observer, 'SELECT 1');
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new AppError(504, 'timeout', 'ping timed out')), observer.deadline - now());
    });
    try {
      await Promise.race([attempt, late]);
    } finally {
      clearTimeout(timer);
      attempt.catch(() => {});
      await source.end?.();
    }
  }
}

/** One request's view: one-shot where the backend has it, sessions for transactions. */
class RequestDb implements Db {
  readonly kind: ClientKind;
  readonly #core: CoreDatabase;
  readonly #observer: QueryObserver;
  #source: SessionSource | undefined;

  constructor(core: CoreDatabase, observer: QueryObserver) {
    this.#core = core;
    this.#observer = observer;
    this.kind = core.kind;
  }

  query<R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
    return this.#guarded([{ text, params }], false, () => this.#query<R>(text, params));
  }

  readBatch(statements: readonly Statement[]): Promise<QueryResult[]> {
    return this.#guarded(statements, true, () => this.#readBatch(statements));
  }

  /**
   * A caller's transaction control is refused before anything is sent, and several statements in
   * one text (refused by the server) answer with the same error; the process's own work runs as is.
   */
  async #guarded<T>(statements: readonly Statement[], inTransaction: boolean, run: () => Promise<T>): Promise<T> {
    if (this.#observer.internal) return run();
    for (const s of statements) refuseTransactionControl(s.text, inTransaction);
    try {
      return await run();
    } catch (err) {
      throw asRefused(err);
    }
  }

  #query<R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
    const read = this.#observer.intent === 'read';
    const statement = { text, params };
    const oneShot = this.#oneShot(read, [statement]);
    if (oneShot) {
      this.#observer.served(oneShot.connector.kind);
      return oneShot.query(this.#observer, statement) as Promise<QueryResult<R>>;
    }
    const sessions = this.#sessions();
    const observer = read ? this.#learning([statement]) : this.#observer;
    return sessions.statement(this.#sourceOf(sessions), observer, text, params) as Promise<QueryResult<R>>;
  }

  #readBatch(statements: readonly Statement[]): Promise<QueryResult[]> {
    const oneShot = this.#oneShot(true, statements);
    if (oneShot) {
      this.#observer.served(oneShot.connector.kind);
      return oneShot.batch(this.#observer, statements, READ_BATCH);
    }
    const sessions = this.#sessions();
    const fn = async (tx: Queryable) => {
      const results: QueryResult[] = [];
      for (const s of statements) results.push(await tx.query(s.text, s.params));
      return results;
    };
    return sessions.transaction(this.#sourceOf(sessions), this.#learning(statements, 2), fn, READ_BATCH);
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>, options?: TxOptions): Promise<T> {
    const sessions = this.#sessions();
    return sessions.transaction(this.#sourceOf(sessions), this.#observer, fn, options);
  }

  /** Ends what this request opened (a per-request pool); undefined when there is nothing to end. */
  end(): Promise<void> | undefined {
    const source = this.#source;
    this.#source = undefined;
    return source?.end?.();
  }

  /**
   * The one-shot runner for this work, if it takes it (a reads-only one with room for it, beside
   * sessions). A statement that may change its session never goes where others' statements run
   * on the same connection meanwhile (a shared lane): it takes a session, discarded at release.
   */
  #oneShot(readOnly: boolean, statements: readonly Statement[]): OneShotRunner | undefined {
    const oneShot = this.#core.oneShot;
    if (!oneShot || !this.#core.sessions) return oneShot;
    const connector = oneShot.connector;
    if (connector.readsOnly && !readOnly) return undefined;
    if (connector.shared && statements.some((s) => mayChangeSession(s.text))) return undefined;
    return connector.hasRoom && !connector.hasRoom(statements) ? undefined : oneShot;
  }

  /**
   * The request's observer, also telling a one-shot connector that learns (the lanes) what a read
   * it did not take took on the sessions, once `statements` (plus `extra`: BEGIN, COMMIT) ran.
   */
  #learning(statements: readonly Statement[], extra = 0): QueryObserver {
    const learn = this.#core.oneShot?.connector.learn?.bind(this.#core.oneShot.connector);
    const o = this.#observer;
    if (!learn) return o;
    let ms = 0;
    let seen = 0;
    return {
      intent: o.intent,
      deadline: o.deadline,
      signal: o.signal,
      internal: o.internal,
      span: o.span,
      acquired: (waitMs, opened) => o.acquired(waitMs, opened),
      served: (kind) => o.served(kind),
      retried: o.retried && (() => o.retried!()),
      queried(durationMs, count) {
        o.queried(durationMs, count);
        ms += durationMs;
        if (++seen === statements.length + extra) learn(statements, ms);
      },
    };
  }

  #sessions(): SessionRunner {
    const sessions = this.#core.sessions;
    if (!sessions)
      throw new AppError(500, 'internal', 'This backend runs no interactive transactions (one-shot queries and batches only).');
    this.#observer.served(sessions.connector.kind);
    return sessions;
  }

  #sourceOf(sessions: SessionRunner): SessionSource {
    return (this.#source ??= sessions.connector.source());
  }
}
