/**
 * Per-request connection stats. Gives the request its request id and its `Db` view (so every
 * acquire and query is attributed to it), then records one sample per request against the
 * route pattern and answers with a `Server-Timing` header of that request's own figures.
 */
import type { Span, TextMapGetter } from '@opentelemetry/api';
import type { Context, MiddlewareHandler } from 'hono';
import { CONSISTENCY_HEADER, formatToken, laterLsn, parseToken, tokenCookie, tokenFromCookie } from '../db/consistency.js';
import type { CacheOutcome } from '../cache/read-cache.js';
import type { ClientKind, Database, Db, QueryObserver } from '../db/types.js';
import { now } from '../stats/clock.js';
import { endRequestSpan, startRequestSpan } from '../stats/otel.js';
import type { StatsRegistry } from '../stats/registry.js';
import type { RequestLog } from '../log/request-log.js';

export interface RequestMetrics extends QueryObserver {
  readonly startedAt: number;
  dbMs: number;
  acquireMs: number;
  queries: number;
  client: ClientKind | 'none';
  /** Extra Server-Timing entries (e.g. the forward hop at the edge). */
  timings: { name: string; durMs: number; desc?: string }[];
  /** The forwarded-to Node function's own Server-Timing entries, renamed `node-*`. */
  upstreamTiming?: string;
  deadline?: number;
  /**
   * Aborts when the client goes away or the drain cuts the request; database work is cancelled
   * then. Setting a signal links it: its abort aborts this one.
   */
  signal?: AbortSignal;
  /** Aborts the request's work (the client left: no reason; the drain's cut: its AppError). Once. */
  abort(reason?: unknown): void;
  /** What the matched route declared (set by the route table). */
  intent?: 'read' | 'transactional';
  retries: number;
  /** The response is a stored idempotent replay. */
  replayed: boolean;
  /** Server-Timing and x-request-id went out with the handler's response (see responseHeaders). */
  headersWritten?: boolean;
  /** Where there are replicas: the server the request's reads went to. */
  server?: string;
  /** The primary's WAL position after the request's writes: sent back as its consistency token. */
  position?: string;
  /** Reads the client's token as sent (header, else cookie), when a read first needs it: most requests never do. */
  tokenSent?: () => string | undefined;
  /** Its reads must see at least this position, besides its token's (a cache fill: the generations it will claim). */
  requirePosition(lsn: string): void;
  /** What the read cache did for it, on a cached route. */
  cache?: CacheOutcome;
  /** Set by the error mapping: the answer's error code, and a 5xx's cause (for the log, never the caller). */
  failure?: { code: string; cause?: string };
}

export interface ConnStatsVariables {
  requestId: string;
  db: Db;
  metrics: RequestMetrics;
  /** Set by the route table: the pattern that matched, for per-route stats. */
  routePattern: string;
}

export interface ConnStatsOptions {
  registry: StatsRegistry;
  database: Database;
  /** Every request's deadline; database work is cut short (and cancelled on the server) to meet it. */
  requestTimeoutMs?: number;
  /** Reads a request header without building a Headers object, where the runtime can (Node). */
  readHeader?: (c: Context, name: string) => string | undefined;
  /**
   * Calls `gone` when the client goes away, where the runtime can tell cheaply (Node: the
   * response's 'close'); default: the Web Request's own signal.
   */
  onClientGone?: (c: Context, gone: () => void) => void;
  /** Transactional responses also set the consistency token as a cookie (CONSISTENCY_COOKIE=on). */
  consistencyCookie?: boolean;
  /** Each request's log line (every one at debug; failed or slow ones, bounded, at info). */
  requestLog?: RequestLog;
}

const REQUEST_ID = /^[\w.:-]{1,128}$/;

/** The consistency token's header and (CONSISTENCY_COOKIE=on) cookie for a request's position: written once, for both paths below. */
function tokenHeaders(position: string, cookie: boolean | undefined): [string, string][] {
  const headers: [string, string][] = [[CONSISTENCY_HEADER, formatToken({ lsn: position })]];
  if (cookie) headers.push(['set-cookie', tokenCookie({ lsn: position })]);
  return headers;
}

