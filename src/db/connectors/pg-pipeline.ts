/**
 * Pipelined lanes for reads (Node; node-postgres ≥ 8.23 `pipeline: true`): a few connections on
 * which concurrent requests' read statements are written back to back, with no checkout and no
 * wait for the statement before. One socket write and one read then serve several requests, on
 * our side and on the server's. To the core this is a one-shot connector: a statement, or a read
 * batch (BEGIN … COMMIT written as one burst, so nothing of another request lands inside it), in
 * one round trip. Reads wait their turn for room on the lanes (the core's admission in front of
 * them: first come, first served, bounded like the pool's).
 *
 * What may share a lane is decided from what is known, before anything waits: a read whose recent
 * time is above a few ms, or far above the typical read's on a busy machine (LaneLatency, per
 * statement text), goes to the pool; a lane whose queue, counted in expected time rather than in
 * statements, is longer than LaneLatency's queue limit takes no more;
 * and a lane whose head statement has run 50 ms (a read slower than ever before) takes no more
 * until it answers. A read with no lane to take it goes to a pooled session. A lane whose connect
 * failed (a full server: 53300) is opened again only after a backoff, exponential and jittered
 * (reconnectDelayMs); reads take the pool meanwhile.
 *
 * Cancelling: a CancelRequest stops whatever the lane's backend runs when it arrives, which may be
 * a statement written behind the one cut short, another request's. So a request that leaves (or
 * whose deadline passes) is cancelled on the server only when it is alone on its lane: the lane
 * is first retired (nothing more is written to it), so the backend then runs that request's
 * statements and nothing else, and the cancel can stop nothing of anyone else's. With others on
 * the lane its answer is just dropped: the read runs to its end (bounded by the lane's
 * statement_timeout), as it would have had its client stayed, and no neighbour's answer changes.
 *
 * Errors after which a lane statement provably applied nothing are marked rerunnable here, by
 * SQLSTATE (see appliedNothing); the lane that gave them is retired when its state is suspect.
 */
import type { Log } from '../../log/logger.js';
import type pg from 'pg';
import { describeError, isConnectionError } from '../../errors.js';
import { markRerunnable } from '../../resilience/retry.js';
import { now } from '../../stats/clock.js';
import type { PipelineStats, QueryResult, Statement, TxOptions } from '../types.js';
import type { OneShotConnector } from '../core/connector.js';
import { CANCEL_GRACE_MS, sendCancelRequest } from './cancel.js';
import { classified, isNamedStatementRefused } from './driver-errors.js';
import { LaneLatency } from './lane-latency.js';
import { beginStatement, isIdle, type ResultLimits } from './pg-session.js';
import { SourceSupport } from './source-support.js';
import { send, StatementNames, type NamedClient } from './statement-names.js';
import { changesSession } from '../core/statement-kind.js';

export interface PgPipelineOptions {
  connectionString: string;
  /** The breaker's name, the pool's (they share it). */
  upstream?: string;
  /** How many pipelined connections (lanes). */
  lanes: number;
  /** A lane whose oldest statement has run this long takes no more (head-of-line blocking). */
  stallMs?: number;
  /** A read whose recent time is above this goes to the pool (default SLOW_READ_MS). */
  slowReadMs?: number;
  statementTimeoutMs: number;
  connectionTimeoutMs?: number;
  applicationName?: string;
  /** The pool's statement names, or undefined when prepared statements are off. */
  statements: StatementNames | undefined;
  /** What the source turned out to support, shared with the pool (lanes open without what it refused). */
  support?: SourceSupport;
  /** Past these a statement's rows are dropped and it fails (result_too_large); its neighbours' answers follow as usual. */
  resultLimits?: ResultLimits;
  /** The connection budget the lanes share with the pool (pg-pool.ts); none: up to `lanes`, always. */
  slots?: LaneSlots;
  /** A lane with nothing in flight this long is closed, like the pool's idle connections (POOL_IDLE_TIMEOUT_MS; 0: never). */
  idleTimeoutMs?: number;
}

/** How the lanes take their connections out of a budget they share with the pool. */
export interface LaneSlots {
  /** Whether one more lane fits now; false asks the pool to make room (it gives a connection back). */
  mayOpen(): boolean;
  /** The number of live lanes changed. */
  changed(): void;
  /** A lane's connect failed with `err` (53300: the server is full). */
  connectFailed(err: unknown): void;
}

