/**
 * Reads on read replicas, written once over any `Database`: a primary and its replicas (streaming
 * standbys, Neon read replicas). Writes, transactions and every statement of a transactional
 * route go to the primary. A `read` route's statements and read batches go to one replica per
 * request, chosen among those that are up, within REPLICA_MAX_LAG_MS, and — when the request
 * carries a consistency token (db/consistency.ts) — known to have replayed past its position; the
 * least busy of those, else the primary. A read that fails on a replica for the replica's sake
 * (unreachable, shutting down, breaker open, a recovery conflict) runs again on the primary, and
 * the replica is out until its next look succeeds.
 *
 * What is known of a replica comes from a look (STATUS_SQL) at every replica, at most every
 * REPLICA_CHECK_INTERVAL_MS and only while reads come: the read that finds the last look due
 * starts the next, without waiting for it, and hands it to its request's end (`Db.end`), which an
 * edge isolate keeps alive past the response (waitUntil) — the same on Node and at the edge, no
 * timer, nothing polled while idle. What a look saw serves reads for a few intervals only; older,
 * the replica takes no reads until a new look answers. A token is honoured only on a position
 * read *before* the read started: a snapshot taken after a look sees everything replayed before
 * it. A replica that restarts can come back behind where it was; its connections fail then,
 * which takes it out until a new look.
 */
import type { Log } from '../../log/logger.js';
import { AppError, isConnectionError } from '../../errors.js';
import { now } from '../../stats/clock.js';
import { hasReplayed } from '../consistency.js';
import type { BreakerSnapshot, BreakerTuning } from '../../resilience/breaker.js';
import type {
  ClientKind,
  Database,
  Db,
  PoolStats,
  QueryObserver,
  QueryResult,
  Queryable,
  ReadyReport,
  ReplicaFigures,
  ReplicaSetFigures,
  Statement,
  TxOptions,
} from '../types.js';

/**
 * One look at a server: whether it is a standby, how far it has replayed, and how far behind it
 * is. Lag is the time since the last transaction it replayed while WAL it received waits to be
 * replayed; 0 when it has replayed all it received. (A standby cut off from its primary receives
 * nothing and reads 0: tokens still hold, since they compare positions.) A server that is no
 * standby reads as caught up at its own position.
 */
export const STATUS_SQL = `SELECT pg_is_in_recovery() AS standby,
  (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text AS replayed,
  (CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
        ELSE coalesce(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000, 0) END)::float8 AS lag_ms`;

export interface ReplicaStatus {
  up: boolean;
  standby: boolean;
  replayed?: string;
  lagMs: number;
  /** When the last look answered (now()), or undefined before any. */
  checkedAt?: number;
}

export interface ReplicaOptions {
  /** A replica further behind than this serves no read (REPLICA_MAX_LAG_MS). */
  maxLagMs: number;
  /** How often each replica is looked at (REPLICA_CHECK_INTERVAL_MS). */
  checkIntervalMs: number;
  log?: Log;
}

/** A replica's breaker probes at least every second: a replica that is back takes reads again soon (the primary serves meanwhile). */
export const REPLICA_BREAKER: BreakerTuning = { maxProbeAfterMs: 1_000 };

/** What a look saw serves this many check intervals; then the replica waits for a new look. */
const FRESH_FOR_INTERVALS = 4;

const LOOK_OBSERVER = { acquired() {}, queried() {}, served() {}, internal: true, intent: 'read' } satisfies QueryObserver;

/** One replica: its backend, what the last look saw, and its counts. */
export class Replica {
  status: ReplicaStatus = { up: false, standby: true, lagMs: 0 };
  inFlight = 0;
  servedCount = 0;
  fellBackCount = 0;
  checkCount = 0;
  checkErrorCount = 0;

  constructor(
    readonly name: string,
    readonly database: Database,
  ) {}

  /** Whether it may serve a read now: up at a recent look, close enough, and past `token` when one is given. */
  fits(maxLagMs: number, token: string | undefined, freshAfter: number): boolean {
    const s = this.status;
    const fresh = s.checkedAt !== undefined && s.checkedAt >= freshAfter;
    return s.up && fresh && s.lagMs <= maxLagMs && (token === undefined || hasReplayed(s.replayed, token));
  }

