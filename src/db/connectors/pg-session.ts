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
import type { Session } from '../core/connector.js';
import type { QueryResult } from '../types.js';

/** The parts of pg's Query and Connection the BEGIN piggyback uses; not in pg's types. */
interface PgConnection {
  parse(query: { text: string }): void;
  bind(config: object): void;
  execute(config: object): void;
  parsedStatements?: Record<string, string>;
}
interface PgQuery {
  submit(connection: PgConnection): Error | null | undefined;
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

/** The core's own transaction control (beginStatement): `BEGIN [ISOLATION LEVEL …] [READ ONLY]`, no parameters. */
const isBegin = (text: string, params?: readonly unknown[]) => /^BEGIN( |$)/.test(text) && !params?.length;

/** A pg-shaped result (node-postgres, the Neon driver's HTTP and WebSocket) as the core's QueryResult. */
export const toResult = (r: { rows: unknown[]; rowCount?: number | null; command?: string }): QueryResult => ({
  rows: r.rows as QueryResult['rows'],
  rowCount: r.rowCount ?? null,
  command: r.command,
});

const answered = (command: string): QueryResult => ({ rows: [], rowCount: null, command });

export interface PgSessionParts {
  /** Runs one statement; with `begin`, that BEGIN goes in front of it in the same write (see withBegin). */
  run(text: string, params: readonly unknown[] | undefined, begin: string | undefined): Promise<QueryResult>;
  cancel(): void;
  release(discard: boolean): void;
  /** Where COMMITs answered at once are read; without it every COMMIT is awaited. */
  inBackground?: (commit: Promise<unknown>) => void;
}

export function pgSession(parts: PgSessionParts): Session {
  let begin: string | undefined;
  let tx: { quickCommit: boolean; failed: boolean } | undefined;
  const run = async (text: string, params?: readonly unknown[]) => {
    const pending = begin;
    begin = undefined;
    try {
      return await parts.run(text, params, pending);
    } catch (err) {
      if (tx) tx.failed = true;
      throw err;
    }
  };
  return {
    async query(text, params) {
      if (isBegin(text, params)) {
        begin = text;
        const quick = parts.inBackground !== undefined && text.includes(' READ ONLY') && !text.includes('SERIALIZABLE');
        tx = { quickCommit: quick, failed: false };
        return answered('BEGIN');
      }
      if (text !== 'COMMIT' && text !== 'ROLLBACK') return run(text, params);
      const ending = tx;
      tx = undefined;
      if (begin !== undefined) {
        begin = undefined;
        return answered(text);
      }
      if (text === 'COMMIT' && ending?.quickCommit && !ending.failed) {
        parts.inBackground!(parts.run('COMMIT', undefined, undefined));
        return answered('COMMIT');
      }
      return run(text);
    },
    cancel: () => parts.cancel(),
    release: (discard) => parts.release(discard),
  };
}

/**
 * `text` with `begin` in front, in one write and one answer. Without parameters the two go as one
 * simple Query ("BEGIN …;statement"); with them, BEGIN goes as Parse/Bind/Execute ahead of the
 * statement's own extended-protocol messages, so the statement's Sync closes both. Either way pg
 * reads two results; the statement's is the last. A named statement not yet parsed on this
 * connection is not piggybacked: pg marks a name parsed at the first ParseComplete of the write,
 * which would be BEGIN's.
 */
export async function withBegin(
  client: SubmitsQueries,
  Query: PgQueryClass | undefined,
  begin: string,
  text: string,
  params: readonly unknown[] | undefined,
  name?: string,
): Promise<{ rows: unknown[]; rowCount?: number | null; command?: string }> {
  const values = params?.length ? [...params] : undefined;
  const unparsed = name !== undefined && client.connection?.parsedStatements?.[name] === undefined;
  if (!Query || unparsed) {
    await submit(client, { text: begin });
    return submit(client, { text, values, name });
  }
  const results = await new Promise<unknown>((resolve, reject) => {
    const config = values ? { text, values, name } : { text: `${begin};${text}` };
    const query = new Query(config, undefined, (err, result) => (err ? reject(err) : resolve(result)));
    if (values) {
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
  const list = (Array.isArray(results) ? results : [results]) as { rows: unknown[]; rowCount?: number | null; command?: string }[];
  return list[list.length - 1]!;
}

function submit(client: SubmitsQueries, config: { text: string; values?: unknown[]; name?: string }) {
  return client.query(config as never) as Promise<{ rows: unknown[]; rowCount?: number | null; command?: string }>;
}
