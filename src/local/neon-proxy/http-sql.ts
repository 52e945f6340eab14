/**
 * `POST /sql`: Neon's SQL-over-HTTP, answered with `pg`. The driver sends the connection string
 * in a header and a JSON body, and expects node-postgres-shaped results with every value as
 * Postgres text (it asks for that with `Neon-Raw-Text-Output: true` and parses types itself from
 * `dataTypeID`); without that header values come back typed, as Neon types them (json-values.ts).
 * Statements run with the extended protocol, as Neon runs them, so one request is one statement.
 * Each request gets a clean session, as on Neon: the pooled connection is reset (DISCARD ALL)
 * before reuse, or dropped. A client that goes away cancels its statement (CancelRequest).
 * Errors keep the Postgres fields the driver copies onto `NeonDbError`; statuses follow Neon's
 * proxy (400 SQL/input, 413 request too large, 507 response too large).
 */
import type { IncomingMessage } from 'node:http';
import pg, { DatabaseError } from 'pg';
import { sendCancelRequest } from '../../db/connectors/cancel.js';
import { jsonConverter } from './json-values.js';
import { releaseClean, type PoolRegistry } from './pools.js';
import { TargetError, describeTarget, isAllowed, parseConnectionString, type ConnectionInfo, type Target } from './targets.js';

export interface SqlContext {
  allowed: Target[];
  pools: PoolRegistry;
  maxRequestBytes: number;
  maxResponseBytes: number;
  log: (line: string) => void;
}

export interface SqlResponse {
  status: number;
  body: string;
  headers: Record<string, string>;
  /** `user@host:port/db` for the log line, once known; never the password. */
  target?: string;
  /** The target is not on the allow-list. */
  refused?: boolean;
}