  /** Out until the next look answers (a read failed for its sake). */
  down(): void {
    this.status = { ...this.status, up: false };
  }

  async look(timeoutMs: number): Promise<void> {
    this.checkCount++;
    try {
      const result = await this.database.forRequest({ ...LOOK_OBSERVER, deadline: now() + timeoutMs }).query(STATUS_SQL);
      const row = result.rows[0] ?? {};
      this.status = {
        up: true,
        standby: row.standby === true,
        replayed: typeof row.replayed === 'string' ? row.replayed : undefined,
        lagMs: Number(row.lag_ms ?? 0),
        checkedAt: now(),
      };
    } catch {
      this.checkErrorCount++;
      this.down();
    }
  }

  figures(): ReplicaFigures {
    const pool = this.database.stats();
    return {
      name: this.name,
      up: this.status.up,
      standby: this.status.standby,
      lagMs: Math.round(this.status.lagMs),
      ...(this.status.replayed ? { replayed: this.status.replayed } : {}),
      inFlight: this.inFlight,
      servedCount: this.servedCount,
      fellBackCount: this.fellBackCount,
      checkCount: this.checkCount,
      checkErrorCount: this.checkErrorCount,
      ...(pool ? { pool } : {}),
    };
  }
}

/**
 * A failure that is the replica's, not the read's: the primary may well answer. Connection
 * failures and shutdowns (classes 08, 57P0x, 53300), its breaker or admission refusing, and a
 * statement a standby cancelled for a conflict with recovery (40001).
 */
export function isReplicaTrouble(err: unknown): boolean {
  if (err instanceof AppError) return ['circuit_open', 'database_unavailable', 'pool_exhausted', 'overloaded'].includes(err.code);
  return isConnectionError(err) || (err as { code?: unknown } | undefined)?.code === '40001';
}

/**
 * The primary and its replicas as one Database.
 * @example
 * const database = new ReplicatedDatabase(primary, [new Replica('replica-1', replicaDb)], { maxLagMs: 5000, checkIntervalMs: 500 });
 */