/** The consistency token on a response built before this middleware saw it (a replayed or forwarded answer keeps its own). */
function setToken(headers: Headers, position: string, cookie: boolean | undefined): void {
  if (headers.has(CONSISTENCY_HEADER)) return;
  for (const [name, value] of tokenHeaders(position, cookie)) headers.append(name, value);
}

/**
 * One request's figures; a class so its methods live on the prototype (this runs per request).
 * Its signal is made only when something reads it, and one abort() serves every source (the
 * client leaving, the drain's cut) — no composite signal per request.
 */
class Metrics implements RequestMetrics {
  readonly startedAt = now();
  readonly deadline: number | undefined;
  #controller: AbortController | undefined;
  #aborted = false;
  #reason: unknown;
  intent?: 'read' | 'transactional';
  dbMs = 0;
  acquireMs = 0;
  queries = 0;
  retries = 0;
  replayed = false;
  client: ClientKind | 'none' = 'none';
  timings: RequestMetrics['timings'] = [];
  upstreamTiming?: string;
  headersWritten?: boolean;
  server?: string;
  position?: string;
  tokenSent?: () => string | undefined;
  cache?: CacheOutcome;
  span?: Span;
  failure?: { code: string; cause?: string };
  #consistency: { lsn: string } | undefined | null = null;

