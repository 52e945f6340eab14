/**
 * A circuit breaker per upstream (the pg Pool, Neon HTTP, the edge → Node forwarder). It counts
 * only failures `isFailure` accepts — connection-class ones: a constraint violation says nothing
 * about the upstream's health — opens after `threshold` of them in a row, answers 503 +
 * Retry-After at once while open, lets one probe through after `halfOpenAfterMs`, and closes
 * again when the probe succeeds (or re-opens when it fails).
 *
 * Home-made, not cockatiel: cockatiel 4 does load in workerd 1.20261117 (statically or lazily; 3.x
 * did not), but this one derives its state from timestamps with an injectable clock and reports
 * straight into /stats — the small part poolgate needs, without a timer or a dependency.
 */
import { AppError } from '../errors.js';
import { now as monotonic } from '../stats/clock.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface BreakerOptions {
  /** Which failures count against the upstream. */
  isFailure: (err: unknown) => boolean;
  /** Consecutive counted failures that open the breaker. */
  threshold?: number;
  halfOpenAfterMs?: number;
  now?: () => number;
}

export interface BreakerSnapshot {
  name: string;
  state: BreakerState;
  openedCount: number;
  rejectedCount: number;
}

export interface Breaker {
  readonly name: string;
  execute<T>(fn: () => Promise<T>): Promise<T>;
  state(): BreakerState;
  snapshot(): BreakerSnapshot;
}

export function createBreaker(name: string, options: BreakerOptions): Breaker {
  const threshold = options.threshold ?? 5;
  const halfOpenAfterMs = options.halfOpenAfterMs ?? 5_000;
  const now = options.now ?? monotonic;
  const retryAfterSec = Math.max(1, Math.ceil(halfOpenAfterMs / 1000));

  let failures = 0;
  let openedAt: number | undefined; // set while open or half-open
  let probing = false;
  let openedCount = 0;
  let rejectedCount = 0;

  const state = (): BreakerState => {
    if (openedAt === undefined) return 'closed';
    return now() - openedAt >= halfOpenAfterMs ? 'half-open' : 'open';
  };

  const open = () => {
    openedAt = now();
    openedCount++;
  };

  return {
    name,
    async execute<T>(fn: () => Promise<T>): Promise<T> {
      const s = state();
      if (s === 'open' || (s === 'half-open' && probing)) {
        rejectedCount++;
        throw new AppError(503, 'circuit_open', `The ${name} upstream is failing; not trying it for a moment.`, { retryAfterSec });
      }
      const probe = s === 'half-open';
      if (probe) probing = true;
      try {
        const result = await fn();
        failures = 0;
        openedAt = undefined;
        return result;
      } catch (err) {
        if (options.isFailure(err)) {
          failures++;
          if (probe || (openedAt === undefined && failures >= threshold)) open();
        } else {
          // The upstream answered (with an error of the caller's making): it is reachable.
          failures = 0;
          if (probe) openedAt = undefined;
        }
        throw err;
      } finally {
        if (probe) probing = false;
      }
    },
    state,
    snapshot: () => ({ name, state: state(), openedCount, rejectedCount }),
  };
}
