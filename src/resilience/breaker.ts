/**
 * A circuit breaker per upstream (the pg Pool, Neon HTTP, the edge → Node forwarder), on
 * cockatiel (pure JS: runs on Node, workerd and Deno). It counts only connection-class failures
 * (a constraint violation says nothing about the upstream's health), opens after a burst of
 * them, answers 503 + Retry-After at once while open, lets one probe through after
 * `halfOpenAfterMs`, and closes again on its success.
 */
import { BrokenCircuitError, CircuitState, circuitBreaker, ConsecutiveBreaker, handleWhen, IsolatedCircuitError } from 'cockatiel';
import { AppError } from '../errors.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface BreakerOptions {
  /** Which failures count against the upstream. */
  isFailure: (err: unknown) => boolean;
  /** Consecutive counted failures that open the breaker. */
  threshold?: number;
  halfOpenAfterMs?: number;
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

const STATE: Record<CircuitState, BreakerState> = {
  [CircuitState.Closed]: 'closed',
  [CircuitState.Open]: 'open',
  [CircuitState.HalfOpen]: 'half-open',
  [CircuitState.Isolated]: 'open',
};

export function createBreaker(name: string, options: BreakerOptions): Breaker {
  const halfOpenAfterMs = options.halfOpenAfterMs ?? 5_000;
  const policy = circuitBreaker(handleWhen(options.isFailure), {
    halfOpenAfter: halfOpenAfterMs,
    breaker: new ConsecutiveBreaker(options.threshold ?? 5),
  });
  let openedCount = 0;
  let rejectedCount = 0;
  policy.onBreak(() => openedCount++);
  const retryAfterSec = Math.max(1, Math.ceil(halfOpenAfterMs / 1000));

  return {
    name,
    async execute<T>(fn: () => Promise<T>): Promise<T> {
      try {
        return await policy.execute(fn);
      } catch (err) {
        if (err instanceof BrokenCircuitError || err instanceof IsolatedCircuitError) {
          rejectedCount++;
          throw new AppError(503, 'circuit_open', `The ${name} upstream is failing; not trying it for a moment.`, { retryAfterSec, cause: err });
        }
        throw err;
      }
    },
    state: () => STATE[policy.state],
    snapshot: () => ({ name, state: STATE[policy.state], openedCount, rejectedCount }),
  };
}