/** A failure with its HTTP status; the message is safe to show (no credentials). */
export class ProxyError extends Error {
  override name = 'ProxyError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** A target outside the allow-list: Neon's 400 for a connection it will not make, counted apart. */
export class RefusedError extends ProxyError {
  override name = 'RefusedError';
}

interface Statement {
  query: string;
  params: unknown[];
  arrayMode: boolean | undefined;
}

type Payload = { statement: Statement } | { batch: Statement[] };

const ISOLATION_LEVELS: Record<string, string> = {
  ReadUncommitted: 'READ UNCOMMITTED',
  ReadCommitted: 'READ COMMITTED',
  RepeatableRead: 'REPEATABLE READ',
  Serializable: 'SERIALIZABLE',
};

/** A COPY to or from the client, read in a statement without its comments and quoted text (noSqlText). */
const COPY_STDIO = /^\s*COPY\b[\s\S]*\b(?:TO\s+STDOUT|FROM\s+STDIN)\b/i;
/** Comments, string literals ('…', E'…', $tag$…$tag$) and quoted identifiers: words in them are not the statement's. */
const SQL_TEXT = /--[^\n]*|\/\*[\s\S]*?\*\/|'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$[A-Za-z_]*\$)[\s\S]*?\1/g;
const noSqlText = (query: string) => query.replace(SQL_TEXT, ' ');

/**
 * How deep a body may nest arrays and objects. Postgres arrays stop at 6 dimensions, and both a
 * JSON.parse reviver and pg (turning a nested parameter into text) recurse: far deeper input
 * would overflow the stack.
 */
const MAX_BODY_DEPTH = 64;
/** Digits a double may not keep: a number with this many in a row is read again, digits kept. */
const LONG_DIGITS = /\d{16}/;

/** JSON.rawJSON (Node 21+; not yet in TypeScript's lib): a value JSON.stringify writes as the given text. */
const rawJSON = (text: string) => (JSON as unknown as { rawJSON: (text: string) => object }).rawJSON(text);

/** The Postgres error fields Neon forwards, in its order; absent ones are sent as null, but `code` and `severity` as "" (as Neon does). */
const ERROR_FIELDS = [
  'code',
  'detail',
  'hint',
  'position',
  'internalPosition',
  'internalQuery',
  'severity',
  'where',
  'table',
  'column',
  'schema',
  'dataType',
  'constraint',
  'file',
  'line',
  'routine',
] as const;

/** `signal` aborts when the client goes away before its answer was sent. */
export async function handleSql(req: IncomingMessage, ctx: SqlContext, signal: AbortSignal): Promise<SqlResponse> {
  let target: string | undefined;
  try {
    const info = connectionInfo(req, ctx.allowed);
    target = `${info.user}@${describeTarget(info)}/${info.database}`;
    const options = batchOptions(req);
    const payload = parsePayload(await readBody(req, ctx.maxRequestBytes));
    const output: Output = {
      arrayMode: header(req, 'neon-array-mode') === 'true',
      // Neon: raw text only when the header is exactly "true".
      rawText: header(req, 'neon-raw-text-output') === 'true',
      budget: { left: ctx.maxResponseBytes, limit: ctx.maxResponseBytes },
      signal,
    };
    const lease = await ctx.pools.connect(info, signal);
    const client = lease.client;
    const cancel = cancelOnAbort(client, info, signal, ctx.log);
    let discard = false;
    try {
      throwIfAborted(signal);
      if ('statement' in payload) {
        const body = await runStatement(client, payload.statement, output);
        return { status: 200, body, headers: {}, target };
      }
      const results = await runBatch(client, payload.batch, options.begin, output);
      return { status: 200, body: `{"results":[${results.join(',')}]}`, headers: options.echo, target };
    } catch (err) {
      discard = !(err instanceof DatabaseError) || err.severity === 'FATAL' || err.severity === 'PANIC';
      throw signal.aborted ? clientGone() : err;
    } finally {
      // A cancelled connection is never reused: a CancelRequest that lands late would hit the
      // next request's statement. The reset runs after the answer is handed back, off the
      // client's clock; the next request waits for it in the pool queue.
      void releaseClean(lease, discard || cancel.sent());
      cancel.dispose();
    }
  } catch (err) {
    const failure = signal.aborted && !(err instanceof ProxyError) ? clientGone() : err;
    return { ...errorResponse(failure), headers: {}, target, refused: err instanceof RefusedError };
  }
}

/**
 * Sends a protocol CancelRequest for `client`'s backend when `signal` aborts (the client went
 * away): the statement fails with 57014 and the connection comes back, instead of running on
 * and holding a pool slot to its end.
 */
function cancelOnAbort(
  client: pg.Client,
  info: ConnectionInfo,
  signal: AbortSignal,
  log: (line: string) => void,
): { sent: () => boolean; dispose: () => void } {
  let sent = false;
  const onAbort = () => {
    sent = true;
    // Only host and port matter to a CancelRequest: no auth, no database.
    sendCancelRequest(pg.Client, `postgres://${describeTarget(info)}`, client, log);
  };
  signal.addEventListener('abort', onAbort, { once: true });
  return { sent: () => sent, dispose: () => signal.removeEventListener('abort', onAbort) };
}

function clientGone(): ProxyError {
  return new ProxyError(499, 'the client closed the request; its statement was cancelled');
}

function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw clientGone();
}

function connectionInfo(req: IncomingMessage, allowed: Target[]): ConnectionInfo {
  const raw = header(req, 'neon-connection-string');
  if (!raw) throw new ProxyError(400, 'missing the Neon-Connection-String header');
  let info: ConnectionInfo;
  try {
    info = parseConnectionString(raw);
  } catch (err) {
    if (err instanceof TargetError) throw new ProxyError(400, `invalid connection string: ${err.message}`);
    throw err;
  }
  if (!info.user) throw new ProxyError(400, 'invalid connection string: missing username');
  if (!info.database) throw new ProxyError(400, 'invalid connection string: missing database name');
  // Neon answers a connection it will not make with 400 and its JSON error, which the driver
  // shows as a NeonDbError with the message (any other status is "Server error (HTTP status N)").
  if (!isAllowed(allowed, info)) throw new RefusedError(400, `this proxy does not serve ${describeTarget(info)}`);
  return info;
}

