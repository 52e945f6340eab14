/**
 * The `pg` Pool connector (Node; also PGlite behind pglite-socket): sessions from one pool the
 * process shares, an 'error' listener on the pool and on every client for its whole life (a
 * terminated backend must never crash the process), the protocol-level CancelRequest for
 * deadlines, named prepared statements (parsed and planned once per connection), and the pool's
 * own figures. The `pg` module is passed in: nothing here imports it.
 */
import { logs, type EntryLevel, type Log } from '../../log/logger.js';
import type pg from 'pg';
import { PREPARED_STATEMENTS_MAX, RESULT_MAX_BYTES, RESULT_MAX_ROWS, type PoolConfig } from '../../config.js';
import { describeError, isServerTermination } from '../../errors.js';
import { createDatabase, type CoreDatabase } from '../core/database.js';
import { Replica, REPLICA_BREAKER, ReplicatedDatabase } from '../core/replicas.js';
import type { BreakerTuning } from '../../resilience/breaker.js';
import type { LoopMeter } from '../../resilience/gate.js';
import type { PoolFigures, Session, SessionConnector, SessionSource } from '../core/connector.js';
import type { Database, QueryResult } from '../types.js';
import { CANCEL_GRACE_MS, sendCancelRequest } from './cancel.js';
import { classified } from './driver-errors.js';
import { now } from '../../stats/clock.js';
import {
  ConnectionBudget,
  isTooMany,
  laneFits,
  markedApplicationName,
  newInstanceId,
  poolMaxFor,
  refusedPauseMs,
  SERVER_VIEW_SQL,
  toServerView,
} from './pg-budget.js';
import { LANE_DEPTH, PgPipelineConnector, type LaneSlots } from './pg-pipeline.js';
import { isIdle, pgSession, queryClassOf, toResult, withBegin, type PgQueryClass, type ResultLimits } from './pg-session.js';
import { SourceSupport } from './source-support.js';
import { send, StatementNames, type NamedClient } from './statement-names.js';

type PoolClient = pg.PoolClient & NamedClient;

type PreparedOptions = Pick<
  PoolConfig,
  | 'preparedStatements'
  | 'preparedStatementsMax'
  | 'pipelineLanes'
  | 'pipelineSlowReadMs'
  | 'resultMaxRows'
  | 'resultMaxBytes'
  | 'overloadShedding'
>;

export interface PgPoolConnectorOptions extends Omit<PoolConfig, keyof PreparedOptions | 'budget'>, Partial<PreparedOptions> {
  connectionString: string;
  /** A connection budget shared with the other instances on the server (POOL_BUDGET); none: `max` for this process alone. */
  budget?: PoolConfig['budget'];
  /** Requests' deadline; the session statement_timeout is never longer. */
  requestTimeoutMs?: number;
  /** The breaker's name in /stats and /metrics (default `postgres`; a replica: `postgres-replica-1` …). */
  upstream?: string;
  /** Tell requests the WAL position after their writes (a primary with replicas). */
  positions?: boolean;
  /** The breaker's tuning (a replica probes at least every second, so it is back in rotation soon after its return). */
  breaker?: BreakerTuning;
}

export interface PgDriver {
  Pool: new (config: pg.PoolConfig) => pg.Pool;
  /** Sends CancelRequests (a protocol message on a fresh socket, no session or auth needed). */
  Client: new (config: pg.ClientConfig) => pg.Client;
  /** Connection events (opened, closed, errored, terminated, cancelled) and what the source refused. */
  log?: Log;
  /** The event loop's busy time: admission does not read a wait it filled as the pool's (runtime/node-loop.ts). */
  loop?: LoopMeter;
}

