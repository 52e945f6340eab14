/**
 * Work without a session (Neon HTTP, the pipelined lanes): one statement, or a batch in one
 * transaction, each in one round trip, through the breaker (and an admission gate where the
 * connector has fixed room), aborted at the request's deadline or when its client leaves.
 * A single statement of a `read` route may run again after a lost connection, and a batch (one
 * transaction) where a transaction would; nothing else does (a fetch that failed may still have
 * run its statement).
 */
import { isConnectionError } from '../../errors.js';
import { createBreaker, type Breaker, type BreakerTuning } from '../../resilience/breaker.js';
import { admissionOf, Gate, priorityOf, type GateOptions, type Release, type ShedReason } from '../../resilience/gate.js';
import { RetryBudget, withRetry } from '../../resilience/retry.js';
import { now } from '../../stats/clock.js';
import { recordWait } from '../../stats/otel.js';
import type { AdmissionStats, QueryObserver, QueryResult, Statement, TxOptions } from '../types.js';
import type { OneShotConnector } from './connector.js';
import { cutShort, remainingMs, withAbort } from './deadline.js';
import { roundTrip } from './round-trip.js';

export interface OneShotRunnerOptions {
  /** Upper bound for one round trip, inside the request's deadline. */
  timeoutMs: number;
  /** Bounded wait and FIFO queue in front of a connector of fixed capacity (the pipelined lanes); none for HTTP. */
  admission?: GateOptions;
  /** Told of each request the admission gate shed (the shed log counts them). */
  onShed?: (reason: ShedReason) => void;
  budget: RetryBudget;
  breaker?: Breaker;
  /** For the breaker created when none is given. */
  breakerOptions?: BreakerTuning;
}

export class OneShotRunner {
  readonly connector: OneShotConnector;
  readonly breaker: Breaker;
  readonly #options: OneShotRunnerOptions;
  readonly #gate: Gate | undefined;

  constructor(connector: OneShotConnector, options: OneShotRunnerOptions) {
    this.connector = connector;
    this.#options = options;
    this.#gate = options.admission && new Gate(options.admission);
    if (this.#gate) this.#gate.onShed = options.onShed;
    this.breaker = options.breaker ?? createBreaker(connector.upstream, { ...options.breakerOptions, isFailure: isConnectionError });
  }

  query(observer: QueryObserver, statement: Statement): Promise<QueryResult> {
    return this.#admitted(observer, () =>
      withRetry(() => this.#timed(observer, statement.text, 1, (signal) => this.connector.query(statement, signal)), {
        scope: observer.intent === 'read' ? 'read' : 'write',
        budget: this.#options.budget,
        deadline: observer.deadline,
        now,
        onRetry: () => observer.retried?.(),
      }),
    );
  }

  /** A batch is one transaction: it runs again, whole, where a transaction would (40001/40P01, or marked rerunnable). */
  batch(observer: QueryObserver, statements: readonly Statement[], options: TxOptions): Promise<QueryResult[]> {
    return this.#admitted(observer, () =>
      withRetry(() => this.#timed(observer, statements, statements.length, (signal) => this.connector.batch(statements, options, signal)), {
        scope: 'transaction',
        budget: this.#options.budget,
        deadline: observer.deadline,
        now,
        onRetry: () => observer.retried?.(),
      }),
    );
  }

  /** `run` once admitted; the permit goes back after, telling the gate whether the work succeeded. */
  async #admitted<T>(observer: QueryObserver, run: () => Promise<T>): Promise<T> {
    const release = await this.#admit(observer);
    let ok = false;
    try {
      const result = await run();
      ok = true;
      return result;
    } finally {
      release?.(ok); // a failed attempt's hold says nothing of how long work takes
    }
  }

  get waiting(): number {
    return this.#gate?.waiting ?? 0;
  }

  get gateFigures(): { acquireTimeoutCount: number; queueRejectedCount: number; admission: AdmissionStats } | undefined {
    const gate = this.#gate;
    return gate && { acquireTimeoutCount: gate.timedOutCount, queueRejectedCount: gate.rejectedCount, admission: admissionOf(gate) };
  }

  close(): void {
    this.#gate?.close();
  }

  /** Times the round trip itself: a call refused before one (deadline, client gone, breaker) ran no statement. */
  #timed<T>(
    observer: QueryObserver,
    what: string | readonly Statement[],
    statements: number,
    run: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    return withAbort(observer, this.#options.timeoutMs, (signal) =>
      this.breaker.execute(async () => {
        try {
          return await roundTrip(observer, what, this.connector.upstream, () => run(signal), statements);
        } catch (err) {
          // Aborted because the client left: neutral for the breaker (a deadline still counts).
          throw observer.signal?.aborted ? cutShort('aborted', observer, err) : err;
        }
      }),
    );
  }

  /**
   * First come, first served when the connector is at capacity: a wait bounded by the gate and the
   * deadline, reported as the request's acquire wait (nothing is reported when no wait was needed).
   */
  #admit(observer: QueryObserver): Promise<Release | undefined> | undefined {
    const gate = this.#gate;
    if (!gate) return undefined;
    const queued = gate.held >= this.#options.admission!.permits || gate.waiting > 0;
    const started = now();
    const admitted = gate.acquire({ remainingMs: remainingMs(observer), signal: observer.signal, priority: priorityOf(observer) });
    if (!queued) return admitted;
    return admitted.then((release) => {
      const waitMs = now() - started;
      observer.acquired(waitMs, false);
      if (!observer.internal) recordWait(this.connector.upstream, waitMs);
      return release;
    });
  }
}
