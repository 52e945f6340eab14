/**
 * Shedding, logged as one summary line per interval with counts — never a line per request: under
 * an overload the gate may shed thousands a second, and a line each would make the log the next
 * bottleneck. The first shed of a quiet spell arms one timer (unref'd, cleared on close); when it
 * fires, the counts since are written on one line and reset. Nothing shed, nothing written.
 */
import type { ShedReason } from './gate.js';
import type { Log } from '../log/logger.js';

export interface ShedLogOptions {
  log: Log;
  /** How often at most a line is written (default 10 s). */
  intervalMs?: number;
}

const REASONS: readonly ShedReason[] = ['wait', 'deadline', 'overload', 'queue_full'];

export class ShedLog {
  readonly #log: Log;
  readonly #intervalMs: number;
  /** Counts since the last line, per admission path ('pool', 'lanes') and reason. */
  #counts = new Map<string, Record<ShedReason, number>>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  constructor({ log, intervalMs = 10_000 }: ShedLogOptions) {
    this.#log = log;
    this.#intervalMs = intervalMs;
  }

  /** Counts one shed request on `path`; the line follows within the interval. */
  count(path: string, reason: ShedReason): void {
    if (this.#closed) return;
    let counts = this.#counts.get(path);
    if (!counts) this.#counts.set(path, (counts = { wait: 0, deadline: 0, overload: 0, queue_full: 0 }));
    counts[reason]++;
    if (this.#timer) return;
    this.#timer = setTimeout(() => this.flush(), this.#intervalMs);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  /** Writes the counts since the last line, if any, and starts a new interval. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#counts.size === 0) return;
    const shed: Record<string, Record<ShedReason, number> & { total: number }> = {};
    const parts = [...this.#counts].map(([path, c]) => {
      const total = REASONS.reduce((n, r) => n + c[r], 0);
      shed[path] = { ...c, total };
      return `${path} ${total} (${REASONS.map((r) => `${r} ${c[r]}`).join(', ')})`;
    });
    this.#counts = new Map();
    this.#log(
      `poolgate: shed requests with 503 overloaded in the last ${Math.round(this.#intervalMs / 1000)} s: ${parts.join('; ')}`,
      { event: 'shed', intervalMs: this.#intervalMs, shed },
      'warn',
    );
  }

  /** Writes what is counted and stops; later sheds are not logged. Harmless twice. */
  close(): void {
    if (this.#closed) return;
    this.flush();
    this.#closed = true;
  }
}