  constructor(requestTimeoutMs?: number) {
    this.deadline = requestTimeoutMs === undefined ? undefined : this.startedAt + requestTimeoutMs;
  }
  /** The position the client's token asks for; a malformed token fails the read that needs it (400). */
  get consistency(): string | undefined {
    if (this.#consistency === null) this.#consistency = parseToken(this.tokenSent?.());
    return this.#consistency?.lsn;
  }
  requirePosition(lsn: string): void {
    this.#consistency = { lsn: laterLsn(this.consistency, lsn) ?? lsn };
  }
  committed(lsn: string): void {
    this.position = laterLsn(this.position, lsn);
  }
  readFrom(server: string): void {
    this.server = server;
  }
  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#aborted) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }
  set signal(source: AbortSignal | undefined) {
    if (!source) return;
    if (source.aborted) this.abort(source.reason);
    else source.addEventListener('abort', () => this.abort(source.reason), { once: true });
  }
  abort(reason?: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }
  acquired(waitMs: number): void {
    this.acquireMs += waitMs;
  }
  queried(durationMs: number, statements = 1): void {
    this.dbMs += durationMs;
    this.queries += statements;
  }
  served(kind: ClientKind): void {
    this.client = kind;
  }
  retried(): void {
    this.retries++;
  }
}

export const newMetrics = (requestTimeoutMs?: number): RequestMetrics => new Metrics(requestTimeoutMs);

/** The request id of `c`, whether or not connStats ran (error paths use it). */
export const requestIdOf = (c: Context): string => (c.get('requestId' as never) as string | undefined) ?? 'unknown';

const ms = (x: number) => x.toFixed(2);

function serverTiming(metrics: RequestMetrics, totalMs: number): string {
  const server = metrics.server ? ` ${metrics.server}` : '';
  return [
    ...metrics.timings.map((t) => `${t.name};dur=${ms(t.durMs)}${t.desc ? `;desc="${t.desc}"` : ''}`),
    `acquire;dur=${ms(metrics.acquireMs)}`,
    `db;dur=${ms(metrics.dbMs)};desc="${metrics.client} ${metrics.queries}q${server}"`,
    `total;dur=${ms(totalMs)}`,
    ...(metrics.upstreamTiming ? [metrics.upstreamTiming] : []),
  ].join(', ');
}

/**
 * Server-Timing and x-request-id for the response a handler is about to build, as a plain
 * object. The fast path: on @hono/node-server a response whose headers are a plain object is
 * written straight to the socket, while reading `res.headers` (or `c.header()`, which Hono keeps
 * in a Headers object) builds WHATWG Headers — measurable on every request.
 */
export function responseHeaders(c: Context): Record<string, string> {
  const metrics = c.get('metrics' as never) as RequestMetrics | undefined;
  if (!metrics) return {};
  metrics.headersWritten = true;
  const headers: Record<string, string> = {
    'server-timing': serverTiming(metrics, now() - metrics.startedAt),
    'x-request-id': requestIdOf(c),
  };
  const position = metrics.position;
  if (position !== undefined) {
    for (const [name, value] of tokenHeaders(position, c.get('consistencyCookie' as never) as boolean | undefined)) headers[name] = value;
  }
  return headers;
}

export const connStats = ({
  registry,
  database,
  requestTimeoutMs,
  readHeader,
  onClientGone,
  consistencyCookie,
  requestLog,
}: ConnStatsOptions): MiddlewareHandler<{ Variables: ConnStatsVariables }> => {
  // The caller's trace context (traceparent), read only by a registered propagator.
  const traceHeaders: TextMapGetter<Context<{ Variables: ConnStatsVariables }>> = {
    keys: () => [],
    get: (c, name) => (readHeader ? readHeader(c, name) : c.req.header(name)),
  };
  return async function connStats(c, next) {
    if (c.get('metrics')) return next(); // installed twice: the outer one records
    const header = (name: string) => (readHeader ? readHeader(c, name) : c.req.header(name));
    const incoming = header('x-request-id');
    const requestId = incoming && REQUEST_ID.test(incoming) ? incoming : crypto.randomUUID();
    const metrics = new Metrics(requestTimeoutMs);
    metrics.tokenSent = () => header(CONSISTENCY_HEADER) ?? tokenFromCookie(header('cookie'));
    if (consistencyCookie) c.set('consistencyCookie' as never, true as never);
    if (onClientGone) onClientGone(c, () => metrics.abort());
    else metrics.signal = c.req.raw.signal;
    c.set('requestId', requestId);
    c.set('metrics', metrics);
    const span = (metrics.span = startRequestSpan(c.req.method, c, traceHeaders, c.req));
    const db = database.forRequest(metrics);
    c.set('db', db);
    try {
      await next();
    } finally {
      const ending = db.end?.()?.catch(() => {});
      if (ending) {
        try {
          c.executionCtx.waitUntil(ending); // workerd: finish after the response, inside this request
        } catch {
          // No execution context (Node, Deno): the promise runs on by itself.
        }
      }
      const totalMs = now() - metrics.startedAt;
      const res = c.res;
      try {
        registry.record({
          method: c.req.method,
          route: c.get('routePattern') ?? '(unmatched)',
          status: res.status,
          totalMs,
          dbMs: metrics.dbMs,
          acquireMs: metrics.acquireMs,
          queries: metrics.queries,
          client: metrics.client,
          retries: metrics.retries,
          replayed: metrics.replayed,
          server: metrics.server,
          cache: metrics.cache,
        });
        if (requestLog?.active)
          requestLog.record({
            requestId,
            method: c.req.method,
            route: c.get('routePattern') ?? '(unmatched)',
            status: res.status,
            durationMs: totalMs,
            dbMs: metrics.dbMs,
            acquireMs: metrics.acquireMs,
            client: metrics.client,
            queries: metrics.queries,
            retries: metrics.retries,
            code: metrics.failure?.code,
            cause: metrics.failure?.cause,
            cache: metrics.cache,
          });
        if (!metrics.headersWritten) {
          // Errors, ops endpoints, forwarded answers: the response exists already.
          res.headers.set('server-timing', serverTiming(metrics, totalMs));
          res.headers.set('x-request-id', requestId);
          if (metrics.position !== undefined) setToken(res.headers, metrics.position, consistencyCookie);
        }
      } finally {
        endRequestSpan(span, c.req.method, c.get('routePattern'), res.status); // ended whatever the bookkeeping did
      }
    }
  };
};
