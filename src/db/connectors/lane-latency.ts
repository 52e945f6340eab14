/**
 * What is known of how long a read takes, per statement text (a read batch: its texts together),
 * so the lanes take only what cannot stall the reads written behind it. A read's time is its
 * service time (on a lane: from its turn to its answer, not its wait behind others; on the pool:
 * the statements' own time), kept as a recent high: a slow sample counts at once, and fades by a
 * tenth with each faster one, so a text slow one time in ten stays slow and one that became fast
 * comes back to the lanes after a few runs on the pool. A text's first run is counted at most at
 * the threshold: it parses and plans (and may meet a cold cache), which later runs do not, so a
 * read is known slow from its second slow run.
 */

/** A read whose recent high is above this goes to the pool, not a lane (a few index lookups fit). */
export const SLOW_READ_MS = 5;
/** A read never seen is guessed at this (what a lane's queue in time counts for it). */
const UNKNOWN_MS = 1;
const FADE = 0.9;
/** Texts remembered, at most (the oldest forgotten first). */
const KEYS_MAX = 1_000;

export class LaneLatency {
  readonly #recentHigh = new Map<string, number>();

  constructor(readonly slowMs = SLOW_READ_MS) {}

  /** The key of a statement, or of a batch's statements. */
  static keyOf(texts: readonly string[]): string {
    return texts.length === 1 ? texts[0]! : texts.join('\u0000');
  }

  /** The time `key` is expected to take (its recent high; a guess when never seen). */
  expectedMs(key: string): number {
    return this.#recentHigh.get(key) ?? UNKNOWN_MS;
  }

  isSlow(key: string): boolean {
    return this.expectedMs(key) > this.slowMs;
  }

  record(key: string, ms: number): void {
    const high = this.#recentHigh.get(key);
    if (high === undefined && this.#recentHigh.size >= KEYS_MAX) this.#recentHigh.delete(this.#recentHigh.keys().next().value!);
    this.#recentHigh.set(key, high === undefined ? Math.min(ms, this.slowMs) : Math.max(ms, high * FADE));
  }
}