export class ReplicatedDatabase implements Database {
  readonly kind: ClientKind;
  readonly onPrimary = { noReplica: 0, token: 0 };
  tokensHonoured = 0;
  #turn = 0;
  #lookedAt = -Infinity;
  #looking: Promise<void> | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(
    readonly primary: Database,
    readonly replicas: readonly Replica[],
    readonly options: ReplicaOptions,
  ) {
    this.kind = primary.kind;
  }

  /** Looks at every replica once; each look is bounded by the check interval (at least 1 s). */
  lookAll(): Promise<void> {
    const timeoutMs = Math.max(1_000, this.options.checkIntervalMs);
    return Promise.all(this.replicas.map((r) => r.look(timeoutMs))).then(() => {});
  }

  /** Starts a look when the last one started an interval ago or more and none is under way: the promise of the one it started. */
  lookIfDue(): Promise<void> | undefined {
    if (this.#looking || this.#closed || now() - this.#lookedAt < this.options.checkIntervalMs) return undefined;
    this.#lookedAt = now();
    return (this.#looking = this.lookAll().finally(() => (this.#looking = undefined)));
  }

  /** The replica for a read carrying `token` (or none), counted; undefined: the primary serves it. */
  pick(token: string | undefined): Replica | undefined {
    const { maxLagMs, checkIntervalMs } = this.options;
    const freshAfter = now() - FRESH_FOR_INTERVALS * Math.max(1_000, checkIntervalMs);
    const fit = this.replicas.filter((r) => r.fits(maxLagMs, token, freshAfter));
    if (fit.length === 0) {
      if (token !== undefined && this.replicas.some((r) => r.fits(maxLagMs, undefined, freshAfter))) this.onPrimary.token++;
      else this.onPrimary.noReplica++;
      return undefined;
    }
    // Least in flight; ties taken in turn, so equal replicas share the reads.
    const start = this.#turn++ % fit.length;
    let best = fit[start]!;
    for (let i = 1; i < fit.length; i++) {
      const r = fit[(start + i) % fit.length]!;
      if (r.inFlight < best.inFlight) best = r;
    }
    if (token !== undefined) this.tokensHonoured++;
    return best;
  }

  forRequest(observer: QueryObserver): Db {
    return new ReplicatedDb(this, observer);
  }

  ping(timeoutMs: number): Promise<ReadyReport> {
    return this.primary.ping(timeoutMs);
  }

  stats(): PoolStats | undefined {
    return this.primary.stats();
  }

  replicaFigures(): ReplicaSetFigures {
    return this.figures();
  }

  figures(): ReplicaSetFigures {
    return {
      maxLagMs: this.options.maxLagMs,
      onPrimary: { ...this.onPrimary },
      tokensHonoured: this.tokensHonoured,
      replicas: this.replicas.map((r) => r.figures()),
    };
  }

  breakers(): BreakerSnapshot[] {
    return [this.primary, ...this.replicas.map((r) => r.database)].flatMap((d) => d.breakers());
  }

  /** Opens `count` connections on each server and looks at the replicas, so the first reads can use them. */
  async warm(count: number): Promise<void> {
    // A replica that is down at start does not stop it: reads use the primary until a look finds it.
    const replicas = this.replicas.map((r) => r.database.warm?.(count).catch(() => {}));
    await Promise.all([this.primary.warm?.(count), ...replicas]);
    this.#lookedAt = now();
    await this.lookAll();
  }

  close(): Promise<void> {
    this.#closed = true;
    return (this.#closing ??= Promise.all([this.primary.close(), ...this.replicas.map((r) => r.database.close())]).then(() => {}));
  }
}

/**
 * One request's view: the primary for everything but a read route's reads; those on one replica
 * for the whole request (its reads see one server, never going back in time), and on the primary
 * from the first failure that was the replica's.
 */
class ReplicatedDb implements Db {
  readonly kind: ClientKind;
  #primaryDb: Db | undefined;
  #replicaDb: Db | undefined;
  /** A look at the replicas this request started: its end waits for it (an isolate keeps it alive). */
  #look: Promise<void> | undefined;
  /** The replica this request reads from; null once it reads from the primary. */
  #replica: Replica | null | undefined;

  constructor(
    readonly set: ReplicatedDatabase,
    readonly observer: QueryObserver,
  ) {
    this.kind = set.kind;
  }

  query<R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
    return this.#read((db) => db.query<R>(text, params));
  }

  readBatch(statements: readonly Statement[]): Promise<QueryResult[]> {
    return this.#read((db) => db.readBatch(statements));
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>, options?: TxOptions): Promise<T> {
    return this.#primary().transaction(fn, options);
  }

  end(): Promise<void> | undefined {
    const ends = [this.#primaryDb?.end?.(), this.#replicaDb?.end?.(), this.#look].filter((e) => e !== undefined);
    return ends.length ? Promise.all(ends).then(() => {}) : undefined;
  }

  async #read<T>(run: (db: Db) => Promise<T>): Promise<T> {
    const replica = this.#replicaFor();
    if (!replica) return run(this.#primary());
    replica.inFlight++;
    try {
      const result = await run((this.#replicaDb ??= replica.database.forRequest(this.observer)));
      replica.servedCount++;
      return result;
    } catch (err) {
      if (!isReplicaTrouble(err) || this.observer.signal?.aborted) throw err;
      replica.fellBackCount++;
      replica.down();
      return run(this.#primary());
    } finally {
      replica.inFlight--;
    }
  }

  #replicaFor(): Replica | undefined {
    if (this.#replica === undefined) {
      const o = this.observer;
      const reads = o.intent === 'read' && !o.internal;
      if (reads) this.#look = this.set.lookIfDue();
      this.#replica = (reads && this.set.pick(o.consistency)) || null;
      o.readFrom?.(this.#replica?.name ?? 'primary');
    }
    return this.#replica ?? undefined;
  }

  #primary(): Db {
    if (this.#replica !== null) {
      this.#replica = null;
      this.observer.readFrom?.('primary');
    }
    return (this.#primaryDb ??= this.set.primary.forRequest(this.observer));
  }
}
