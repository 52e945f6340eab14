/**
 * The `pg` Pool connector (Node; also PGlite behind pglite-socket): sessions from one pool the
 * process shares, an 'error' listener on the pool and on every client for its whole life (a
 * terminated backend must never crash the process), the protocol-level CancelRequest for
 * deadlines, named prepared statements (parsed and planned once per connection), and the pool's
 * own figures. The `pg` module is passed in: nothing here imports it.
 */
import type pg from 'pg';
import { PREPARED_STATEMENTS_MAX, type PoolConfig } from '../../config.js';
import { describeError } from '../../errors.js';
import { markRerunnable } from '../../resilience/retry.js';
import { createDatabase, type CoreDatabase } from '../core/database.js';
import type { PoolFigures, Session, SessionConnector, SessionSource } from '../core/connector.js';
import type { QueryResult } from '../types.js';
import { sendCancelRequest } from './cancel.js';

type PreparedOptions = Pick<PoolConfig, 'preparedStatements' | 'preparedStatementsMax'>;

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

/**
 * How long after a CancelRequest a statement may still hold its session before the socket is cut
 * on our side: the cancel travels over the network too, and a silent network only the cut ends.
 */
const CANCEL_GRACE_MS = 1_000;

type PoolClient = pg.PoolClient & {
  processID?: number;
  /** pg's connection: its socket, and the statement names pg has seen parsed on it (name → text). */
  connection?: { stream?: { destroy(): void }; parsedStatements?: Record<string, string> };
};

/** Statement names remembered for texts (a cache of the hash, nothing more), at most this many. */
const NAME_CACHE_MAX = 1_000;

/**
 * A short stable name for a statement text: 64 bits of two multiply-xor lanes, as `pg_` + 16 hex.
 * Not cryptographic; a collision is caught before use (see StatementNames.nameFor).
 */
export function statementName(text: string): string {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
  }
  a = Math.imul(a ^ (a >>> 15), 0x2c1b3c6d) ^ Math.imul(b ^ (b >>> 13), 0x297a2d39);
  b = Math.imul(b ^ (b >>> 16), 0x85ebca6b) ^ Math.imul(a ^ (a >>> 13), 0xc2b2ae35);
  return `pg_${(a >>> 0).toString(16).padStart(8, '0')}${(b >>> 0).toString(16).padStart(8, '0')}`;
}

/** "cached plan must not change result type": a named statement prepared before a schema change. */
const isStalePlan = (err: unknown) => {
  const e = err as { code?: unknown; routine?: unknown } | undefined;
  return e?.code === '0A000' && (e.routine === undefined || e.routine === 'RevalidateCachedQuery');
};

/** What one connection has prepared: the names, and the schema epoch it prepared the first of them in. */
interface Prepared {
  names: Set<string>;
  epoch: number;
}

/**
 * Which statements run under a name, per connection. Only statements with parameters: the server
 * refuses a prepared statement of several commands, so such text (a migration) has none and stays
 * unnamed, and so do BEGIN, COMMIT, SET and the like, which gain nothing from a plan. A connection
 * keeps at most `max` names and runs further statements unnamed: no DEALLOCATE, so nothing to
 * go wrong behind a pooler, and a connection's names go with it when it is closed.
 *
 * A schema change makes a prepared statement answer 0A000 when its result type changed. The first
 * connection to meet it moves the epoch on: from then on no connection that prepared statements
 * before uses them (its statements run unnamed) and each is replaced when released, so a
 * transaction run again after the error does not meet another stale plan on another connection.
 */
class StatementNames {
  readonly #max: number;
  readonly #names = new Map<string, string>();
  readonly #connections = new WeakMap<PoolClient, Prepared>();
  #epoch = 0;
  /** Whether the server gives each connection a backend of its own; settled by the first named statement. */
  #ownBackends: boolean | Promise<boolean> | undefined;

  constructor(max: number) {
    this.#max = max;
  }