/** Batch headers as Neon reads them: an unknown isolation level is an error, a flag is on only when exactly "true". */
function batchOptions(req: IncomingMessage): { begin: string; echo: Record<string, string> } {
  const isolation = header(req, 'neon-batch-isolation-level');
  const readOnly = header(req, 'neon-batch-read-only') === 'true';
  const deferrable = header(req, 'neon-batch-deferrable') === 'true';
  const echo: Record<string, string> = {};
  let begin = 'BEGIN';
  if (isolation !== undefined) {
    if (!Object.hasOwn(ISOLATION_LEVELS, isolation)) throw new ProxyError(400, 'invalid isolation level');
    begin += ` ISOLATION LEVEL ${ISOLATION_LEVELS[isolation]}`;
    echo['Neon-Batch-Isolation-Level'] = isolation;
  }
  if (readOnly) {
    begin += ' READ ONLY';
    echo['Neon-Batch-Read-Only'] = 'true';
  }
  if (deferrable) {
    begin += ' DEFERRABLE';
    echo['Neon-Batch-Deferrable'] = 'true';
  }
  return { begin, echo };
}

/**
 * Reads the whole body, keeping at most `limit` bytes. An oversized body is still drained
 * (and discarded) before the 413 goes out, so the client is not cut off mid-upload and
 * actually receives the answer.
 */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
      else chunks.length = 0;
    });
    req.on('end', () => {
      if (size > limit) reject(new ProxyError(413, `request is too large (max is ${limit} bytes)`));
      else resolve(Buffer.concat(chunks));
    });
    req.on('error', reject);
  });
}

function parsePayload(body: Buffer): Payload {
  const text = body.toString('utf8');
  let json: unknown;
  try {
    // Without a reviver JSON.parse does not recurse, so any depth parses; it is checked next.
    json = JSON.parse(text);
  } catch (err) {
    throw new ProxyError(400, `could not parse the HTTP request body: ${(err as Error).message}`);
  }
  if (!nestsWithin(json, MAX_BODY_DEPTH))
    throw new ProxyError(400, `could not parse the HTTP request body: nested more than ${MAX_BODY_DEPTH} levels deep`);
  if (LONG_DIGITS.test(text)) json = JSON.parse(text, keepNumberDigits);
  if (isObject(json) && Array.isArray(json.queries)) return { batch: json.queries.map((q, i) => statement(q, `queries[${i}]`)) };
  return { statement: statement(json, 'the body') };
}

/**
 * A JSON number a double cannot hold as written (above 2^53, or more digits than it keeps) stays
 * the text the client sent: pg then sends Postgres those digits, not the rounded double's.
 */
function keepNumberDigits(_key: string, value: unknown, context?: { source?: string }): unknown {
  if (typeof value !== 'number' || context?.source === undefined) return value;
  return String(value) === context.source ? value : rawJSON(context.source);
}

function statement(value: unknown, where: string): Statement {
  const bad = (what: string) => new ProxyError(400, `could not parse the HTTP request body: ${where} ${what}`);
  if (!isObject(value)) throw bad('must be an object with "query" and "params" (or "queries")');
  if (typeof value.query !== 'string') throw bad('needs "query" as a string');
  if (value.params !== undefined && !Array.isArray(value.params)) throw bad('needs "params" as an array');
  if (value.arrayMode !== undefined && typeof value.arrayMode !== 'boolean') throw bad('needs "arrayMode" as a boolean');
  // Over HTTP there is no copy sub-protocol: a COPY TO STDOUT would "succeed" with no rows and a
  // COPY FROM STDIN would wait for data that never comes.
  if (COPY_STDIO.test(noSqlText(value.query)))
    throw new ProxyError(400, 'COPY … TO STDOUT / FROM STDIN is not supported over HTTP; use a WebSocket session');
  // Params arrive as text (or null) from the driver; pg turns any other JSON value into text too.
  return { query: value.query, params: (value.params as unknown[] | undefined) ?? [], arrayMode: value.arrayMode };
}

/** Whether `value` nests arrays and objects at most `limit` levels deep; walked without recursion, so any depth is safe to ask about. */
function nestsWithin(value: unknown, limit: number): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  for (let item = stack.pop(); item; item = stack.pop()) {
    const [v, depth] = item;
    if (typeof v !== 'object' || v === null) continue;
    if (depth >= limit) return false;
    for (const child of Object.values(v)) stack.push([child, depth + 1]);
  }
  return true;
}

