/**
 * Per-table generations: how a process learns, without any purge API, that a cached answer is
 * outdated. Triggers (cache/triggers.ts) bump a table's generation inside every transaction that
 * writes the table, at its COMMIT, so the bump is visible exactly when the write is: never before
 * it, undone with a rollback, never lost after a COMMIT that succeeded. Each process (or edge
 * isolate) keeps one view of all generations, read from the primary with the WAL position at
 * which it was read, and reads it again when it is older than a quarter of the staleness bound
 * (in the background) or than the whole bound (before serving), or when a request needs one
 * taken after it began (a token newer than the view).
 *
 * Whether a view saw a write is not whether its position is past the write's: the position is read
 * after the statement's snapshot, so a COMMIT whose record is written but not yet visible (its
 * flush, a synchronous standby) is behind the position and missing from the generations. A view
 * saw a write when it was taken after the write was known (by time), or when the write is
 * strictly before `seesBefore` — the position the previous read found, read before this read's
 * snapshot.
 */
import type { Log } from '../log/logger.js';
import type { Database, QueryObserver } from '../db/types.js';
import { laterLsn, lsnValue } from '../db/consistency.js';

/** The generations and the primary's WAL position, read in one statement (the position is at or past every bump it saw). */
export const GENERATIONS_SQL = `SELECT COALESCE((SELECT json_object_agg(name, gen) FROM poolgate_cache_generations), '{}'::json) AS gens,
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END AS lsn`;

export interface GenerationView {
  gens: Readonly<Record<string, number>>;
  /** The primary's position when it was read: data read at or past it includes every write these generations count. */
  lsn: string | undefined;
  /** A position read before this view's snapshot (the previous read's): a write whose token is strictly before it is counted here. */
  seesBefore: string | undefined;
  /** When the read was sent (ms, monotonic clock): the view shows every write committed before. */
  takenAt: number;
}

export interface GenerationOptions {
  database: Database;
  /** The longest a committed write may go unseen by readers without its token (CACHE_MAX_STALENESS_MS). */
  maxStalenessMs: number;
  clock: () => number;
  log?: Log;
}

/**
 * The process's own read: on the primary (internal work is never sent to a replica), one-shot where
 * the backend has it (a lane on Node, Neon HTTP at the edge), and bounded, since readers wait on it.
 */
const observer = (deadline: number): QueryObserver => ({
  acquired() {},
  queried() {},
  served() {},
  internal: true,
  intent: 'read',
  deadline,
});

/** The longest a read of the generations may take; past it the cache stands aside for its readers. */
const READ_TIMEOUT_MS = 2_000;

/** How long the cache stays off after the generations could not be read (no table yet, the database down). */
const RETRY_AFTER_FAILURE_MS = 5_000;

export class Generations {
  #view: GenerationView | undefined;
  #loading: Promise<GenerationView | undefined> | undefined;
  #loadingSince = 0;
  #failedAt: number | undefined;
  #logged = false;
  refreshCount = 0;
  errorCount = 0;

  /** The position the last read found: the next read's `seesBefore`. */
  #lastLsn: string | undefined;
  /** A write this process saw commit that the view may not count yet: when it was noted, and its position. */
  #write: { lsn: string; at: number } | undefined;

  constructor(readonly options: GenerationOptions) {}

  get view(): GenerationView | undefined {
    return this.#view;
  }

