/**
 * A circuit breaker per upstream (the pg Pool, Neon HTTP, the edge → Node forwarder). It counts
 * only failures `isFailure` accepts — connection-class ones: a constraint violation says nothing
 * about the upstream's health — opens after `threshold` of them in a row, answers 503 +
 * Retry-After at once while open, lets one probe through when the wait is over, and closes again
 * when the probe succeeds (or re-opens, for twice as long, when it fails).
 *
 * The wait is short and grows: a restarted database is back within a second, and a fixed long
 * wait turned a 0.45 s restart into 5 s of 503s; one probe per wait costs a down upstream little.
 * It is jittered so that many processes opened by the same outage do not probe in step.
 *
 * Home-made, not cockatiel: cockatiel 4 does load in workerd 1.20261117 (statically or lazily; 3.x
 * did not), but this one derives its state from timestamps with an injectable clock and reports
 * straight into /stats — the small part poolgate needs, without a timer or a dependency.
 */
import { AppError, describeError } from '../errors.js';
import { now as monotonic } from '../stats/clock.js';
import type { Log } from '../log/logger.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface BreakerOptions {
  /** Which failures count against the upstream. */
  isFailure: (err: unknown) => boolean;
  /** Consecutive counted failures that open the breaker. */
  threshold?: number;
  /** The wait from opening to the first probe, before jitter; it doubles per failed probe. */
  probeAfterMs?: number;
  /** The longest wait between probes, before jitter. */
  maxProbeAfterMs?: number;
  now?: () => number;
  /** Uniform in [0, 1): the jitter. */
  random?: () => number;
  /** Told of each transition (for the log): opened (again), probing, closed. */
  onChange?: (change: BreakerChange) => void;
}

export interface BreakerChange {
  name: string;
  to: BreakerState;
  /** Opened: the wait before the next probe, and the failure that opened it. */
  probeAfterMs?: number;
  cause?: unknown;
  /** Probes failed in a row so far. */
  failedProbes: number;
}

/**
 * An onChange that writes each transition as a `breaker` line (opened: warn; probing, closed: info).
 * At most a few per probe wait: never one per request.
 */
export function logBreakerChanges(log: Log, next?: (change: BreakerChange) => void): (change: BreakerChange) => void {
  return (change) => {
    next?.(change);
    const { name, to, probeAfterMs, failedProbes } = change;
    const cause = change.cause === undefined ? undefined : describeError(change.cause);
    const msg =
      to === 'open'
        ? `poolgate: breaker ${name} opened (${cause}); next probe in ${probeAfterMs} ms`
        : to === 'half-open'
          ? `poolgate: breaker ${name} half-open; probing`
          : `poolgate: breaker ${name} closed`;
    log(msg, { event: 'breaker', breaker: name, state: to, probeAfterMs, failedProbes, cause }, to === 'open' ? 'warn' : 'info');
  };
}

/** Everything but what counts as a failure: what a Database's owner may tune (tests fake the clock). */
export type BreakerTuning = Omit<BreakerOptions, 'isFailure'>;

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

/** Waits are cut by up to this share at random (never lengthened: the cap stays a cap). */
const JITTER = 0.6;

/** The wait before the next probe after `failedProbes` failed ones: base·2^n, capped, jittered down. */
export function probeDelayMs(failedProbes: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  return Math.round(Math.min(capMs, baseMs * 2 ** failedProbes) * (1 - JITTER * random()));
}

/** Work our side abandoned (its client left, the process is shutting down) says nothing about the upstream. */
const abandoned = (err: unknown) => err instanceof AppError && (err.code === 'client_closed' || err.code === 'shutting_down');

export function createBreaker(name: string, options: BreakerOptions): Breaker {
  const threshold = options.threshold ?? 5;
  const baseMs = options.probeAfterMs ?? 250;
  const capMs = options.maxProbeAfterMs ?? 3_000;
  const now = options.now ?? monotonic;
  const random = options.random ?? Math.random;

  let failures = 0;
  let failedProbes = 0;
  let probeAt: number | undefined; // set while open or half-open: when a probe may go
  let probing = false;
  let lastFailure: unknown;
  let openedCount = 0;
  let rejectedCount = 0;

  const state = (): BreakerState => {
    if (probeAt === undefined) return 'closed';
    return now() < probeAt ? 'open' : 'half-open';
  };

  // The jitter is drawn here, once per opening, so that state() depends on the clock alone.
  const open = () => {
    const probeAfterMs = probeDelayMs(failedProbes, baseMs, capMs, random);
    probeAt = now() + probeAfterMs;
    openedCount++;
    options.onChange?.({ name, to: 'open', probeAfterMs, cause: lastFailure, failedProbes });
  };

  const close = () => {
    if (probeAt !== undefined) options.onChange?.({ name, to: 'closed', failedProbes });
    failures = 0;
    failedProbes = 0;
    probeAt = undefined;
  };

  const refuse = () => {
    rejectedCount++;
    const retryAfterSec = Math.max(1, Math.ceil(((probeAt ?? 0) - now()) / 1000));
    return new AppError(503, 'circuit_open', `The ${name} upstream is failing; not trying it for a moment.`, {
      retryAfterSec,
      cause: lastFailure,
    });
  };

  const failed = (err: unknown, probe: boolean) => {
    if (abandoned(err)) return;
    if (!options.isFailure(err)) {
      // The upstream answered (with an error of the caller's making): it is reachable.
      failures = 0;
      if (probe) close();
      return;
    }
    lastFailure = err;
    failures++;
    if (probe) failedProbes++;
    if (probe || (probeAt === undefined && failures >= threshold)) open();
  };

  return {
    name,
    async execute<T>(fn: () => Promise<T>): Promise<T> {
      const s = state();
      if (s === 'open' || (s === 'half-open' && probing)) throw refuse();
      const probe = s === 'half-open';
      if (probe) {
        probing = true;
        options.onChange?.({ name, to: 'half-open', failedProbes });
      }
      try {
        const result = await fn();
        close();
        return result;
      } catch (err) {
        failed(err, probe);
        throw err;
      } finally {
        if (probe) probing = false;
      }
    },
    state,
    snapshot: () => ({ name, state: state(), openedCount, rejectedCount }),
  };
}
