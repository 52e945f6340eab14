/**
 * A session over a pg-compatible client (node-postgres, and the Neon driver's bundled copy of it)
 * that saves the round trips a transaction can save, for the pg Pool and the Neon WebSocket alike:
 * - the core's BEGIN is answered at once and written just before the transaction's first
 *   statement, both under that statement's one Sync; the server answers both in one go, and a
 *   BEGIN that failed fails that statement (the transaction then never opened). A transaction
 *   that ends before any statement never reaches the server.
 * - where the connector reads answers in the background (the edge, where a round trip is dear),
 *   COMMIT of a READ ONLY transaction below SERIALIZABLE whose statements all succeeded decides
 *   nothing (nothing to write, no serialization check): it is answered at once. Every other
 *   COMMIT is awaited.
 */
import { AppError } from '../../errors.js';
import type { Session } from '../core/connector.js';
import { changesSession, mayChangeSession } from '../core/statement-kind.js';
import { COMMIT_WITH_POSITION, positionOf } from '../consistency.js';
import type { QueryResult, TxOptions } from '../types.js';

/** The parts of pg's Query and Connection the BEGIN piggyback uses; not in pg's types. */
interface PgConnection {
  parse(query: { text: string }): void;
  bind(config: object): void;
  execute(config: object): void;
  parsedStatements?: Record<string, string>;
}
interface PgQuery {
  submit(connection: PgConnection): Error | null | undefined;
  requiresPreparation(): boolean;
  handleDataRow(msg: { length?: number }): void;
  _canceledDueToError?: unknown;
}
export type PgQueryClass = new (
  config: { text: string; values?: unknown[]; name?: string },
  values: undefined,
  callback: (err: Error | null, result: unknown) => void,
) => PgQuery;

/** A client that takes a Query object (pg's `Submittable`). */
interface SubmitsQueries {
  query(query: never): unknown;
  connection?: { parsedStatements?: Record<string, string> };
}

/** pg's Query class, where the driver exposes it (`pg.Query`, the Neon driver's `Client.Query`). */
export const queryClassOf = (Client: unknown): PgQueryClass | undefined => (Client as { Query?: PgQueryClass }).Query;

/** The SQL of a typed begin: `BEGIN [ISOLATION LEVEL …] [READ ONLY]`, written by the connectors only. */
export function beginStatement(opts: TxOptions): string {
  let sql = 'BEGIN';
  if (opts.isolation) sql += ` ISOLATION LEVEL ${opts.isolation.toUpperCase()}`;
  if (opts.readOnly) sql += ' READ ONLY';
  return sql;
}

type PgShaped = { rows: unknown[]; rowCount?: number | null; command?: string };

/**
 * A pg-shaped result (node-postgres, the Neon driver's HTTP and WebSocket) as the core's
 * QueryResult. A script of several statements answers with its first command's tag (a COMMIT's
 * outcome) and its last statement's rows.
 */
export const toResult = (r: PgShaped | PgShaped[]): QueryResult => {
  const last = Array.isArray(r) ? r[r.length - 1]! : r;
  return { rows: last.rows as QueryResult['rows'], rowCount: last.rowCount ?? null, command: Array.isArray(r) ? r[0]!.command : r.command };
};

const answered = (command: string): QueryResult => ({ rows: [], rowCount: null, command });

export interface PgSessionParts {
  /**
   * Runs one statement; with `begin`, that BEGIN goes in front of it in the same write (see
   * withBegin); with `script`, as a simple Query (the process's own SQL of several statements).
   */
  run(text: string, params: readonly unknown[] | undefined, begin: string | undefined, script?: boolean): Promise<QueryResult>;
  cancel(): void;
  /** Gives the connection back; `discard` also when a statement changed the session (mayChangeSession, changesSession). */
  release(discard: boolean): void;
  /** Where COMMITs answered at once are read; without it every COMMIT is awaited. */
  inBackground?: (commit: Promise<unknown>) => void;
}

