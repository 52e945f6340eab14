/**
 * Cumulative latency histograms for /metrics: counts since start in fixed buckets, so the series of
 * several instances add up (`sum by (le) (rate(…_bucket[5m]))`) where quantiles of recent samples
 * cannot. One set of bounds for every histogram poolgate renders, chosen once: from half a
 * millisecond (a cache hit, an idle pool's acquire) to ten seconds (past the default request
 * deadline), roughly 1–2.5–5 per decade as Prometheus' own defaults. Changing them changes every
 * dashboard built on `le`, so they stay put. Memory is fixed: one count per bucket, a sum and a count.
 */

/** Upper bounds in milliseconds (what poolgate measures); rendered as `le` in seconds. */
export const BUCKET_BOUNDS_MS = [0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000] as const;

/** The `le` labels, in seconds, in the order of BUCKET_BOUNDS_MS, then `+Inf`. */
export const BUCKET_LABELS: readonly string[] = [...BUCKET_BOUNDS_MS.map((ms) => String(ms / 1000)), '+Inf'];

export interface HistogramSnapshot {
  /** Cumulative counts: observations at or below each bound of BUCKET_LABELS (the last, `+Inf`, is `count`). */
  cumulative: number[];
  sumSeconds: number;
  count: number;
}

export class Histogram {
  /** Observations per bucket (not cumulative: one increment per observation); the last is above every bound. */
  readonly #counts = new Float64Array(BUCKET_BOUNDS_MS.length + 1);
  #sumMs = 0;

  observe(ms: number): void {
    const v = ms > 0 ? ms : 0; // a clock step or NaN counts as instant, not as a negative sum
    let i = 0;
    while (i < BUCKET_BOUNDS_MS.length && v > BUCKET_BOUNDS_MS[i]!) i++;
    this.#counts[i]!++;
    this.#sumMs += v;
  }

  snapshot(): HistogramSnapshot {
    const cumulative: number[] = [];
    let running = 0;
    for (const n of this.#counts) cumulative.push((running += n));
    return { cumulative, sumSeconds: this.#sumMs / 1000, count: running };
  }
}