  /**
   * The name to run `text` under on `client`, or undefined to run it unnamed. Answers at once
   * (no promise, so no extra turn per statement) except while the first connection's probe of
   * its server is pending.
   */
  nameFor(client: PoolClient, text: string, params: readonly unknown[] | undefined): string | undefined | Promise<string | undefined> {
    if (!params?.length) return undefined;
    const parsed = client.connection?.parsedStatements;
    if (typeof parsed !== 'object') return undefined; // not the pg this was written against
    const prepared = this.#prepared(client);
    if (this.#isStale(prepared)) return undefined;
    const name = this.#nameOf(text);
    if (prepared.names.has(name)) return parsed[name] === text ? name : undefined;
    if (prepared.names.size >= this.#max || parsed[name] !== undefined) return undefined;
    const own = this.#backendOfItsOwn(client);
    const claim = (ok: boolean) => {
      if (!ok) return undefined;
      if (prepared.names.size === 0) prepared.epoch = this.#epoch;
      return name;
    };
    return typeof own === 'boolean' ? claim(own) : own.then(claim);
  }

  /** True when `name` was prepared on `client` before (so a plan is cached for it). */
  has(client: PoolClient, name: string): boolean {
    return this.#prepared(client).names.has(name);
  }

  /** After a named statement ran (or failed): remembered when pg saw it parsed. */
  record(client: PoolClient, name: string): void {
    if (client.connection?.parsedStatements?.[name] !== undefined) this.#prepared(client).names.add(name);
  }

  /** A stale plan was met: every connection's statements prepared until now may be stale too. */
  schemaChanged(): void {
    this.#epoch++;
  }

  /** The connection holds statements prepared before the last schema change seen: it runs none of them and is replaced. */
  isStale(client: PoolClient): boolean {
    const prepared = this.#connections.get(client);
    return prepared !== undefined && this.#isStale(prepared);
  }

  #isStale(prepared: Prepared): boolean {
    return prepared.names.size > 0 && prepared.epoch < this.#epoch;
  }

  #prepared(client: PoolClient): Prepared {
    let prepared = this.#connections.get(client);
    if (!prepared) this.#connections.set(client, (prepared = { names: new Set(), epoch: this.#epoch }));
    return prepared;
  }

  #nameOf(text: string): string {
    let name = this.#names.get(text);
    if (name === undefined) {
      if (this.#names.size >= NAME_CACHE_MAX) this.#names.delete(this.#names.keys().next().value!);
      this.#names.set(text, (name = statementName(text)));
    }
    return name;
  }

  /**
   * PGlite behind pglite-socket serves every connection from one backend, where one connection's
   * name already exists for the next (42P05) and the local Neon proxy's DISCARD ALL drops them all:
   * no names there. Asked once, on the first connection that would name a statement.
   */
  #backendOfItsOwn(client: PoolClient): boolean | Promise<boolean> {
    this.#ownBackends ??= client.query<{ v: string }>('SELECT version() AS v').then(
      ({ rows }) => (this.#ownBackends = !/PGlite/i.test(String(rows[0]?.v))),
      () => {
        this.#ownBackends = undefined; // asked again next time; unnamed until then
        return false;
      },
    );
    return this.#ownBackends;
  }
}

export class PgPoolConnector implements SessionConnector {
  readonly kind = 'pg-pool';
  readonly upstream = 'postgres';
  readonly pool: pg.Pool;
  readonly #fresh = new WeakSet<pg.PoolClient>();
  readonly #source: SessionSource;
  readonly #options: PgPoolConnectorOptions;
  readonly #driver: PgDriver;
  /** Undefined when prepared statements are switched off. */
  readonly #statements: StatementNames | undefined;
  #openedCount = 0;
  #closedCount = 0;
  #errorCount = 0;

