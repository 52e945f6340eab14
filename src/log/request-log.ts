/**
 * What is logged per request, bounded under load. At `debug` every request gets its line. At
 * `info` only those worth a look do — a server error (5xx) or a slow request (LOG_SLOW_MS) — and
 * only the first of each kind (route, status, error code) per interval: the rest are counted, and
 * one `requests` line per interval sums them up (how many, by status class, how many not written).
 * A burst of 237 shed requests is then two lines, not 237: the log must not become the next
 * bottleneck of an overload. The first request of a quiet spell arms one timer (unref'd, cleared
 * on close); no requests, no line. An edge isolate may drop a timer with the request that set it,
 * so a request that comes after the interval's end writes the summary first.
 */
import { logs, type EntryLevel, type Log } from './logger.js';

export interface RequestEntry {
  requestId: string;
  method: string;
  /** The route pattern that matched ('(unmatched)' for a 404/405). */
  route: string;
  status: number;
  durationMs: number;
  dbMs: number;
  acquireMs: number;
  /** Which client served it (pool, lane, neon-http, …, or none). */
  client: string;
  queries: number;
  retries: number;
  /** A failed request's stable error code, and what caused it (never shown to the caller). */
  code?: string;
  cause?: string;
  /** The read cache's outcome, on a cached route. */
  cache?: string;
}

export interface RequestLogOptions {
  log: Log;
  /** A request at least this slow is logged at `info` (default 1000 ms). */
  slowMs?: number;
  /** How often at most a summary line is written (default 60 s). */
  intervalMs?: number;
}

const round = (ms: number) => Math.round(ms * 100) / 100;

export class RequestLog {
  readonly #log: Log;
  readonly #slowMs: number;
  readonly #intervalMs: number;
  readonly #debug: boolean;
  #seen = new Set<string>();
  #counts = { total: 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0, slow: 0, unwritten: 0 };
  #timer: ReturnType<typeof setTimeout> | undefined;
  #endsAt = 0;
  #closed = false;

  constructor({ log, slowMs = 1000, intervalMs = 60_000 }: RequestLogOptions) {
    this.#log = log;
    this.#slowMs = slowMs;
    this.#intervalMs = intervalMs;
    this.#debug = logs(log, 'debug');
  }

  /** Whether anything is written at all (LOG_LEVEL=silent: no). */
  get active(): boolean {
    return logs(this.#log, 'error');
  }

  record(entry: RequestEntry): void {
    if (this.#closed || !this.active) return;
    if (this.#timer !== undefined && Date.now() >= this.#endsAt) this.flush();
    const failed = entry.status >= 500;
    const slow = entry.durationMs >= this.#slowMs;
    this.#count(entry.status, slow);
    if (this.#debug) return this.#write(entry, failed ? 'error' : slow ? 'warn' : 'debug');
    if (!failed && !slow) return;
    const kind = `${entry.route} ${entry.status} ${entry.code ?? ''}${failed ? '' : ' slow'}`;
    if (this.#seen.has(kind)) {
      this.#counts.unwritten++;
      return;
    }
    this.#seen.add(kind);
    this.#write(entry, failed ? 'error' : 'warn');
  }

  #write(e: RequestEntry, level: EntryLevel): void {
    const outcome = e.code ? `${e.status} ${e.code}${e.cause ? ` (${e.cause})` : ''}` : `${e.status}`;
    this.#log(
      `request ${e.requestId} ${e.method} ${e.route} → ${outcome} in ${Math.round(e.durationMs)} ms`,
      {
        event: 'request',
        requestId: e.requestId,
        method: e.method,
        route: e.route,
        status: e.status,
        code: e.code,
        cause: e.cause,
        client: e.client,
        durationMs: round(e.durationMs),
        dbMs: round(e.dbMs),
        acquireMs: round(e.acquireMs),
        queries: e.queries,
        retries: e.retries,
        cache: e.cache,
      },
      level,
    );
  }

  #count(status: number, slow: boolean): void {
    const c = this.#counts;
    c.total++;
    const cls = `${Math.min(5, Math.max(2, Math.floor(status / 100)))}xx` as '2xx';
    c[cls]++;
    if (slow) c.slow++;
    if (this.#timer) return;
    this.#endsAt = Date.now() + this.#intervalMs;
    this.#timer = setTimeout(() => this.flush(), this.#intervalMs);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  /** Writes the summary since the last one, if there were requests, and starts a new interval. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const c = this.#counts;
    if (c.total === 0) return;
    this.#counts = { total: 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0, slow: 0, unwritten: 0 };
    this.#seen = new Set();
    // Only worth a line at info when something went wrong or was left out; at debug every request had its own.
    const level: EntryLevel = c['5xx'] > 0 || c.unwritten > 0 ? 'warn' : 'info';
    this.#log(
      `requests in the last ${Math.round(this.#intervalMs / 1000)} s: ${c.total} (2xx ${c['2xx']}, 3xx ${c['3xx']}, 4xx ${c['4xx']}, 5xx ${c['5xx']}; slow ${c.slow}; ${c.unwritten} failed or slow not logged one by one)`,
      { event: 'requests', intervalMs: this.#intervalMs, ...c },
      level,
    );
  }

  /** Writes what is counted and stops; later requests are not logged. Harmless twice. */
  close(): void {
    if (this.#closed) return;
    this.flush();
    this.#closed = true;
  }
}