export class PgPoolConnector implements SessionConnector {
  readonly kind = 'pg-pool';
  readonly upstream: string;
  readonly pool: pg.Pool;
  readonly #fresh = new WeakSet<pg.PoolClient>();
  readonly #source: SessionSource;
  readonly #options: PgPoolConnectorOptions;
  readonly #driver: PgDriver;
  /** pg's Query class, for BEGIN written with a transaction's first statement (pgSession). */
  readonly #Query: PgQueryClass | undefined;
  /** What this source turned out to support (shared with the lanes). */
  readonly support: SourceSupport;
  /** Undefined when prepared statements are switched off. */
  readonly statements: StatementNames | undefined;
  #openedCount = 0;
  #closedCount = 0;
  #errorCount = 0;
  /** The connections this process may hold, lanes and pool together: `max`, or the budget's share. */
  #share: number;
  /** The lanes' count of connections, once lanes are attached (see attachLanes). */
  #liveLanes: () => number = () => 0;
  /** Runs a read on a lane (written behind others' reads: no connection of its own), once lanes are attached. */
  #onLane: ((text: string) => Promise<QueryResult>) | undefined;
  /** A lane waits for room: the pool gives a connection back at its next release. */
  #laneWanted = false;
  readonly #resized: ((max: number) => void)[] = [];
  /** Undefined without POOL_BUDGET. */
  readonly budget: ConnectionBudget | undefined;

  constructor(options: PgPoolConnectorOptions, driver: PgDriver) {
    this.#options = { ...options }; // its applicationName gets the instance id: the caller's object stays as it was
    this.upstream = options.upstream ?? 'postgres';
    this.#driver = driver;
    this.#Query = queryClassOf(driver.Client);
    this.support = new SourceSupport(driver.log);
    this.statements =
      options.preparedStatements === false
        ? undefined
        : new StatementNames(options.preparedStatementsMax ?? PREPARED_STATEMENTS_MAX, this.support);
    const support = this.support;
    this.budget = options.budget?.mode === 'off' || options.budget === undefined ? undefined : this.#budget(options.budget);
    this.#share = this.budget?.share ?? options.max;
    this.pool = new driver.Pool({
      ...this.#clientConfig(),
      max: this.budget ? 1 : options.max,
      min: options.min,
      idleTimeoutMillis: options.idleTimeoutMs,
      // Each new connection opens with what the source supports (no statement_timeout once a pooler refused it).
      Client: class extends (driver.Client as typeof pg.Client) {
        constructor(config: pg.ClientConfig = {}) {
          super(support.clientConfig(config));
        }
      },
    });
    this.pool.on('connect', (client) => this.#adopt(client));
    this.pool.on('remove', () => {
      this.#closedCount++;
      this.#connectionEvent('closed', 'info');
    });
    // Required (an unheard 'error' crashes the process) but silent: the client's listener logged it.
    this.pool.on('error', () => {});
    this.#source = { acquire: (deadline) => this.#acquire(deadline) };
    this.budget?.start();
  }

  #budget(config: NonNullable<PoolConfig['budget']>): ConnectionBudget {
    const instanceId = config.instanceId ?? newInstanceId();
    this.#options.applicationName = markedApplicationName(this.#options.applicationName, instanceId);
    return new ConnectionBudget({
      instanceId,
      reserve: config.reserve,
      poolMax: this.#options.max,
      total: typeof config.mode === 'number' ? config.mode : undefined,
      intervalMs: config.intervalMs,
      sample: async () => toServerView((await this.#look()).rows[0] as Record<string, unknown>),
      canLook: () => this.pool.idleCount > 0 || this.#liveLanes() > 0,
      onShare: (share) => {
        this.#share = share;
        this.#resize();
      },
      log: this.#driver.log,
    });
  }

  /** What this instance's connections carry: APPLICATION_NAME, marked with the instance id under a budget. */
  get applicationName(): string {
    return this.#options.applicationName;
  }

  /** The budget's look at the server: on a lane when one is open, else on an idle pooled connection (or a new one). */
  #look(): Promise<{ rows: unknown[] }> {
    if (this.#onLane && this.#liveLanes() > 0 && this.pool.idleCount === 0) return this.#onLane(SERVER_VIEW_SQL);
    return this.#connect().then(async (client) => {
      try {
        return await client.query(SERVER_VIEW_SQL);
      } finally {
        client.release();
      }
    });
  }

