/**
 * Work on sessions, written once for every session connector: admission (bounded wait and
 * queue), the breaker on getting a session, retries judged by the route's intent and by where
 * the attempt failed, the deadline watch that cancels on the server, begin … commit (typed, on the
 * session) with rollback on any error, the caller's transaction control refused, and the rule that a broken or cancelled session is never reused.
 */
import { failureKind, isConnectionError } from '../../errors.js';
import { createBreaker, type Breaker, type BreakerTuning } from '../../resilience/breaker.js';
import { admissionOf, Gate, priorityOf, type GateOptions, type Release, type ShedReason } from '../../resilience/gate.js';
import { isRetryable, RetryBudget, withRetry, type RetryScope } from '../../resilience/retry.js';
import { now } from '../../stats/clock.js';
import { recordUse, recordWait } from '../../stats/otel.js';
import type { AdmissionStats, QueryObserver, QueryResult, Queryable, TxOptions } from '../types.js';
import { POSITION_SQL, positionOf } from '../consistency.js';
import type { Checkout, PoolFigures, Session, SessionConnector, SessionSource } from './connector.js';
import { asRefused, refuseTransactionControl } from './statement-kind.js';
import { cutShort, remainingMs, watchDeadline, type FireReason } from './deadline.js';
import { roundTrip } from './round-trip.js';

export interface SessionRunnerOptions {
  /** Bounded wait and queue in front of a shared pool; none for a pool of one request's own. */
  admission?: GateOptions;
  /** Told of each request the admission gate shed (the shed log counts them). */
  onShed?: (reason: ShedReason) => void;
  /** The statement_timeout sessions start with; a transaction that starts later than that allows sets a tighter one. */
  sessionStatementTimeoutMs?: number;
  budget: RetryBudget;
  breaker?: Breaker;
  /** For the breaker created when none is given. */
  breakerOptions?: BreakerTuning;
  /**
   * Tell each request the primary's WAL position after its writes (`observer.committed`, the
   * consistency token): read with COMMIT in one round trip; after a transactional request's
   * single statement, in one more. On where there are replicas to read from.
   */
  positions?: boolean;
}

/** How far past the session statement timeout a transaction must already be before it pays for set_config. */
const LATE_MS = 500;

/** A session as the work on it sees it: the caller's statements, and the core's own transaction control. */
interface OnSession extends Queryable {
  begin(options: TxOptions): Promise<void>;
  commit(options?: { position?: boolean }): Promise<QueryResult & { position?: string }>;
  /** The server's WAL position now (POSITION_SQL), outside the caller's statements and the refusals. */
  position(): Promise<string | undefined>;
}

/**
 * A session whose statements report their time to the request's observer, and which sends no
 * statement once the request was cut short (a cancel that found the session between statements
 * stops nothing, so the next statement must not start). A caller's transaction control is refused
 * before it is sent (statement-kind.ts); the process's own work (migrations) runs its SQL as is.
 */
function instrument(
  session: Session,
  observer: QueryObserver,
  inTransaction: boolean,
  cut: () => FireReason | undefined,
  pool: string,
): OnSession {
  const timed = async <T>(text: string, run: () => Promise<T>): Promise<T> => {
    const why = cut();
    if (why) throw cutShort(why, observer);
    return roundTrip(observer, text, pool, run);
  };
  const script = observer.internal === true;
  return {
    async query<R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
      if (!script) refuseTransactionControl(text, inTransaction);
      try {
        return (await timed(text, () => session.query(text, params, script))) as QueryResult<R>;
      } catch (err) {
        throw asRefused(err);
      }
    },
    begin: (options) => timed('BEGIN', () => session.begin(options)),
    commit: (options) => timed('COMMIT', () => session.commit(options)),
    position: async () => positionOf(await timed(POSITION_SQL, () => session.query(POSITION_SQL))),
  };
}

/** Broken connections and client-side read timeouts (the server may still be busy) are not reused. */
const mustDiscard = (err: unknown) => isConnectionError(err) || failureKind(err) === 'read_timeout';

const rolledBackAtCommit = () =>
  Object.assign(new Error('The transaction had failed, so COMMIT rolled it back.'), { code: '25P02' /* in_failed_sql_transaction */ });

async function rolledBack(session: Session): Promise<boolean> {
  try {
    await session.rollback();
    return true;
  } catch {
    return false;
  }
}

export class SessionRunner {
  readonly connector: SessionConnector;
  readonly breaker: Breaker;
  readonly #gate: Gate | undefined;
  readonly #options: SessionRunnerOptions;
  acquisitionCount = 0;
  openedOnAcquireCount = 0;
  cancelledCount = 0;

  constructor(connector: SessionConnector, options: SessionRunnerOptions) {
    this.connector = connector;
    this.#options = options;
    this.#gate = options.admission && new Gate(options.admission);
    if (this.#gate) this.#gate.onShed = options.onShed;
    connector.onResize?.((max) => this.#gate?.resize(max));
    this.breaker =
      options.breaker ??
      createBreaker(connector.upstream, {
        ...options.breakerOptions,
        isFailure: (e) => isConnectionError(e) && !connector.isBusy?.(e),
      });
  }

  /** One statement on a session of its own. */
  statement(source: SessionSource, observer: QueryObserver, text: string, params?: readonly unknown[]): Promise<QueryResult> {
    const scope: RetryScope = observer.intent === 'read' ? 'read' : 'write';
    const tell = scope === 'write' ? this.#positionTo(observer) : undefined;
    return this.#run(source, observer, scope, false, async (tx) => {
      const result = await tx.query(text, params);
      if (tell) tell(await tx.position().catch(() => undefined)); // the statement is done: a failed look must not fail it
      return result;
    });
  }