async function runBatch(client: pg.Client, batch: Statement[], begin: string, output: Output): Promise<string[]> {
  await client.query(begin);
  try {
    const results: string[] = [];
    for (const stmt of batch) {
      throwIfAborted(output.signal);
      results.push(await runStatement(client, stmt, output));
    }
    await client.query('COMMIT');
    return results;
  } catch (err) {
    // After a 507 the connection is mid-result and gets discarded, which aborts the transaction.
    if (!(err instanceof ProxyError)) await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

interface Budget {
  left: number;
  limit: number;
}

/** How a request wants its results, and what it may still spend on them. */
interface Output {
  arrayMode: boolean;
  rawText: boolean;
  budget: Budget;
  signal: AbortSignal;
}

interface RawResult {
  command: string | null;
  rowCount: number | null;
  fields: pg.FieldDef[];
}

/**
 * Runs one statement and returns its JSON result text. Rows are serialized as they arrive and
 * counted against the response budget; past it the statement is abandoned with a 507 (the
 * caller discards the connection, which stops the backend) instead of buffering the whole result.
 */
function runStatement(client: pg.Client, stmt: Statement, output: Output): Promise<string> {
  const arrayMode = stmt.arrayMode ?? output.arrayMode;
  const budget = output.budget;
  return new Promise((resolve, reject) => {
    const rows: string[] = [];
    let settled = false;
    let convert: ((row: (string | null)[]) => unknown[]) | undefined;
    const config = { text: stmt.query, values: stmt.params, rowMode: 'array', queryMode: 'extended' };
    const query = new pg.Query(config as pg.QueryConfig);
    query.on('row', (raw: (string | null)[], result?: { fields: pg.FieldDef[] }) => {
      if (settled) return;
      convert ??= rowConverter(result?.fields ?? [], output.rawText);
      const row = convert(raw);
      const json = JSON.stringify(arrayMode ? row : Object.fromEntries(row.map((v, i) => [result?.fields[i]?.name ?? String(i), v])));
      budget.left -= Buffer.byteLength(json) + 1;
      if (budget.left < 0) {
        settled = true;
        reject(new ProxyError(507, `response is too large (max is ${budget.limit} bytes)`));
        return;
      }
      rows.push(json);
    });
    query.on('error', (err: Error) => {
      if (!settled) reject(err);
      settled = true;
    });
    query.on('end', (result: RawResult) => {
      if (settled) return;
      settled = true;
      const fields = result.fields.map((f) => ({
        name: f.name,
        dataTypeID: f.dataTypeID,
        tableID: f.tableID,
        columnID: f.columnID,
        dataTypeSize: f.dataTypeSize,
        dataTypeModifier: f.dataTypeModifier,
        format: 'text',
      }));
      const head = JSON.stringify({ command: result.command ?? '', rowCount: result.rowCount ?? null, rowAsArray: arrayMode, fields });
      resolve(`${head.slice(0, -1)},"rows":[${rows.join(',')}]}`);
    });
    client.query(query);
  });
}

/** The identity for raw text; otherwise one typed-JSON converter per column, built once per result. */
function rowConverter(fields: pg.FieldDef[], rawText: boolean): (row: (string | null)[]) => unknown[] {
  if (rawText) return (row) => row;
  const converters = fields.map((f) => jsonConverter(f.dataTypeID));
  return (row) => row.map((v, i) => (converters[i] ? converters[i](v) : v));
}

/** Neon's error body: the message plus every Postgres field (see ERROR_FIELDS). */
function errorResponse(err: unknown): { status: number; body: string } {
  const body: Record<string, unknown> = { message: '' };
  for (const field of ERROR_FIELDS) body[field] = null;
  body.code = '';
  body.severity = '';
  let status: number;
  if (err instanceof ProxyError) {
    status = err.status;
    body.message = err.message;
  } else if (err instanceof DatabaseError) {
    status = 400;
    body.message = err.message;
    for (const field of ERROR_FIELDS) body[field] = err[field] ?? body[field];
  } else {
    // Could not connect, or the connection died mid-statement: the database, not the request, failed.
    status = 502;
    body.message = `database connection failed: ${err instanceof Error ? err.message : String(err)}`;
  }
  return { status, body: JSON.stringify(body) };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
