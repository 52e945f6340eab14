/**
 * One round trip to the database, timed once for everyone who reports it: the request's observer
 * (its query count and DB time) and OpenTelemetry (a span per statement, the operation-duration
 * histogram), failed or not. Both runners (sessions, one-shot) call it around the driver's call.
 */
import { now } from '../../stats/clock.js';
import { startDbCall } from '../../stats/otel.js';
import type { QueryObserver, Statement } from '../types.js';

/** Runs `run`, the round trip of `what` (a statement's text, or a batch) on `pool`; `statements`: how many it counts as (default one). */
export async function roundTrip<T>(
  observer: QueryObserver,
  what: string | readonly Statement[],
  pool: string,
  run: () => Promise<T>,
  statements?: number,
): Promise<T> {
  const call = startDbCall(observer, what, pool);
  const started = now();
  let failed: unknown;
  try {
    return await run();
  } catch (err) {
    failed = err ?? new Error('undefined thrown');
    throw err;
  } finally {
    const ms = now() - started;
    observer.queried(ms, statements);
    call?.end(ms, failed);
  }
}
