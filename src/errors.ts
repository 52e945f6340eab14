/**
 * One error class for everything the API answers with, and the one place that maps database
 * and driver errors onto it. Responses never carry a stack, a driver message or a connection
 * string: only a stable `code`, a sentence we wrote, and the request id.
 */
import type { DatabaseTarget } from './config.js';

export type ErrorCode =
  | 'validation_failed'
  | 'invalid_json'
  | 'not_found'
  | 'route_not_found'
  | 'method_not_allowed'
  | 'conflict'
  | 'idempotency_in_progress'
  | 'idempotency_key_reused'
  | 'circuit_open'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'pool_exhausted'
  | 'overloaded'
  | 'database_unavailable'
  | 'shutting_down'
  | 'timeout'
  | 'unauthorized'
  | 'upstream_unavailable'
  | 'upstream_timeout'
  | 'client_closed'
  | 'statement_refused'
  | 'result_too_large'
  | 'invalid_consistency_token'
  | 'internal';

export interface FieldError {
  path: string;
  message: string;
}

export class AppError extends Error {
  override name = 'AppError';
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly extra: { fields?: FieldError[]; retryAfterSec?: number; cause?: unknown } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
  }

  /** The JSON body and headers of this error's response. */
  toResponse(requestId: string): Response {
    const body = {
      error: {
        code: this.code,
        message: this.message,
        requestId,
        ...(this.extra.fields ? { fields: this.extra.fields } : {}),
      },
    };
    const headers = new Headers({ 'content-type': 'application/json; charset=utf-8' });
    if (this.extra.retryAfterSec !== undefined) headers.set('retry-after', String(this.extra.retryAfterSec));
    return new Response(JSON.stringify(body), { status: this.status, headers });
  }
}

/** Raised by the connection gate when no connection frees up within the acquire timeout. */
export class PoolExhaustedError extends AppError {
  constructor(waitedMs: number) {
    super(503, 'pool_exhausted', `No database connection became free within ${Math.round(waitedMs)} ms; try again shortly.`, {
      retryAfterSec: 1,
    });
  }
}

/** Raised at once when a request's predicted wait for a connection does not fit (resilience/gate.ts); Retry-After from that estimate. */
export class OverloadedError extends AppError {
  constructor(retryAfterSec = 1) {
    super(503, 'overloaded', 'The server is at capacity; try again shortly.', { retryAfterSec });
  }
}

/**
 * The client went away before its answer: its work was cancelled. Nobody reads this response;
 * 499 (as nginx logs it) keeps such requests apart in the stats.
 */
export const clientClosed = () => new AppError(499, 'client_closed', 'The client closed the request; its work was cancelled.');

/** The request's own deadline passed before or while it used the database. */
export const deadlinePassed = (cause?: unknown) =>
  new AppError(504, 'timeout', 'The request ran out of time; its database work was cancelled.', cause === undefined ? {} : { cause });

export const notFound = (what: string, id: string) => new AppError(404, 'not_found', `${what} ${id} was not found.`);

/** SQLSTATE classes and driver errors that mean "the database was not reachable / not usable". */
const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EPIPE',
  'EAI_AGAIN',
  '57P01', // admin_shutdown (pg_terminate_backend)
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '53300', // too_many_connections
  '53000', // insufficient_resources
]);

interface DriverError {
  code?: unknown;
  message?: unknown;
  constraint?: unknown;
}

/**
 * What a connector made of a driver failure that carries neither a SQLSTATE nor a system code (pg's
 * own "Connection terminated", "timeout expired", "Query read timeout"; Neon HTTP's transport
 * errors), decided once where it entered, by where it happened (connecting, or a statement on a
 * connection that is gone or still there): never by its message.
 */
export type FailureKind = 'connect_failed' | 'connection_lost' | 'read_timeout';

const FAILURE_KIND = Symbol.for('poolgate.failureKind');

export function markFailure<E>(err: E, kind: FailureKind): E {
  if (typeof err === 'object' && err !== null) Object.defineProperty(err, FAILURE_KIND, { value: kind, configurable: true });
  return err;
}

export function failureKind(err: unknown): FailureKind | undefined {
  return (err as { [FAILURE_KIND]?: FailureKind } | undefined)?.[FAILURE_KIND];
}

/** A driver error's code (SQLSTATE or system code), or '' when it has none. */
export const codeOfError = (err: unknown): string => {
  const code = (err as DriverError | undefined)?.code;
  return typeof code === 'string' ? code : '';
};

/** A backend ended by the server (pg_terminate_backend, a crash, a shutdown: 57P01–57P03), not by a fault of ours. */
export const isServerTermination = (err: unknown): boolean => /^57P0[123]$/.test(codeOfError(err));

/** True when the error says the connection itself failed (not the SQL): by SQLSTATE, system code, or the connector's classification. */
export function isConnectionError(err: unknown): boolean {
  if (!err || typeof err !== 'object') return false;
  const code = codeOfError(err);
  if (CONNECTION_CODES.has(code) || code.startsWith('08')) return true;
  const kind = failureKind(err);
  return kind === 'connect_failed' || kind === 'connection_lost';
}

