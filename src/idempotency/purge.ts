/**
 * Keeps the idempotency table from growing (expired records are ignored already): a purge at
 * most every `intervalMs`, never two at once. The Node gateway runs it on a timer; a Netlify
 * function, which has no life between invocations, asks on each invocation whether one is due.
 */
import type { Log } from '../log/logger.js';
import type { Database, QueryObserver } from '../db/types.js';
import { describeError } from '../errors.js';
import { now } from '../stats/clock.js';
import { purgeExpiredKeys } from './idempotency.js';

const INTERNAL: QueryObserver = { acquired() {}, queried() {}, served() {}, internal: true };

export class IdempotencyPurger {
  readonly #database: Database;
  readonly #intervalMs: number;
  readonly #log: Log;
  #lastAt: number;
  #running: Promise<void> | undefined;

  constructor(database: Database, intervalMs: number, log: Log) {
    this.#database = database;
    this.#intervalMs = intervalMs;
    this.#log = log;
    this.#lastAt = now();
  }

  /** Starts a purge if one is due and none is running; never throws. */
  runIfDue(): Promise<void> | undefined {
    if (this.#running || now() - this.#lastAt < this.#intervalMs) return this.#running;
    this.#lastAt = now();
    this.#running = purgeExpiredKeys(this.#database.forRequest(INTERNAL))
      .then(
        (n) => void (n > 0 && this.#log(`poolgate: purged ${n} expired idempotency records`, { event: 'idempotency.purged', count: n })),
        (err) =>
          this.#log(
            `poolgate: purging idempotency records failed (${describeError(err)}); will retry`,
            { event: 'idempotency.purge_failed' },
            'warn',
          ),
      )
      .finally(() => (this.#running = undefined));
    return this.#running;
  }

  /** Runs `runIfDue` on a timer that does not keep the process alive; returns the stop function. */
  start(): () => void {
    const timer = setInterval(() => void this.runIfDue(), this.#intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }
}