  /** Where a request hears the position after its writes, when positions are on and it listens (a read route writes nothing to tell). */
  #positionTo(observer: QueryObserver): ((lsn: string | undefined) => void) | undefined {
    if (!this.#options.positions || !observer.committed || observer.internal || observer.intent === 'read') return undefined;
    return (lsn) => lsn !== undefined && observer.committed?.(lsn);
  }

  /** BEGIN … COMMIT around `fn`; the whole transaction runs again on 40001/40P01 or an error marked rerunnable (nothing of it applied). */
  transaction<T>(source: SessionSource, observer: QueryObserver, fn: (tx: Queryable) => Promise<T>, opts: TxOptions = {}): Promise<T> {
    return this.#run(source, observer, 'transaction', true, async (tx) => {
      await tx.begin(opts);
      await this.#tighten(tx, observer);
      const result = await fn({ query: (text, params) => tx.query(text, params) }); // the callback gets statements only, not our begin/commit
      const tell = this.#positionTo(observer);
      const commit = await tx.commit({ position: tell !== undefined });
      // A callback that caught a SQL error and carried on: the server had aborted the transaction
      // and answers COMMIT with ROLLBACK. Nothing was written, so the caller must not hear "done".
      if (commit.command === 'ROLLBACK') throw rolledBackAtCommit();
      tell?.(commit.position);
      return result;
    });
  }

  /** Admission once; then attempts, each on a fresh session, retried by where they failed. */
  async #run<T>(
    source: SessionSource,
    observer: QueryObserver,
    scope: RetryScope,
    inTransaction: boolean,
    work: (tx: OnSession) => Promise<T>,
  ): Promise<T> {
    const release = await this.#admit(observer);
    let ok = false;
    try {
      let reached = false;
      const result = await withRetry(
        async () => {
          reached = false;
          const checkout = await this.#checkout(source, observer);
          reached = true;
          return this.#onSession(checkout.session, observer, inTransaction, work);
        },
        {
          scope,
          // Before a session was had, nothing was sent: the connect rules apply whatever the work.
          retryable: (err) => isRetryable(err, reached ? scope : 'connect'),
          budget: this.#options.budget,
          deadline: observer.deadline,
          now,
          onRetry: () => observer.retried?.(),
        },
      );
      ok = true;
      return result;
    } finally {
      release(ok); // a failed attempt's hold says nothing of how long work takes
    }
  }

  /** Opens `count` sessions and gives them back, so the first requests find them ready. */
  async warm(source: SessionSource, count: number): Promise<void> {
    const checkouts = await Promise.all(Array.from({ length: count }, () => this.breaker.execute(() => source.acquire())));
    for (const { session } of checkouts) session.release(false);
  }

  get waiting(): number {
    return this.#gate?.waiting ?? 0;
  }

  get gateFigures(): { acquireTimeoutCount: number; queueRejectedCount: number; admission?: AdmissionStats } {
    const gate = this.#gate;
    return {
      acquireTimeoutCount: gate?.timedOutCount ?? 0,
      queueRejectedCount: gate?.rejectedCount ?? 0,
      ...(gate ? { admission: admissionOf(gate) } : {}),
    };
  }

  figures(): PoolFigures | undefined {
    return this.connector.figures?.();
  }

  close(): Promise<void> {
    this.#gate?.close();
    return this.connector.close();
  }

  #admit(observer: QueryObserver): Promise<Release> {
    const left = remainingMs(observer);
    if (!this.#gate) return Promise.resolve(() => {});
    return this.#gate.acquire({ remainingMs: left, signal: observer.signal, priority: priorityOf(observer) });
  }

  async #checkout(source: SessionSource, observer: QueryObserver): Promise<Checkout> {
    const started = now();
    remainingMs(observer);
    const checkout = await this.breaker.execute(() => source.acquire(observer.deadline));
    if (!observer.internal) {
      this.acquisitionCount++;
      if (checkout.opened) this.openedOnAcquireCount++;
    }
    const waitMs = now() - started;
    observer.acquired(waitMs, checkout.opened);
    if (!observer.internal) recordWait(this.connector.upstream, waitMs);
    return checkout;
  }

  async #onSession<T>(session: Session, observer: QueryObserver, inTransaction: boolean, work: (tx: OnSession) => Promise<T>): Promise<T> {
    let fired: FireReason | undefined;
    const watch = watchDeadline(observer, (why) => {
      fired = why;
      this.cancelledCount++;
      session.cancel();
    });
    let discard = false;
    const heldFrom = now();
    try {
      return await work(instrument(session, observer, inTransaction, () => fired, this.connector.upstream));
    } catch (err) {
      const why = watch.disarm();
      // A cancelled session is not rolled back and reused: a late cancel could hit the next request.
      if (why) {
        discard = true;
        throw cutShort(why, observer, err);
      }
      discard = mustDiscard(err) || (inTransaction && !(await rolledBack(session)));
      throw err;
    } finally {
      session.release(discard || watch.disarm() !== undefined);
      if (!observer.internal) recordUse(this.connector.upstream, now() - heldFrom);
    }
  }

  /** Already late (a long wait for a session): the server enforces what is left of the deadline, too. */
  async #tighten(tx: Queryable, observer: QueryObserver): Promise<void> {
    const sessionMs = this.#options.sessionStatementTimeoutMs;
    if (sessionMs === undefined || observer.deadline === undefined) return;
    const left = observer.deadline - now();
    // set_config(…, true): for this transaction only, and a SELECT (a SET tag would make the connection be replaced).
    if (left < sessionMs - LATE_MS)
      await tx.query("SELECT set_config('statement_timeout', $1, true)", [String(Math.max(1, Math.floor(left)))]);
  }
}