export function pgSession(parts: PgSessionParts): Session {
  let begin: string | undefined;
  let tx: { quickCommit: boolean; failed: boolean } | undefined;
  let changed = false;
  const run = async (text: string, params?: readonly unknown[], script?: boolean) => {
    const pending = begin;
    begin = undefined;
    // Before it runs: what it changes stays even if its answer never comes (a cut connection, a cancel).
    if (mayChangeSession(text)) changed = true;
    try {
      const result = await parts.run(text, params, pending, script);
      if (changesSession(result.command)) changed = true;
      return result;
    } catch (err) {
      if (tx) tx.failed = true;
      throw err;
    }
  };
  const end = async (command: 'COMMIT' | 'ROLLBACK', position = false): Promise<QueryResult & { position?: string }> => {
    const ending = tx;
    tx = undefined;
    if (begin !== undefined) {
      begin = undefined;
      return answered(command);
    }
    if (command === 'COMMIT' && ending?.quickCommit && !ending.failed) {
      parts.inBackground!(parts.run('COMMIT', undefined, undefined));
      return answered('COMMIT');
    }
    if (command === 'COMMIT' && position && !ending?.failed) {
      const result = await run(COMMIT_WITH_POSITION, undefined, true);
      return { ...answered(result.command ?? 'COMMIT'), position: positionOf(result) };
    }
    return run(command);
  };
  return {
    // A script has no parameters (a statement with them goes in the extended protocol either way).
    query: (text, params, script) => run(text, params, script === true && !params?.length),
    begin(options) {
      begin = beginStatement(options);
      const quick = parts.inBackground !== undefined && options.readOnly === true && options.isolation !== 'serializable';
      tx = { quickCommit: quick, failed: false };
      return Promise.resolve();
    },
    commit: (options) => end('COMMIT', options?.position),
    rollback: async () => void (await end('ROLLBACK')),
    cancel: () => parts.cancel(),
    release: (discard) => parts.release(discard || changed),
  };
}

/**
 * The server's last word on the connection's transaction (ReadyForQuery: 'I' idle, 'T' in a
 * transaction, 'E' in a failed one): only an idle connection goes back to the pool. A pg that does
 * not track it (before 8.16) counts as idle, as before.
 */
export function isIdle(client: { getTransactionStatus?: () => string | null }): boolean {
  if (typeof client.getTransactionStatus !== 'function') return true;
  const status = client.getTransactionStatus();
  return status === 'I' || status === null;
}

/** At most this many rows, or bytes of rows, per statement result (RESULT_MAX_ROWS, RESULT_MAX_BYTES). */
export interface ResultLimits {
  maxRows: number;
  maxBytes: number;
}

/** The one error for a result past the bound; `what` names the bound it passed where it is not ours (Neon HTTP's response cap). */
export const resultTooLarge = (
  limits: ResultLimits,
  what = `RESULT_MAX_ROWS (${limits.maxRows}) or RESULT_MAX_BYTES (${limits.maxBytes})`,
) => new AppError(500, 'result_too_large', `A statement's result passed ${what}: page it (LIMIT … with a key), or raise the bound.`);

/**
 * pg's Query, always in the extended protocol, keeping no row past its limits: the rest of the
 * answer is read and dropped (the connection stays in step; on a lane, others' answers follow it),
 * and the statement fails with result_too_large when the server is done (pg answers a query's own
 * error at ReadyForQuery). One subclass per driver's Query class, made once: nothing is allocated
 * per statement or per row beyond pg's own.
 */
interface ExtendedQuery extends PgQuery {
  limits: ResultLimits | undefined;
}
const extendedClasses = new WeakMap<PgQueryClass, new (...args: ConstructorParameters<PgQueryClass>) => ExtendedQuery>();

