/**
 * What is known of how long a read takes, per statement text (a read batch: its texts together),
 * so the lanes take only what cannot stall the reads written behind it. A read's time is its
 * service time (on a lane: from its turn to its answer, not its wait behind others; on the pool:
 * the statements' own time), kept as a moving mean that gives a new sample a tenth: a text that
 * turns slow by much is slow from that sample on, one slow by much one time in ten stays slow, and
 * one that became fast comes back to the lanes after a few runs on the pool.
 *
 * Slow is relative to the machine's load. Every read's time counts toward a typical read time
 * (all texts, a slow one counted at most at the slow line), and the line is the configured one or
 * SLOW_FACTOR typical reads, whichever is higher. On a busy machine a fast read waits for the event
 * loop and the server's CPU as every other does, and the pool would serve it no sooner; only a read
 * slower than the others by far takes the pool. The same holds for a lane's queue, counted in
 * expected time: its limit is LANE_QUEUE_MS, or QUEUE_FACTOR typical reads. A busy machine raises
 * the line to BUSY_LINE_FACTOR times the configured one at most: reads slower than that are slow
 * by their own doing. Unbounded, slow reads that were a quarter or more of all reads raised the
 * typical read to their own time, and so stayed on the lanes, one at a time per lane
 * (bench:replicas: a 50 ms read route served 4 at a time with 16 pooled connections idle).
 *
 * A text's first run is counted at most at the line: it parses and plans (and may meet a cold
 * cache), which later runs do not, so a read is known slow from its second slow run.
 */

/** A read whose mean is above this goes to the pool, not a lane (a few index lookups fit). */
export const SLOW_READ_MS = 5;
/** A lane whose queue, in expected time, is longer than this takes no more. */
export const LANE_QUEUE_MS = 20;
/** On a busy machine: slow is this many typical reads, queued this many. */
const SLOW_FACTOR = 4;
const QUEUE_FACTOR = 16;
/** The most a busy machine raises the slow line: this many times the configured one. */
const BUSY_LINE_FACTOR = 4;
/** A read never seen, and the typical read before any is seen. */
const UNKNOWN_MS = 1;
/** The weight of a new sample in a text's mean, and in the typical read time. */
const TEXT_WEIGHT = 0.1;
const TYPICAL_WEIGHT = 0.01;
/** Texts remembered, at most (the oldest forgotten first). */
const KEYS_MAX = 1_000;

export class LaneLatency {
  readonly #mean = new Map<string, number>();
  #typical = UNKNOWN_MS;

  constructor(readonly slowMs = SLOW_READ_MS) {}

  /** The key of a statement, or of a batch's statements. */
  static keyOf(texts: readonly string[]): string {
    return texts.length === 1 ? texts[0]! : texts.join('\u0000');
  }

  /** The time `key` is expected to take (its mean; the typical read when never seen). */
  expectedMs(key: string): number {
    return this.#mean.get(key) ?? this.#typical;
  }

  /** Above this a read is slow: the configured line, or SLOW_FACTOR typical reads when the machine is busy (at most BUSY_LINE_FACTOR lines). */
  slowLineMs(): number {
    return Math.max(this.slowMs, Math.min(SLOW_FACTOR * this.#typical, BUSY_LINE_FACTOR * this.slowMs));
  }

  /** How long, in expected time, a lane's queue may be. */
  queueLimitMs(): number {
    return Math.max(LANE_QUEUE_MS, QUEUE_FACTOR * this.#typical);
  }

  isSlow(key: string): boolean {
    return this.expectedMs(key) > this.slowLineMs();
  }

  record(key: string, ms: number): void {
    const line = this.slowLineMs();
    this.#typical += TYPICAL_WEIGHT * (Math.min(ms, line) - this.#typical);
    const mean = this.#mean.get(key);
    if (mean === undefined && this.#mean.size >= KEYS_MAX) this.#mean.delete(this.#mean.keys().next().value!);
    this.#mean.set(key, mean === undefined ? Math.min(ms, line) : mean + TEXT_WEIGHT * (ms - mean));
  }
}