  /** A pooled connection; a pooler that refuses statement_timeout at startup: every connection opens without it from now on. */
  async #connect(again = false): Promise<PoolClient> {
    try {
      return await this.pool.connect();
    } catch (err) {
      if (!again && (await this.support.startupRefused(err, this.#driver.Client, this.#clientConfig()))) return this.#connect(true);
      throw err;
    }
  }

  /** The lanes take their connections out of the same share (see LaneSlots); the budget may look on them. */
  attachLanes(liveLanes: () => number, onLane: (text: string) => Promise<QueryResult>): LaneSlots {
    this.#liveLanes = liveLanes;
    this.#onLane = onLane;
    return {
      mayOpen: () => {
        const fits = laneFits(this.#share, this.pool.totalCount, liveLanes());
        if (this.#laneWanted !== !fits) {
          this.#laneWanted = !fits;
          this.#resize();
        }
        return fits;
      },
      changed: () => this.#resize(),
      connectFailed: (err) => {
        if (isTooMany(err)) this.budget?.refused(this.#held());
      },
    };
  }

  onResize(listener: (max: number) => void): void {
    this.#resized.push(listener);
  }

  /** Connections held now, lanes and pool. */
  #held(): number {
    return this.pool.totalCount + this.#liveLanes();
  }

  /** The pool's size follows the share and the lanes; admission follows the pool; idle connections above it close now. */
  #resize(): void {
    const max = poolMaxFor(this.#share, this.#liveLanes(), this.#laneWanted);
    if (max === this.pool.options.max) return;
    this.pool.options.max = max;
    for (const listener of this.#resized) listener(max);
    this.#trimIdle();
  }

  /** Idle connections above the pool's size: checked out (an idle one comes at once) and discarded. */
  #trimIdle(): void {
    const excess = Math.min(this.pool.idleCount, this.pool.totalCount - this.pool.options.max);
    for (let i = 0; i < excess; i++) {
      this.pool.connect().then(
        (client) => client.release(true),
        () => {},
      );
    }
  }

  /** RESULT_MAX_ROWS / RESULT_MAX_BYTES: past them a statement's rows are dropped and it fails (result_too_large). */
  get resultLimits(): ResultLimits {
    return { maxRows: this.#options.resultMaxRows ?? RESULT_MAX_ROWS, maxBytes: this.#options.resultMaxBytes ?? RESULT_MAX_BYTES };
  }

  get sessionStatementTimeoutMs(): number {
    return Math.min(this.#options.statementTimeoutMs, this.#options.requestTimeoutMs ?? Infinity);
  }

  source(): SessionSource {
    return this.#source;
  }

  /** 53300 while our pool holds live connections says "no room for one more", not "the server is down". */
  isBusy(err: unknown): boolean {
    return isTooMany(err) && this.pool.totalCount > 0;
  }

  figures(): PoolFigures {
    return {
      max: this.pool.options.max,
      total: this.pool.totalCount,
      idle: this.pool.idleCount,
      waiting: this.pool.waitingCount,
      openedCount: this.#openedCount,
      closedCount: this.#closedCount,
      errorCount: this.#errorCount,
      refused: this.support.refused(),
      ...(this.budget ? { budget: this.budget.figures() } : {}),
    };
  }

  close(): Promise<void> {
    this.budget?.stop();
    return this.pool.end();
  }

  #adopt(client: pg.PoolClient): void {
    this.#openedCount++;
    this.#fresh.add(client);
    this.#connectionEvent('opened', 'info');
    // For the client's whole life: pg-pool listens only while a client is idle, so an error on a
    // checked-out client (backend terminated mid-request) would otherwise be unhandled.
    client.on('error', (err) => {
      this.#errorCount++;
      this.#connectionEvent(
        isServerTermination(err) ? 'terminated' : 'errored',
        'warn',
        describeError(err),
        `; the connection will be discarded`,
      );
    });
  }

  async #acquire(deadline = Infinity): Promise<{ session: Session; opened: boolean }> {
    await this.budget?.fresh();
    let client: PoolClient;
    // Internal work (warm, migrations) has no deadline: a full server gets a connect timeout's while.
    const until = Number.isFinite(deadline) ? deadline : now() + this.#options.connectionTimeoutMs;
    for (let refused = 0; ; refused++) {
      try {
        client = await this.#connect();
        break;
      } catch (err) {
        if (!this.budget || !isTooMany(err)) throw classified(err, 'connect');
        // The server is full: hold no more than we have, and wait for one of ours (or a short, jittered while).
        this.budget.refused(this.#held());
        const pauseMs = this.pool.totalCount > 0 ? 0 : refusedPauseMs(refused);
        if (now() + pauseMs >= until) throw classified(err, 'connect');
        if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
      }
    }
    return { session: this.#session(client), opened: this.#fresh.delete(client) };
  }

  /** What each connection of the pool is opened with (before SourceSupport takes out what was refused). */
  #clientConfig(): pg.ClientConfig {
    const o = this.#options;
    return {
      connectionString: o.connectionString,
      connectionTimeoutMillis: o.connectionTimeoutMs,
      // No statement may outlive its request: a startup parameter, so it costs no round trip.
      statement_timeout: this.sessionStatementTimeoutMs,
      query_timeout: o.queryTimeoutMs,
      application_name: o.applicationName,
      keepAlive: true,
    };
  }

  #session(client: PoolClient): Session {
    let cut: ReturnType<typeof setTimeout> | undefined;
    let busy = 0;
    return pgSession({
      run: async (text, params, begin, script) => {
        busy++;
        try {
          return await this.#query(client, text, params, begin, script);
        } catch (err) {
          throw classified(err, 'statement', client);
        } finally {
          busy--;
        }
      },
      cancel: () => {
        if (busy === 0) return; // between statements: the core sends no further one
        this.#sendCancel(client);
        // Still running CANCEL_GRACE_MS later: cut the socket, which fails the statement as a lost connection.
        cut = setTimeout(() => client.connection?.stream?.destroy(), CANCEL_GRACE_MS);
        (cut as { unref?: () => void }).unref?.();
      },
      release: (discard) => {
        clearTimeout(cut);
        // Above the pool's size (the share shrank, or a lane waits for room): given back to the server.
        const over = this.pool.totalCount > this.pool.options.max;
        client.release(discard || over || !isIdle(client) || this.statements?.isStale(client) || undefined);
      },
    });
  }

  /** One statement, named where it has a name; with `begin` (a transaction's first statement), BEGIN goes in the same write. */
  #query(
    client: PoolClient,
    text: string,
    params: readonly unknown[] | undefined,
    begin: string | undefined,
    script = false,
  ): Promise<QueryResult> {
    const limits = this.resultLimits;
    const exec = (name: string | undefined) =>
      begin === undefined
        ? send(client, text, params, name, script, limits)
        : withBegin(client, this.#Query, begin, text, params, name, script, limits).then(toResult);
    if (this.statements === undefined || script) return exec(undefined);
    // Unknown (a pg without it) counts as in a transaction: the core's rerun is safe either way.
    const autocommit = begin === undefined && typeof client.getTransactionStatus === 'function' && client.getTransactionStatus() === 'I';
    return this.statements.run(client, text, params, autocommit, exec);
  }

  /**
   * One connection event as a line: `connection.<what>`, with the upstream and the pool's counts
   * after it. Bounded by connection churn (at most the pool's size per database restart), not by requests.
   */
  #connectionEvent(what: string, level: EntryLevel, error?: string, tail = ''): void {
    const log = this.#driver.log;
    if (!log || !logs(log, level)) return;
    const { totalCount: total, idleCount: idle, waitingCount: waiting } = this.pool;
    log(
      `poolgate: db connection ${what}${error ? ` (${error})` : ''}${tail}`,
      { event: `connection.${what}`, upstream: this.upstream, error, total, idle, waiting },
      level,
    );
  }

  #sendCancel(client: PoolClient): void {
    this.#connectionEvent('cancelled', 'debug');
    sendCancelRequest(this.#driver.Client, this.#options.connectionString, client, this.#driver.log);
  }
}

/** One server's backend: the core over its pg Pool (`pool`, for its own tools) and lanes. */
export type PgServerDatabase = CoreDatabase & { readonly pool: pg.Pool };

/** The Node backend: the primary's pg Pool (`pool`) and, where configured, its read replicas. */
export type PgPoolDatabase = Database & { readonly pool: pg.Pool; warm(count: number): Promise<void> };

/**
 * The Node backend: the pg Pool connector under the core, with bounded admission.
 * @example
 * const database = createPgPoolDatabase({ ...config.pool, connectionString }, { Pool: pg.Pool, Client: pg.Client, log });
 * await database.warm(config.pool.min);
 */
export function createPgPoolDatabase(options: PgPoolConnectorOptions, driver: PgDriver): PgServerDatabase {
  // `max` is the budget (or the share of one, POOL_BUDGET): the lanes open inside it as reads
  // overlap, the pool gets the rest (see PgPoolConnector#resize), and keeps at least one.
  const lanes = Math.max(0, Math.min(options.pipelineLanes ?? 0, options.max - 1));
  const connector = new PgPoolConnector(options, driver);
  const pipeline: PgPipelineConnector | undefined =
    lanes > 0
      ? new PgPipelineConnector(
          {
            connectionString: options.connectionString,
            upstream: connector.upstream,
            lanes,
            slowReadMs: options.pipelineSlowReadMs,
            statementTimeoutMs: connector.sessionStatementTimeoutMs,
            connectionTimeoutMs: options.connectionTimeoutMs,
            applicationName: connector.applicationName,
            statements: connector.statements,
            support: connector.support,
            resultLimits: connector.resultLimits,
            slots: connector.attachLanes(
              (): number => pipeline?.liveLanes ?? 0,
              (text) => pipeline!.query({ text }, AbortSignal.timeout(options.connectionTimeoutMs)),
            ),
            idleTimeoutMs: options.idleTimeoutMs,
          },
          driver,
        )
      : undefined;
  const database = createDatabase({
    sessions: connector,
    oneShot: pipeline,
    oneShotTimeoutMs: options.requestTimeoutMs,
    oneShotAdmission: {
      permits: lanes * LANE_DEPTH,
      queueMax: options.queueMax,
      timeoutMs: options.acquireTimeoutMs,
      overloadShedding: options.overloadShedding,
      loop: driver.loop,
    },
    admission: {
      permits: connector.pool.options.max,
      queueMax: options.queueMax,
      timeoutMs: options.acquireTimeoutMs,
      overloadShedding: options.overloadShedding,
      loop: driver.loop,
    },
    sessionStatementTimeoutMs: connector.sessionStatementTimeoutMs,
    log: driver.log,
    positions: options.positions,
    breaker: options.breaker,
  });
  // Warm no more than the share allows (looked up first): warming waits for all its connections at once.
  const warm = database.warm.bind(database);
  const warmInShare = async (count: number) => {
    await connector.budget?.fresh();
    return warm(Math.min(count, connector.pool.options.max));
  };
  return Object.assign(database, { pool: connector.pool, warm: warmInShare });
}

/** Read replicas beside the primary (DATABASE_REPLICA_URLS, REPLICA_MAX_LAG_MS, REPLICA_CHECK_INTERVAL_MS). */
export interface PgReplicaOptions {
  urls: readonly string[];
  maxLagMs: number;
  checkIntervalMs: number;
}

/**
 * The Node backend with its read replicas, if any (db/core/replicas.ts): each replica a pg Pool
 * backend of its own (the same settings, its own breaker `postgres-replica-<n>`), the primary
 * telling each write its WAL position (the consistency token).
 * @example const database = createPgDatabase({ ...config.pool, connectionString }, { urls, maxLagMs: 5000, checkIntervalMs: 500 }, driver);
 */
export function createPgDatabase(
  options: PgPoolConnectorOptions,
  replicas: PgReplicaOptions | undefined,
  driver: PgDriver,
): PgPoolDatabase {
  if (!replicas?.urls.length) return createPgPoolDatabase(options, driver);
  const primary = createPgPoolDatabase({ ...options, positions: true }, driver);
  const set = replicas.urls.map((url, i) => {
    const upstream = `postgres-replica-${i + 1}`;
    const replica = createPgPoolDatabase({ ...options, connectionString: url, upstream, breaker: REPLICA_BREAKER }, driver);
    return new Replica(`replica-${i + 1}`, replica);
  });
  const database = new ReplicatedDatabase(primary, set, { maxLagMs: replicas.maxLagMs, checkIntervalMs: replicas.checkIntervalMs });
  return Object.assign(database, { pool: primary.pool });
}
