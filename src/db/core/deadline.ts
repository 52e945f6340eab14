/**
 * A request's deadline and its client's presence, as one thing to watch. Database work, the
 * edge's Neon fetches and its forwards all arm a watch around their I/O: when the deadline passes
 * or the client goes away, the watch fires once (cancel the statement, abort the fetch), and
 * `disarm()` tells the caller whether it did, so a cancelled session is never reused.
 */
import { AppError, clientClosed, deadlinePassed } from '../../errors.js';
import { now } from '../../stats/clock.js';

export interface Deadline {
  /** When the work must be finished by (the clock's ms). */
  readonly deadline?: number;
  /** Aborts when the client goes away. */
  readonly signal?: AbortSignal;
}

export type FireReason = 'deadline' | 'aborted';

export interface Watch {
  /** Stops watching; says why it fired, if it did. */
  disarm(): FireReason | undefined;
}

/** Time left before `d`'s deadline; throws at once when it has passed or the client is gone. */
export function remainingMs(d: Deadline): number {
  if (d.signal?.aborted) throw abortedError(d);
  if (d.deadline === undefined) return Infinity;
  const left = d.deadline - now();
  if (left <= 0) throw deadlinePassed();
  return left;
}

/**
 * Calls `fire` once when `d`'s deadline (capped at `capMs` from now) passes or its signal aborts.
 * @example
 * const watch = watchDeadline(observer, () => session.cancel());
 * try { await session.query(…) } finally { cancelled = watch.disarm() !== undefined }
 */
export function watchDeadline(d: Deadline, fire: (why: FireReason) => void, capMs = Infinity): Watch {
  let fired: FireReason | undefined;
  const trip = (why: FireReason) => {
    if (fired) return;
    fired = why;
    fire(why);
  };
  const left = Math.min(capMs, d.deadline === undefined ? Infinity : d.deadline - now());
  const timer = Number.isFinite(left) ? setTimeout(() => trip('deadline'), Math.max(0, left)) : undefined;
  (timer as { unref?: () => void } | undefined)?.unref?.();
  const onAbort = () => trip('aborted');
  if (d.signal?.aborted) trip('aborted');
  else d.signal?.addEventListener('abort', onAbort, { once: true });
  return {
    disarm() {
      clearTimeout(timer);
      d.signal?.removeEventListener('abort', onAbort);
      return fired;
    },
  };
}

/** Why `d`'s signal aborted, as the API answers it: the aborter's own AppError (503 shutting_down), else the client left (499). */
const abortedError = (d: Deadline): AppError => (d.signal?.reason instanceof AppError ? d.signal.reason : clientClosed());

/** The error for work a watch cut short: a 504 at the deadline, else why the signal aborted. */
export const cutShort = (why: FireReason, d: Deadline, cause?: unknown): AppError =>
  why === 'aborted' ? abortedError(d) : deadlinePassed(cause);

/**
 * Runs `run` with an AbortSignal that aborts at `d`'s deadline (or `capMs`), or when the client
 * goes away; an abort becomes the matching AppError. For fetch-based I/O (Neon HTTP, forwards).
 */
export async function withAbort<T>(
  d: Deadline,
  capMs: number,
  run: (signal: AbortSignal) => Promise<T>,
  cut: (why: FireReason, cause: unknown) => unknown = (why, cause) => cutShort(why, d, cause),
): Promise<T> {
  remainingMs(d);
  const controller = new AbortController();
  const watch = watchDeadline(d, () => controller.abort(), capMs);
  try {
    return await run(controller.signal);
  } catch (err) {
    const why = watch.disarm();
    throw why ? cut(why, err) : err;
  } finally {
    watch.disarm();
  }
}
