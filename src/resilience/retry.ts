/**
 * The one retry decision, shared by every path. A retry is allowed only when the request
 * provably never reached the database (connect refused or timed out, no free connection,
 * too many connections, server starting up), or for a whole transaction that the server aborted
 * as a serialization failure or deadlock, or for a read-only statement, or for any attempt whose
 * error its connector marked rerunnable (it failed before it ran). Never for a caller's
 * mistake, a statement timeout, an open breaker, or past the request's deadline; and only while
 * the process-wide retry budget allows (so retries stop adding load when most calls fail).
 */
import { AppError, failureKind } from '../errors.js';

export type RetryScope =
  /** Getting a connection; nothing was sent yet. */
  | 'connect'
  /** A whole transaction, re-run from BEGIN. */
  | 'transaction'
  /** A single statement of a route declared `read`: it has no effect to repeat. */
  | 'read'
  /** A single statement of a route that may write: only what provably never reached the server. */
  | 'write';

const NEVER_REACHED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', '53300', '57P03']);
const TX_RETRYABLE = new Set(['40001', '40P01']);
/** The connection went away under a statement: admin_shutdown, a reset socket, connection_failure. */
const LOST = new Set(['57P01', 'ECONNRESET', 'EPIPE', '08006']);

const RERUNNABLE = Symbol.for('poolgate.rerunnable');
const UNCOUNTED = Symbol.for('poolgate.rerunUncounted');

/**
 * A connector's word that `err` failed its statement before it ran and that a fresh attempt will
 * not meet it again (pg-pool: a prepared statement a schema change made stale, on a connection
 * being replaced): the statement, or its whole transaction from BEGIN, may run again.
 *
 * `uncounted`: the rerun costs nothing of the retry budget and waits no backoff. For a failure
 * whose cause is switched off for every attempt after it (named statements a pooler refused): it
 * meets only the requests in flight at that moment, once each, so it cannot grow into a storm,
 * and the budget must not turn those requests into errors.
 */
export function markRerunnable<E>(err: E, { uncounted = false } = {}): E {
  if (typeof err !== 'object' || err === null) return err;
  if (!(RERUNNABLE in err)) Object.defineProperty(err, RERUNNABLE, { value: true });
  if (uncounted && !(UNCOUNTED in err)) Object.defineProperty(err, UNCOUNTED, { value: true });
  return err;
}

const isUncounted = (err: unknown) => (err as { [UNCOUNTED]?: unknown } | undefined)?.[UNCOUNTED] === true;

function codeOf(err: unknown): string {
  const c = (err as { code?: unknown } | undefined)?.code;
  return typeof c === 'string' ? c : '';
}

/** True when `err` in `scope` may be retried (before budget and deadline checks). */
export function isRetryable(err: unknown, scope: RetryScope): boolean {
  if (err instanceof AppError) return err.code === 'pool_exhausted' && scope === 'connect';
  if ((err as { [RERUNNABLE]?: unknown } | undefined)?.[RERUNNABLE] === true) return true;
  const code = codeOf(err);
  if (code === '57014') return false; // statement timeout / cancel: the work may have run
  const kind = failureKind(err); // the connector's word, where the error had no code (errors.ts)
  if (NEVER_REACHED.has(code) || (scope === 'connect' && kind === 'connect_failed')) return true;
  if (scope === 'transaction') return TX_RETRYABLE.has(code);
  if (scope === 'read') {
    // A read that failed on a dropped connection has no effect to repeat.
    return TX_RETRYABLE.has(code) || LOST.has(code) || kind === 'connection_lost';
  }
  return false;
}

/** Capped exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)). */
export function backoffMs(attempt: number, baseMs = 25, capMs = 1_000, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(capMs, baseMs * 2 ** attempt));
}

/**
 * Process-wide budget: each first attempt deposits `ratio` of a token, each retry spends one.
 * With ratio 0.1, retries can add at most ~10% load (plus a small floor for quiet periods).
 */
export class RetryBudget {
  #tokens: number;
  retriedCount = 0;
  deniedCount = 0;
  constructor(
    readonly ratio = 0.1,
    readonly maxTokens = 20,
  ) {
    this.#tokens = maxTokens;
  }
  deposit(): void {
    this.#tokens = Math.min(this.maxTokens, this.#tokens + this.ratio);
  }
  /** Spends a token, or with `free` (an uncounted rerun) none; counted as a retry either way. */
  trySpend(free = false): boolean {
    if (free) {
      this.retriedCount++;
      return true;
    }
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      this.retriedCount++;
      return true;
    }
    this.deniedCount++;
    return false;
  }
}

export interface RetryOptions {
  scope: RetryScope;
  /** Overrides the scope's rule, e.g. to judge by where the attempt failed (see src/db/core). */
  retryable?: (err: unknown) => boolean;
  budget: RetryBudget;
  maxAttempts?: number;
  /** Absolute deadline (the clock's ms) after which no new attempt starts. */
  deadline?: number;
  now: () => number;
  sleep?: (ms: number) => Promise<void>;
  onRetry?: (err: unknown, attempt: number) => void;
}

const defaultSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Runs `fn`, retrying per the rules above. */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T> {
  const maxAttempts = opts.maxAttempts ?? 3;
  opts.budget.deposit();
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (attempt + 1 >= maxAttempts || !(opts.retryable ?? ((e) => isRetryable(e, opts.scope)))(err)) throw err;
      const free = isUncounted(err);
      const wait = free ? 0 : backoffMs(attempt);
      if (opts.deadline !== undefined && opts.now() + wait >= opts.deadline) throw err;
      if (!opts.budget.trySpend(free)) throw err;
      opts.onRetry?.(err, attempt + 1);
      await (opts.sleep ?? defaultSleep)(wait);
    }
  }
}