  constructor(options: PgPoolConnectorOptions, driver: PgDriver) {
    this.#options = options;
    this.#driver = driver;
    this.#statements =
      options.preparedStatements === false ? undefined : new StatementNames(options.preparedStatementsMax ?? PREPARED_STATEMENTS_MAX);
    this.pool = new driver.Pool({
      connectionString: options.connectionString,
      max: options.max,
      min: options.min,
      idleTimeoutMillis: options.idleTimeoutMs,
      connectionTimeoutMillis: options.connectionTimeoutMs,
      // No statement may outlive its request: a startup parameter, so it costs no round trip.
      statement_timeout: this.sessionStatementTimeoutMs,
      query_timeout: options.queryTimeoutMs,
      application_name: options.applicationName,
      keepAlive: true,
    });
    this.pool.on('connect', (client) => this.#adopt(client));
    this.pool.on('remove', () => void this.#closedCount++);
    // Required (an unheard 'error' crashes the process) but silent: the client's listener logged it.
    this.pool.on('error', () => {});
    this.#source = { acquire: () => this.#acquire() };
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

  async #acquire(): Promise<{ session: Session; opened: boolean }> {
    const client = (await this.pool.connect()) as PoolClient;
    return { session: this.#session(client), opened: this.#fresh.delete(client) };
  }

  #session(client: PoolClient): Session {
    let cut: ReturnType<typeof setTimeout> | undefined;
    let busy = 0;
    return {
      query: async (text, params) => {
        busy++;
        try {
          return await this.#query(client, text, params);
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
        client.release(discard || this.#statements?.isStale(client) || undefined);
      },
    };
  }

  /**
   * Runs a statement, under its name when it has one. A plan made stale by a schema change fails
   * the statement before it ran: in autocommit it runs again here at once, unnamed (safe even for a
   * write); in a transaction, which the error aborted, it is marked so the core runs the whole
   * transaction again. Either way this connection is replaced when released.
   */
  async #query(client: PoolClient, text: string, params: readonly unknown[] | undefined): Promise<QueryResult> {
    const statements = this.#statements;
    const named = statements?.nameFor(client, text, params);
    const name = named instanceof Promise ? await named : named;
    if (statements === undefined || name === undefined) return send(client, text, params);
    const cached = statements.has(client, name);
    // Unknown (a pg without it) counts as in a transaction: the core's rerun is safe either way.
    const autocommit = typeof client.getTransactionStatus === 'function' && client.getTransactionStatus() === 'I';
    try {
      return await send(client, text, params, name);
    } catch (err) {
      if (!cached || !isStalePlan(err)) throw err;
      statements.schemaChanged();
      if (!autocommit) throw markRerunnable(err);
      return send(client, text, params);
    } finally {
      statements.record(client, name);
    }
  }

  #sendCancel(client: PoolClient): void {
    sendCancelRequest(this.#driver.Client, this.#options.connectionString, client, this.#driver.log);
  }
}

async function send(client: PoolClient, text: string, params: readonly unknown[] | undefined, name?: string): Promise<QueryResult> {
  const values = params as unknown[] | undefined;
  const res = await client.query<QueryResult['rows'][number]>(name === undefined ? { text, values } : { name, text, values });
  return { rows: res.rows, rowCount: res.rowCount ?? null, command: res.command };
}

export type PgPoolDatabase = CoreDatabase & { readonly pool: pg.Pool };

/**
 * The Node backend: the pg Pool connector under the core, with bounded admission.
 * @example
 * const database = createPgPoolDatabase({ ...config.pool, connectionString }, { Pool: pg.Pool, Client: pg.Client, log });
 * await database.warm(config.pool.min);
 */
export function createPgPoolDatabase(options: PgPoolConnectorOptions, driver: PgDriver): PgPoolDatabase {
  const connector = new PgPoolConnector(options, driver);
  const database = createDatabase({
    sessions: connector,
    admission: { permits: options.max, queueMax: options.queueMax, timeoutMs: options.acquireTimeoutMs },
    sessionStatementTimeoutMs: connector.sessionStatementTimeoutMs,
  });
  return Object.assign(database, { pool: connector.pool });
}