  /**
   * A view fit to serve from, or undefined when none can be had (the cache is then bypassed).
   * `background` receives a refresh this call started but did not wait for (the edge keeps it alive).
   * `newerThan`: the view must have been taken after this time (a token newer than the view).
   */
  async current(opts: { newerThan?: number; background?: (p: Promise<unknown>) => void } = {}): Promise<GenerationView | undefined> {
    const now = this.options.clock();
    if (this.#failedAt !== undefined && now - this.#failedAt < RETRY_AFTER_FAILURE_MS) return undefined;
    const view = this.#view;
    if (this.#write && view && sees(view, this.#write.lsn, this.#write.at)) this.#write = undefined;
    const after = Math.max(opts.newerThan ?? -Infinity, this.#write?.at ?? -Infinity);
    const age = view ? now - view.takenAt : Infinity;
    const mustRefresh = age >= this.options.maxStalenessMs || (view !== undefined && view.takenAt <= after);
    if (!mustRefresh) {
      if (age >= this.options.maxStalenessMs / 4 && !this.#inFlight()) opts.background?.(this.#refresh());
      return view;
    }
    return this.#refreshAfter(Math.max(after, now - this.options.maxStalenessMs));
  }

  /**
   * A write this process saw commit at `lsn`: a view that may not count it is read again before
   * it serves, and so is one a refresh already under way brings (sent before the write was visible).
   */
  noteWrite(lsn: string): void {
    const view = this.#view;
    if (view && isBefore(lsn, view.seesBefore)) return;
    this.#write = { lsn: laterLsn(this.#write?.lsn, lsn) ?? lsn, at: this.options.clock() };
  }

  /**
   * The refresh in flight, unless it has been in flight for the whole staleness bound. Its I/O
   * belongs to the request that sent it, and an edge runtime cancels that I/O with its request
   * (workerd: a client gone, a request judged hung): such a refresh never settles, and must not
   * hold every later one (nor every later read with a token) for good. A view that late is of no
   * use anyway.
   */
  #inFlight(): Promise<GenerationView | undefined> | undefined {
    if (this.#loading && this.options.clock() - this.#loadingSince >= this.options.maxStalenessMs) return undefined;
    return this.#loading;
  }

  /** Joins a refresh sent after `since` (for what is left of the bound), or sends one. */
  async #refreshAfter(since: number): Promise<GenerationView | undefined> {
    const loading = this.#inFlight();
    if (!loading || this.#loadingSince <= since) return this.#refresh();
    const left = this.options.maxStalenessMs - (this.options.clock() - this.#loadingSince);
    const joined = await settledWithin(loading, left);
    return joined ? joined.value : this.#refresh({ alone: true });
  }

  /**
   * Reads the view, after the refresh in flight (one read at a time) unless `alone`; that one is
   * waited for within the bound. (A read alone keeps `seesBefore` sound: #lastLsn only ever holds
   * the answer of a read that finished before this one is sent.)
   */
  #refresh({ alone = false } = {}): Promise<GenerationView | undefined> {
    const takenAt = this.options.clock();
    const previous = alone ? undefined : this.#inFlight();
    const loading = (async () => {
      if (previous) await settledWithin(previous, this.options.maxStalenessMs);
      return this.#read(this.options.clock());
    })();
    this.#loading = loading;
    this.#loadingSince = takenAt;
    void loading.finally(() => {
      if (this.#loading === loading) this.#loading = undefined;
    });
    return loading;
  }

  async #read(takenAt: number): Promise<GenerationView | undefined> {
    const db = this.options.database.forRequest(observer(takenAt + READ_TIMEOUT_MS));
    const seesBefore = this.#lastLsn; // reads run one at a time: the previous one's answer came before this snapshot
    try {
      const { rows } = await db.query<{ gens: unknown; lsn: string | null }>(GENERATIONS_SQL);
      const raw = rows[0]?.gens;
      const gens = (typeof raw === 'string' ? JSON.parse(raw) : (raw ?? {})) as Record<string, number>;
      const view: GenerationView = { gens: numbers(gens), lsn: rows[0]?.lsn ?? undefined, seesBefore, takenAt };
      this.#lastLsn = laterLsn(this.#lastLsn, view.lsn);
      this.refreshCount++;
      this.#failedAt = undefined;
      if (!this.#view || this.#view.takenAt < takenAt) this.#view = view;
      return this.#view;
    } catch (err) {
      this.errorCount++;
      this.#failedAt = this.options.clock();
      if (!this.#logged) {
        this.#logged = true;
        const code = (err as { code?: unknown }).code;
        const why =
          code === '42P01'
            ? 'poolgate_cache_generations does not exist: run `poolgate migrate`'
            : `the primary did not answer (${typeof code === 'string' ? code : 'no SQLSTATE'})`;
        this.options.log?.(
          `poolgate: the read cache stands aside until the table generations can be read: ${why}`,
          { event: 'cache.aside' },
          'warn',
        );
      }
      return undefined;
    } finally {
      await db.end?.();
    }
  }
}

/**
 * Whether `view` counts a write at `lsn` that was visible by `since` (ms, the clock's): taken
 * after `since`, or `lsn` strictly before a position read before its snapshot.
 */
export function sees(view: GenerationView, lsn: string, since: number): boolean {
  return view.takenAt > since || isBefore(lsn, view.seesBefore);
}

/** `a` strictly before `b` (equal is not enough: a COMMIT may still be becoming visible at the position after its record). */
function isBefore(a: string, b: string | undefined): boolean {
  const x = lsnValue(a);
  const y = b === undefined ? undefined : lsnValue(b);
  return x !== undefined && y !== undefined && x < y;
}

/**
 * `promise`'s value if it settles within `ms`, else undefined (a rejection counts as settling, with
 * no view). The timer is the waiting request's own: it fires even when `promise`, another
 * request's, never settles.
 */
async function settledWithin<T>(promise: Promise<T>, ms: number): Promise<{ value: T | undefined } | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, Math.max(0, ms), undefined)));
  try {
    return await Promise.race([
      promise.then(
        (value) => ({ value }),
        () => ({ value: undefined }),
      ),
      late,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const numbers = (gens: Record<string, number>) => Object.fromEntries(Object.entries(gens).map(([k, v]) => [k, Number(v)]));
