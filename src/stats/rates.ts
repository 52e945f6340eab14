/**
 * Rates between two polls of /stats, the rule the dashboard and `poolgate stats --watch` share: a
 * counter's change means something only between two answers of the same process (or isolate) —
 * across a restart the counters start again from zero and would read as negative rates.
 */
import type { StatsSnapshot } from './registry.js';

/** Two polls answered by the same process (or isolate): same scope and start. */
export const sameProcess = (a: Pick<StatsSnapshot, 'scope' | 'startedAt'>, b: Pick<StatsSnapshot, 'scope' | 'startedAt'>): boolean =>
  a.scope === b.scope && a.startedAt === b.startedAt;

/** Per second from `before` to `now` over `seconds`; undefined for a missing figure, a counter that went down, or no time. */
export function perSecond(now: number | undefined, before: number | undefined, seconds: number): number | undefined {
  if (now === undefined || before === undefined || now < before || seconds <= 0) return undefined;
  return (now - before) / seconds;
}