export interface PgPipelineDriver {
  Client: new (config: pg.ClientConfig & { pipeline?: boolean }) => pg.Client;
  log?: Log;
}

/**
 * Whether a lane statement that failed with `err` provably applied nothing, so the request may run
 * it again: 'statement' (a retry may use the same lane), 'lane' (the lane must not be used again),
 * or false. By SQLSTATE only:
 * - 57014 on a lane that sent a CancelRequest for another request (none is sent while others are on
 *   it, see #cancel, so this is a guard): cancelled before it ran or while it ran a read;
 * - a named statement refused (26000, 42P05: isNamedStatementRefused): the Bind or Parse was
 *   refused, so the statement never ran, and the lane's names are not what pg believes;
 * - 25P02 inside a read batch: its transaction is read-only, nothing of it can have applied.
 */
export function appliedNothing(err: unknown, laneCancelled: boolean, readBatch: boolean): 'statement' | 'lane' | false {
  if (isNamedStatementRefused(err)) return 'lane';
  const code = (err as { code?: unknown } | undefined)?.code;
  if (code === '57014') return laneCancelled ? 'lane' : false;
  if (code === '25P02') return readBatch ? 'statement' : false;
  return false;
}

const abortReason = (signal: AbortSignal): Error =>
  signal.reason instanceof Error ? signal.reason : new Error('The statement was aborted.', { cause: signal.reason });

/** Statements in flight per lane that the admission in front of the lanes allows (lanes × this in all). */
export const LANE_DEPTH = 32;
const STALL_MS = 50;
/** After a lane's connect failed n times in a row, the next is opened after about this × 2^(n-1), at most the cap. */
const RECONNECT_BASE_MS = 100;
const RECONNECT_CAP_MS = 5_000;

/** Exponential, with jitter in its upper half: a refusing server (53300) sees a bounded rate of connects. */
export function reconnectDelayMs(failures: number, random: () => number = Math.random): number {
  const ceiling = Math.min(RECONNECT_CAP_MS, RECONNECT_BASE_MS * 2 ** Math.max(0, failures - 1));
  return ceiling / 2 + (random() * ceiling) / 2;
}

class Lane {
  readonly client: pg.Client & NamedClient;
  inFlight = 0;
  /** What the requests in flight are expected to take, in all (the queue in time). */
  pendingMs = 0;
  /** Takes no new statements: it sent a cancel, broke, or is closing. */
  retired = false;
  cancelled = false;
  connected = false;
  /** Its connection has closed. */
  ended = false;
  readonly ready: Promise<void>;
  /** When each statement in flight was written, oldest first (answers come back in order). */
  readonly #sentAt: number[] = [];
  #answeredAt = 0;
  /** When its last statement answered, or it opened. */
  usedAt = now();

  constructor(config: pg.ClientConfig & { pipeline: true }, driver: PgPipelineDriver, onEnd: () => void) {
    this.client = new driver.Client(config);
    this.client.on('error', (err) => {
      this.retired = true;
      driver.log?.(
        `poolgate: pipelined db connection error (${describeError(err)}); it will be replaced`,
        { event: 'connection.errored', upstream: 'lanes', error: describeError(err) },
        'warn',
      );
    });
    this.client.on('end', () => {
      this.retired = true;
      this.ended = true;
      onEnd();
    });
    this.ready = this.client.connect().then(() => void (this.connected = true));
    this.ready.catch(() => void (this.retired = true));
  }