/** True when a statement or query timed out (server-side cancel, or the driver's read timeout). */
export function isTimeoutError(err: unknown): boolean {
  return codeOfError(err) === '57014' || failureKind(err) === 'read_timeout';
}

/** Maps anything thrown while serving a request onto an AppError. */
export function toAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  const e = (err && typeof err === 'object' ? err : {}) as DriverError;
  const code = typeof e.code === 'string' ? e.code : '';
  if (isTimeoutError(err)) {
    return new AppError(504, 'timeout', 'The database did not answer in time; the statement was cancelled.', { cause: err });
  }
  if (isConnectionError(err)) {
    return new AppError(503, 'database_unavailable', 'The database is unavailable right now; try again shortly.', {
      retryAfterSec: 2,
      cause: err,
    });
  }
  if (code === '40001' || code === '40P01') {
    return new AppError(503, 'database_unavailable', 'A concurrent update conflicted with this one; try again.', {
      retryAfterSec: 1,
      cause: err,
    });
  }
  if (code === '23505') return new AppError(409, 'conflict', 'A record with the same unique value already exists.', { cause: err });
  if (code === '23503') return new AppError(404, 'not_found', 'A record this request refers to was not found.', { cause: err });
  if (code.startsWith('22') || code === '23514' || code === '23502') {
    return new AppError(400, 'validation_failed', 'A value was out of range or malformed.', { cause: err });
  }
  return new AppError(500, 'internal', 'Something went wrong on our side.', { cause: err });
}

/** What made a breaker refuse: the failure that opened it (its cause), else the error itself. */
export function rootCause(err: unknown): unknown {
  const opened = err instanceof AppError && err.code === 'circuit_open' && err.extra.cause !== undefined;
  return opened ? err.extra.cause : err;
}

type Hint = (at: string, t: DatabaseTarget, code: string) => string;
const timedOut: Hint = (at) => `timed out connecting to ${at}; is it reachable from here? check DATABASE_URL`;
const refusedCredentials: Hint = (at, _t, code) => `the database at ${at} refused the credentials (${code}); check DATABASE_URL`;

/** Start-up failures by the driver's code: what happened, where, and what to fix. */
const STARTUP_HINTS = new Map<string, Hint>([
  ['ECONNREFUSED', (at) => `connection refused to ${at}; is PostgreSQL running there? check DATABASE_URL`],
  ['ENOTFOUND', (_at, t) => `cannot resolve the database host "${t.host}"; check DATABASE_URL`],
  ['EAI_AGAIN', (_at, t) => `cannot resolve the database host "${t.host}" right now (EAI_AGAIN); check DATABASE_URL and DNS`],
  ['ETIMEDOUT', timedOut],
  ['EHOSTUNREACH', (at) => `no route to ${at} (EHOSTUNREACH); check DATABASE_URL`],
  ['ENETUNREACH', (at) => `no route to ${at} (ENETUNREACH); check DATABASE_URL`],
  [
    '3D000',
    (_at, t) =>
      `${t.database ? `database "${t.database}"` : 'the default database (named after the user)'} does not exist; create it or check DATABASE_URL`,
  ],
  ['28P01', refusedCredentials],
  ['28000', refusedCredentials],
  ['57P03', (at) => `the database at ${at} is starting up or shutting down (57P03); try again shortly`],
  ['53300', (at) => `the database at ${at} has no connection slot free (53300); lower POOL_MAX or raise the server's max_connections`],
]);

/**
 * The start-up line for a failure to use the database, naming the cause and the fix; undefined when
 * the cause is not the database's. Behind an open breaker it names what opened the breaker (a bare
 * "circuit_open" says nothing). Prints host:port and the database's name, never user or password.
 */
export function describeStartupFailure(err: unknown, target: DatabaseTarget | undefined): string | undefined {
  if (!target) return undefined;
  const cause = rootCause(err);
  const code = codeOfError(cause);
  const at = `${target.host}:${target.port}`;
  const hint = STARTUP_HINTS.get(code);
  if (hint) return hint(at, target, code);
  const message = String((cause as DriverError | undefined)?.message);
  if (/timeout expired|connection timeout/i.test(message)) return timedOut(at, target, code);
  if (isConnectionError(cause) || (cause instanceof AppError && cause.code === 'circuit_open')) {
    return `cannot reach the database at ${at} (${describeError(cause)}); check DATABASE_URL`;
  }
  return undefined;
}

/** A log-safe description of a driver error: its code and class, never its message (which can echo the host or user). */
export function describeError(err: unknown): string {
  const e = err as { code?: unknown; name?: unknown } | undefined;
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const name = typeof e?.name === 'string' ? e.name : 'Error';
  return code ? `${name} ${code}` : name;
}