function extendedClassOf(Query: PgQueryClass) {
  let Extended = extendedClasses.get(Query);
  if (Extended === undefined) {
    Extended = class extends Query {
      limits: ResultLimits | undefined;
      #rows = 0;
      #bytes = 0;
      override requiresPreparation(): boolean {
        return true;
      }
      override handleDataRow(msg: { length?: number }): void {
        const limits = this.limits;
        if (limits && !this._canceledDueToError && (++this.#rows > limits.maxRows || (this.#bytes += msg.length ?? 0) > limits.maxBytes)) {
          this._canceledDueToError = resultTooLarge(limits);
        }
        if (!this._canceledDueToError) super.handleDataRow(msg);
      }
    };
    extendedClasses.set(Query, Extended);
  }
  return Extended;
}

function newExtendedQuery(
  Query: PgQueryClass,
  config: { text: string; values?: unknown[]; name?: string },
  limits: ResultLimits | undefined,
  callback: (err: Error | null, result: unknown) => void,
): ExtendedQuery {
  const query = new (extendedClassOf(Query))(config, undefined, callback);
  query.limits = limits;
  return query;
}

type PgResult = { rows: unknown[]; rowCount?: number | null; command?: string };

/**
 * One statement in the extended protocol (Parse/Bind/Execute), even without parameters, so the
 * server refuses several commands in one text (42601). pg ≥ 8.11 takes `queryMode: 'extended'`;
 * an older copy (the Neon driver's) is told through its Query object.
 */
export function extended(
  client: SubmitsQueries,
  Query: PgQueryClass | undefined,
  text: string,
  params?: readonly unknown[],
  name?: string,
  limits?: ResultLimits,
): Promise<PgResult> {
  const values = params ? [...params] : [];
  if (!Query) return client.query({ text, values, name, queryMode: 'extended' } as never) as Promise<PgResult>;
  return new Promise<PgResult>((resolve, reject) => {
    const query = newExtendedQuery(Query, { text, values, name }, limits, (err, result) =>
      err ? reject(err) : resolve(result as PgResult),
    );
    client.query(query as never);
  });
}

/**
 * `text` with `begin` in front, in one write and one answer: BEGIN goes as Parse/Bind/Execute
 * ahead of the statement's own extended-protocol messages, so the statement's Sync closes both; pg
 * reads two results, the statement's last. A script (the process's own SQL, several statements)
 * goes as one simple Query ("BEGIN …;script"). A named statement not yet parsed on this connection
 * is not piggybacked: pg marks a name parsed at the first ParseComplete of the write, which would
 * be BEGIN's.
 */
export async function withBegin(
  client: SubmitsQueries,
  Query: PgQueryClass | undefined,
  begin: string,
  text: string,
  params: readonly unknown[] | undefined,
  name?: string,
  script = false,
  limits?: ResultLimits,
): Promise<PgResult> {
  const unparsed = name !== undefined && client.connection?.parsedStatements?.[name] === undefined;
  if (!Query || unparsed) {
    await submit(client, { text: begin });
    return script ? submit(client, { text }) : extended(client, Query, text, params, name, limits);
  }
  const results = await new Promise<unknown>((resolve, reject) => {
    const config = script ? { text: `${begin};${text}` } : { text, values: params ? [...params] : [], name };
    const settle = (err: Error | null, result: unknown) => (err ? reject(err) : resolve(result));
    const query = script ? new Query(config, undefined, settle) : newExtendedQuery(Query, config, limits, settle);
    if (!script) {
      const own = query.submit.bind(query);
      query.submit = (connection) => {
        connection.parse({ text: begin });
        connection.bind({});
        connection.execute({});
        return own(connection);
      };
    }
    client.query(query as never);
  });
  const list = (Array.isArray(results) ? results : [results]) as PgResult[];
  return list[list.length - 1]!;
}

function submit(client: SubmitsQueries, config: { text: string; values?: unknown[]; name?: string }) {
  return client.query(config as never) as Promise<PgResult>;
}