  /**
   * The statement at the head (the one the server runs now) has run `stallMs`: since it was sent,
   * or since the answer before it came back, whichever is later. A deep queue that keeps moving is
   * not stalled.
   */
  stalled(at: number, stallMs: number): boolean {
    const oldest = this.#sentAt[0];
    return oldest !== undefined && at - Math.max(oldest, this.#answeredAt) > stallMs;
  }

  sent(at: number): void {
    this.#sentAt.push(at);
  }

  /** An answer came: how long its statement took in its turn, and how many were written behind it. */
  answered(): { ms: number; behind: number } {
    const at = now();
    const sent = this.#sentAt.shift() ?? at;
    const ms = at - Math.max(sent, this.#answeredAt);
    this.#answeredAt = at;
    this.usedAt = at;
    return { ms, behind: this.#sentAt.length };
  }

  closeWhenEmpty(): void {
    if (this.retired && this.inFlight === 0) this.client.end().catch(() => {});
  }
}

export class PgPipelineConnector implements OneShotConnector {
  readonly kind = 'pg-pipeline';
  readonly upstream: string;
  readonly readsOnly = true;
  readonly shared = true;
  readonly #lanes: (Lane | undefined)[];
  readonly #options: PgPipelineOptions;
  readonly #driver: PgPipelineDriver;
  readonly #support: SourceSupport;
  readonly #stallMs: number;
  #openedCount = 0;
  #cancelledCount = 0;
  #closedCount = 0;
  #overflowCount = 0;
  #slowToPoolCount = 0;
  #waitedBehindSlowCount = 0;
  /** Recent read times per statement text, lanes and pool both (see learn). */
  readonly latency: LaneLatency;
  #closed = false;
  #idleTimer: ReturnType<typeof setInterval> | undefined;
  /** Lanes holding (or opening) a connection: what they take of the budget. */
  readonly #live = new Set<Lane>();
  /** Lane connects failed in a row, and when the next may be tried (reads take the pool meanwhile). */
  #connectFailures = 0;
  #openAfter = 0;
  /**
   * Whether the server gives each connection a backend of its own (PGlite behind pglite-socket
   * does not: a lane's read batch would share its one backend with others' statements). Asked
   * once, on the first lane; the lanes take nothing before the answer is yes.
   */
  #ownBackends: boolean | Promise<boolean> | undefined;

  constructor(options: PgPipelineOptions, driver: PgPipelineDriver) {
    this.#options = options;
    this.upstream = options.upstream ?? 'postgres';
    this.#driver = driver;
    this.#support = options.support ?? new SourceSupport(driver.log);
    this.#lanes = Array.from({ length: options.lanes }, () => undefined);
    this.#stallMs = options.stallMs ?? STALL_MS;
    this.latency = new LaneLatency(options.slowReadMs);
    if (options.idleTimeoutMs) {
      this.#idleTimer = setInterval(() => this.#closeIdle(options.idleTimeoutMs!), Math.max(100, options.idleTimeoutMs / 2));
      (this.#idleTimer as { unref?: () => void }).unref?.();
    }
  }

  /** Lanes idle for `idleMs` close, so their connections go back to the pool's share (and the server). */
  #closeIdle(idleMs: number): void {
    const at = now();
    for (let i = 0; i < this.#lanes.length; i++) {
      const lane = this.#lanes[i];
      if (lane === undefined || !lane.connected || lane.inFlight > 0 || at - lane.usedAt < idleMs) continue;
      lane.retired = true;
      lane.closeWhenEmpty();
      this.#lanes[i] = undefined;
    }
  }

  /** A lane with room for `statements`, or none (the read then takes a pooled session): slow reads never have one. */
  hasRoom(statements?: readonly Statement[]): boolean {
    if (this.#ownBackends !== true) {
      if (now() >= this.#openAfter) void this.warm();
      return false;
    }
    if (statements && this.latency.isSlow(LaneLatency.keyOf(statements.map((s) => s.text)))) {
      this.#slowToPoolCount++;
      return false;
    }
    if (this.#pick() !== undefined) return true;
    this.#overflowCount++;
    return false;
  }

  /** Opens the first lane and asks its server whether lanes can be used there; true when they are. */
  async warm(): Promise<boolean> {
    this.#ownBackends ??= this.#probe().then(
      (own) => (this.#ownBackends = own),
      () => {
        this.#ownBackends = undefined; // asked again by a later read
        return false;
      },
    );
    return (await this.#ownBackends) === true;
  }

  /** Connections the lanes hold or are opening. */
  get liveLanes(): number {
    return this.#live.size;
  }

  async #probe(): Promise<boolean> {
    if (this.#options.slots?.mayOpen() === false) throw new Error('No room in the connection budget for a lane yet.');
    let lane = (this.#lanes[0] = this.#open());
    try {
      await lane.ready;
    } catch (err) {
      // A pooler that refuses statement_timeout at startup: lanes (and the pool) open without it from now on.
      if (!(await this.#support.startupRefused(err, this.#driver.Client, this.#config()))) throw err;
      lane = this.#lanes[0] = this.#open();
      await lane.ready;
    }
    const { rows } = await lane.client.query<{ v: string }>('SELECT version() AS v');
    const own = !/PGlite/i.test(String(rows[0]?.v));
    if (!own) {
      this.#lanes[0] = undefined;
      lane.retired = true;
      lane.closeWhenEmpty();
    }
    return own;
  }

  /** What a lane opens with: pipelined, and the source's startup parameters. */
  #config(): pg.ClientConfig & { pipeline: true } {
    const o = this.#options;
    return {
      connectionString: o.connectionString,
      pipeline: true,
      statement_timeout: o.statementTimeoutMs,
      connectionTimeoutMillis: o.connectionTimeoutMs,
      application_name: o.applicationName,
      keepAlive: true,
    };
  }

  #open(): Lane {
    this.#openedCount++;
    const gone = () => {
      if (this.#live.delete(lane)) this.#options.slots?.changed();
    };
    const lane = new Lane(this.#support.clientConfig(this.#config()), this.#driver, () => (this.#closedCount++, gone()));
    this.#live.add(lane);
    this.#options.slots?.changed();
    lane.ready.then(
      () => void (this.#connectFailures = 0),
      (err: unknown) => {
        this.#openAfter = now() + reconnectDelayMs(++this.#connectFailures);
        gone();
        this.#options.slots?.connectFailed(err);
      },
    );
    return lane;
  }

  /** What a read of these statements took where the lanes did not run it (the pool): what is known of it. */
  learn(statements: readonly Statement[], ms: number): void {
    this.latency.record(LaneLatency.keyOf(statements.map((s) => s.text)), ms);
  }

  query(statement: Statement, signal: AbortSignal): Promise<QueryResult> {
    return this.#onLane(signal, [statement.text], false, (lane) => [this.#send(lane, statement, true)]).then((r) => r[0]!);
  }

  async batch(statements: readonly Statement[], options: TxOptions, signal: AbortSignal): Promise<QueryResult[]> {
    const texts = statements.map((s) => s.text);
    const results = await this.#onLane(signal, texts, options.readOnly === true, (lane) => [
      send(lane.client, beginStatement(options), undefined),
      ...statements.map((s) => this.#send(lane, s, false)),
      send(lane.client, 'COMMIT', undefined),
    ]);
    return results.slice(1, -1);
  }

  figures(): PipelineStats {
    const open = this.#lanes.filter((l) => l && !l.retired) as Lane[];
    return {
      lanes: open.length,
      inFlight: open.reduce((n, l) => n + l.inFlight, 0),
      openedCount: this.#openedCount,
      closedCount: this.#closedCount,
      cancelledCount: this.#cancelledCount,
      overflowCount: this.#overflowCount,
      slowToPoolCount: this.#slowToPoolCount,
      waitedBehindSlowCount: this.#waitedBehindSlowCount,
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#idleTimer);
    const lanes = this.#lanes.splice(0).filter((l) => l !== undefined);
    await Promise.allSettled(lanes.map((l) => ((l.retired = true), l.ready.then(() => l.client.end()))));
  }

  /**
   * The least busy lane not stalled behind a slow statement; undefined when every lane is. A new
   * lane is opened only when every open one is busy, so a quiet process (a function serving one
   * request at a time) keeps a single connection.
   */
  #pick(): Lane | undefined {
    if (this.#closed) return undefined;
    const at = now();
    const queueLimit = this.latency.queueLimitMs();
    let best: Lane | undefined;
    let free = -1;
    for (let i = 0; i < this.#lanes.length; i++) {
      let lane = this.#lanes[i];
      if (lane !== undefined && (lane.retired || this.#options.statements?.isStale(lane.client))) {
        lane.retired = true;
        lane.closeWhenEmpty();
        lane = this.#lanes[i] = undefined;
      }
      if (lane === undefined) {
        if (free < 0 && at >= this.#openAfter) free = i; // backing off after failed connects: none opened
        continue;
      }
      if (lane.stalled(at, this.#stallMs) || lane.pendingMs > queueLimit) continue;
      if (best === undefined || lane.inFlight < best.inFlight) best = lane;
    }
    const wanted = free >= 0 && (best === undefined || best.inFlight > 0);
    if (wanted && this.#options.slots?.mayOpen() !== false) return (this.#lanes[free] = this.#open());
    return best;
  }

  /** Every lane stalled since the read was admitted: the least busy one still takes it. */
  #leastBusy(): Lane | undefined {
    let best: Lane | undefined;
    for (const lane of this.#lanes) if (lane && !lane.retired && (best === undefined || lane.inFlight < best.inFlight)) best = lane;
    return best;
  }

  /**
   * Writes the statements `write` sends, as one burst, on the least busy lane; answers with all
   * their results, or the first error (rerunnable when it provably applied nothing).
   */
  async #onLane(
    signal: AbortSignal,
    texts: readonly string[],
    readBatch: boolean,
    write: (lane: Lane) => Promise<QueryResult>[],
  ): Promise<QueryResult[]> {
    const lane = this.#pick() ?? this.#leastBusy();
    if (lane === undefined) throw Object.assign(new Error('The pipelined connections are closed.'), { code: '57P01' });
    lane.inFlight++;
    try {
      if (!lane.connected) await lane.ready;
      if (signal.aborted) throw abortReason(signal); // nothing written yet
      const pending = write(lane);
      this.#timeOnLane(lane, LaneLatency.keyOf(texts), pending);
      return await this.#abortable(lane, Promise.all(pending), signal);
    } catch (thrown) {
      const err = classified(thrown, lane.connected ? 'statement' : 'connect', lane.client);
      if (isConnectionError(err)) lane.retired = true; // before the 'error' event: a retry must not meet this lane
      if (signal.aborted) throw err;
      const why = appliedNothing(err, lane.cancelled, readBatch);
      if (why === 'lane') lane.retired = true; // its names are not what pg believes: no retry may meet it
      throw why ? markRerunnable(err) : err;
    } finally {
      lane.inFlight--;
      // The server says the lane is not idle between requests (a transaction left open): never reused.
      if (lane.inFlight === 0 && lane.connected && !isIdle(lane.client)) lane.retired = true;
      lane.closeWhenEmpty();
    }
  }

  /**
   * Counts what `pending` (one request's statements, just written) adds to the lane's queue in
   * time until they answer; then records their time in their turn, and how many statements of
   * others waited behind one of them that ran past the stall threshold.
   */
  #timeOnLane(lane: Lane, key: string, pending: Promise<QueryResult>[]): void {
    const expected = this.latency.expectedMs(key);
    const at = now();
    lane.pendingMs += expected;
    for (let i = 0; i < pending.length; i++) lane.sent(at);
    let total = 0;
    const answered = () => {
      const { ms, behind } = lane.answered();
      total += ms;
      if (ms > this.#stallMs) this.#waitedBehindSlowCount += behind;
    };
    for (const p of pending) p.then(answered, answered);
    void Promise.allSettled(pending).then(() => {
      lane.pendingMs -= expected;
      this.latency.record(key, total);
    });
  }

  #send(lane: Lane, s: Statement, autocommit: boolean): Promise<QueryResult> {
    const statements = this.#options.statements;
    const exec = (name: string | undefined) => send(lane.client, s.text, s.params, name, false, this.#options.resultLimits);
    const result = statements ? statements.run(lane.client, s.text, s.params, autocommit, exec, false) : exec(undefined);
    // A statement that changed the session (SET, RESET …): the lane takes nothing more.
    return result.then((r) => (changesSession(r.command) && (lane.retired = true), r));
  }

  /**
   * Settles with `work`, or rejects at once when `signal` aborts; the lane is then cancelled and
   * retired if this request is the only one on it, and left serving the others if not.
   */
  #abortable<T>(lane: Lane, work: Promise<T>, signal: AbortSignal): Promise<T> {
    work.catch(() => {}); // an answer that comes after the abort is dropped
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        if (lane.inFlight === 1) this.#cancel(lane); // alone: see the module header
        reject(abortReason(signal));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      work.then(
        (v) => (signal.removeEventListener('abort', onAbort), resolve(v)),
        (e: unknown) => (signal.removeEventListener('abort', onAbort), reject(e as Error)),
      );
    });
  }

  #cancel(lane: Lane): void {
    lane.retired = true;
    if (lane.cancelled) return;
    lane.cancelled = true;
    this.#cancelledCount++;
    sendCancelRequest(this.#driver.Client, this.#options.connectionString, lane.client, this.#driver.log);
    // Not closed by then (a silent network, a statement the cancel missed): cut it, so no retired lane outlives the budget.
    const cut = setTimeout(() => {
      if (!lane.ended) (lane.client as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
    }, CANCEL_GRACE_MS);
    (cut as { unref?: () => void }).unref?.();
  }
}
