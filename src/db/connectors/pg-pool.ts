/**
 * The `pg` Pool connector (Node; also PGlite behind pglite-socket): sessions from one pool the
 * process shares, an 'error' listener on the pool and on every client for its whole life (a
 * terminated backend must never crash the process), the protocol-level CancelRequest for
 * deadlines, named prepared statements (parsed and planned once per connection), and the pool's
 * own figures. The `pg` module is passed in: nothing here imports it.
 */
import type pg from 'pg';
import { PREPARED_STATEMENTS_MAX, RESULT_MAX_BYTES, RESULT_MAX_ROWS, type PoolConfig } from '../../config.js';
import { describeError } from '../../errors.js';
import { createDatabase, type CoreDatabase } from '../core/database.js';
import type { PoolFigures, Session, SessionConnector, SessionSource } from '../core/connector.js';
import type { QueryResult } from '../types.js';
import { CANCEL_GRACE_MS, sendCancelRequest } from './cancel.js';
import { classified } from './driver-errors.js';
import { LANE_DEPTH, PgPipelineConnector } from './pg-pipeline.js';
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

export interface PgPoolConnectorOptions extends Omit<PoolConfig, keyof PreparedOptions>, Partial<PreparedOptions> {
  connectionString: string;
  /** Requests' deadline; the session statement_timeout is never longer. */
  requestTimeoutMs?: number;
}

export interface PgDriver {
  Pool: new (config: pg.PoolConfig) => pg.Pool;
  /** Sends CancelRequests (a protocol message on a fresh socket, no session or auth needed). */
  Client: new (config: pg.ClientConfig) => pg.Client;
  log?: (line: string) => void;
}

export class PgPoolConnector implements SessionConnector {
  readonly kind = 'pg-pool';
  readonly upstream = 'postgres';
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

  constructor(options: PgPoolConnectorOptions, driver: PgDriver) {
    this.#options = options;
    this.#driver = driver;
    this.#Query = queryClassOf(driver.Client);
    this.support = new SourceSupport(driver.log);
    this.statements =
      options.preparedStatements === false
        ? undefined
        : new StatementNames(options.preparedStatementsMax ?? PREPARED_STATEMENTS_MAX, this.support);
    const support = this.support;
    this.pool = new driver.Pool({
      ...this.#clientConfig(),
      max: options.max,
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
    this.pool.on('remove', () => void this.#closedCount++);
    // Required (an unheard 'error' crashes the process) but silent: the client's listener logged it.
    this.pool.on('error', () => {});
    this.#source = { acquire: () => this.#acquire() };
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
    return (err as { code?: unknown } | undefined)?.code === '53300' && this.pool.totalCount > 0;
  }

  figures(): PoolFigures {
    return {
      max: this.#options.max,
      total: this.pool.totalCount,
      idle: this.pool.idleCount,
      waiting: this.pool.waitingCount,
      openedCount: this.#openedCount,
      closedCount: this.#closedCount,
      errorCount: this.#errorCount,
      refused: this.support.refused(),
    };
  }

  close(): Promise<void> {
    return this.pool.end();
  }

  #adopt(client: pg.PoolClient): void {
    this.#openedCount++;
    this.#fresh.add(client);
    // For the client's whole life: pg-pool listens only while a client is idle, so an error on a
    // checked-out client (backend terminated mid-request) would otherwise be unhandled.
    client.on('error', (err) => {
      this.#errorCount++;
      this.#driver.log?.(`poolgate: db client error (${describeError(err)}); the connection will be discarded`);
    });
  }

  async #acquire(again = false): Promise<{ session: Session; opened: boolean }> {
    let client: PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      // A pooler that refuses statement_timeout at startup: every connection opens without it from now on.
      if (!again && (await this.support.startupRefused(err, this.#driver.Client, this.#clientConfig()))) return this.#acquire(true);
      throw classified(err, 'connect');
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
        client.release(discard || !isIdle(client) || this.statements?.isStale(client) || undefined);
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

  #sendCancel(client: PoolClient): void {
    sendCancelRequest(this.#driver.Client, this.#options.connectionString, client, this.#driver.log);
  }
}

export type PgPoolDatabase = CoreDatabase & { readonly pool: pg.Pool };

/**
 * The Node backend: the pg Pool connector under the core, with bounded admission.
 * @example
 * const database = createPgPoolDatabase({ ...config.pool, connectionString }, { Pool: pg.Pool, Client: pg.Client, log });
 * await database.warm(config.pool.min);
 */
export function createPgPoolDatabase(options: PgPoolConnectorOptions, driver: PgDriver): PgPoolDatabase {
  // `max` is the budget: the lanes come out of it, and the pool keeps at least one connection.
  const lanes = Math.max(0, Math.min(options.pipelineLanes ?? 0, options.max - 1));
  const max = options.max - lanes;
  const connector = new PgPoolConnector({ ...options, max, min: Math.min(options.min, max) }, driver);
  const database = createDatabase({
    sessions: connector,
    oneShot:
      lanes > 0
        ? new PgPipelineConnector(
            {
              connectionString: options.connectionString,
              lanes,
              slowReadMs: options.pipelineSlowReadMs,
              statementTimeoutMs: connector.sessionStatementTimeoutMs,
              connectionTimeoutMs: options.connectionTimeoutMs,
              applicationName: options.applicationName,
              statements: connector.statements,
              support: connector.support,
              resultLimits: connector.resultLimits,
            },
            driver,
          )
        : undefined,
    oneShotTimeoutMs: options.requestTimeoutMs,
    oneShotAdmission: {
      permits: lanes * LANE_DEPTH,
      queueMax: options.queueMax,
      timeoutMs: options.acquireTimeoutMs,
      overloadShedding: options.overloadShedding,
    },
    admission: {
      permits: max,
      queueMax: options.queueMax,
      timeoutMs: options.acquireTimeoutMs,
      overloadShedding: options.overloadShedding,
    },
    sessionStatementTimeoutMs: connector.sessionStatementTimeoutMs,
    log: driver.log,
  });
  return Object.assign(database, { pool: connector.pool });
}
