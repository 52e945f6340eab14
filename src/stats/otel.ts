/**
 * OpenTelemetry, through `@opentelemetry/api` only: a no-op unless the application registers an SDK
 * (a tracer provider, a meter provider, a propagator). A SERVER span per request (HTTP semantic
 * conventions), a CLIENT span per database call under it (database semantic conventions), the
 * forward's own CLIENT span at the edge with the W3C trace context injected into it, and the
 * database client metrics (`db.client.operation.duration`, `db.client.connection.*`).
 *
 * The cost without an SDK: a few global reads per request, nothing allocated (not even the api's no-op span).
 * Database spans are made only under a recording request span, so a request span sampled out (or
 * the no-op one) costs its statements one property read; metrics are recorded only while the
 * global meter provider is not the api's no-op one (checked per call: one global lookup, so an SDK
 * registered after poolgate started is still seen).
 */
import {
  createNoopMeter,
  INVALID_SPAN_CONTEXT,
  ProxyTracerProvider,
  metrics,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Histogram,
  type Meter,
  type MeterProvider,
  type BatchObservableResult,
  type Span,
  type SpanOptions,
  type TextMapGetter,
  type TextMapSetter,
  type Tracer,
  type TracerProvider,
} from '@opentelemetry/api';
import { codeOfError } from '../errors.js';

const SCOPE = 'poolgate';
let cachedTracer: { provider: TracerProvider; tracer: Tracer } | undefined;

/** The one span of every request while no tracer provider is registered: not even the api's no-op span per request. */
const NO_SPAN = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

/** False while no tracer provider is registered (the api's proxy has no delegate): one global read, nothing allocated. */
function tracing(): boolean {
  const provider = trace.getTracerProvider();
  return !(provider instanceof ProxyTracerProvider) || provider.getDelegateTracer(SCOPE) !== undefined;
}

/**
 * poolgate's tracer from the provider registered now. Without an SDK that is the api's proxy,
 * whose tracer follows a provider registered later and allocates nothing while there is none;
 * looked up per use (one global read) since `trace.disable()` replaces the proxy itself.
 */
function tracer(): Tracer {
  const provider = trace.getTracerProvider();
  if (cachedTracer?.provider !== provider) cachedTracer = { provider, tracer: provider.getTracer(SCOPE) };
  return cachedTracer.tracer;
}
const SERVER: SpanOptions = { kind: SpanKind.SERVER };
const CLIENT: SpanOptions = { kind: SpanKind.CLIENT };

// ---- HTTP server: one span per request ----------------------------------------------------------

/**
 * Starts a request's SERVER span, continuing the caller's trace when a propagator is registered
 * and the request carries its context (`traceparent`): the edge's forward, or any traced client.
 * Its name is the method until the route is known (endRequestSpan names it `GET /api/users/:id`).
 */
export function startRequestSpan<C>(method: string, carrier: C, getter: TextMapGetter<C>, request: { readonly url: string }): Span {
  if (!tracing()) return NO_SPAN;
  const parent = propagation.extract(ROOT_CONTEXT, carrier, getter);
  const span = tracer().startSpan(method, SERVER, parent);
  if (span.isRecording()) {
    const u = new URL(request.url); // read only when recording: on Node the request's URL is built lazily
    span.setAttributes({ 'http.request.method': method, 'url.path': u.pathname, 'url.scheme': u.protocol.slice(0, -1) });
  }
  return span;
}

/** Ends a request's span: its route pattern (and name), its status; a 5xx is an error (a 4xx is the client's). */
export function endRequestSpan(span: Span, method: string, route: string | undefined, status: number): void {
  if (span.isRecording()) {
    if (route !== undefined) {
      span.setAttribute('http.route', route);
      span.updateName(`${method} ${route}`);
    }
    span.setAttribute('http.response.status_code', status);
    if (status >= 500) {
      span.setAttribute('error.type', String(status));
      span.setStatus({ code: SpanStatusCode.ERROR });
    }
  }
  span.end();
}

// ---- HTTP client: the edge's forward --------------------------------------------------------------

const HEADERS_SETTER: TextMapSetter<Headers> = { set: (headers, key, value) => headers.set(key, value) };

/**
 * The forward's CLIENT span under the request's, its context written into `headers` (`traceparent`,
 * with the W3C propagator registered) so the Node function continues the same trace. Undefined
 * when the request is not traced: nothing is injected then.
 */
export function startForwardSpan(parent: Span | undefined, method: string, url: string, headers: Headers): Span | undefined {
  if (!parent?.isRecording()) return undefined;
  const span = tracer().startSpan(method, CLIENT, trace.setSpan(ROOT_CONTEXT, parent));
  span.setAttributes({ 'http.request.method': method, 'url.full': url });
  propagation.inject(trace.setSpan(ROOT_CONTEXT, span), headers, HEADERS_SETTER);
  return span;
}

export function endForwardSpan(span: Span | undefined, status: number | undefined, err?: unknown): void {
  if (!span) return;
  if (status !== undefined) span.setAttribute('http.response.status_code', status);
  if (status === undefined || status >= 500) {
    span.setAttribute('error.type', status === undefined ? errorName(err) : String(status));
    span.setStatus({ code: SpanStatusCode.ERROR });
  }
  span.end();
}

// ---- Database calls --------------------------------------------------------------------------------

/** What a database call needs of its request: the request's span (conn-stats sets it), and whether it is the process's own work. */
export interface Traced {
  readonly span?: Span;
  readonly internal?: boolean;
}

/** One statement (or one batch round trip) being timed: its span, if traced, and its operation for the metrics. */
export interface DbCall {
  /** `durationMs` as the caller measured it; `err` when it failed. */
  end(durationMs: number, err?: unknown): void;
}

/**
 * A database call of `observer`'s request, or undefined when nothing would record it (no
 * recording request span, no meter provider): the path every statement takes, so it allocates
 * nothing then. `what` is the statement's text, or a batch's statements.
 */
export function startDbCall(observer: Traced, what: string | readonly { text: string }[], pool: string): DbCall | undefined {
  if (observer.internal) return undefined;
  const parent = observer.span;
  const traced = parent !== undefined && parent.isRecording();
  const instruments = currentInstruments();
  if (!traced && !instruments) return undefined;
  return new Call(traced ? parent : undefined, instruments, what, pool);
}

const SYSTEM = 'postgresql';

class Call implements DbCall {
  readonly #span: Span | undefined;
  readonly #instruments: Instruments | undefined;
  readonly #operation: string;
  readonly #pool: string;

  constructor(parent: Span | undefined, instruments: Instruments | undefined, what: string | readonly { text: string }[], pool: string) {
    this.#instruments = instruments;
    this.#pool = pool;
    const batch = typeof what === 'string' ? undefined : what;
    this.#operation = batch ? batchOperation(batch) : operationOf(what as string);
    if (parent) {
      const span = (this.#span = tracer().startSpan(this.#operation, CLIENT, trace.setSpan(ROOT_CONTEXT, parent)));
      span.setAttributes({
        'db.system.name': SYSTEM,
        'db.operation.name': this.#operation,
        'db.query.text': batch ? batch.map((s) => sanitize(s.text)).join('; ') : sanitize(what as string),
        'db.client.connection.pool.name': pool,
      });
      if (batch) span.setAttribute('db.operation.batch.size', batch.length);
    }
  }

  end(durationMs: number, err?: unknown): void {
    const code = err === undefined ? undefined : sqlState(err);
    const span = this.#span;
    if (span) {
      if (err !== undefined) {
        if (code) span.setAttribute('db.response.status_code', code);
        span.setAttribute('error.type', code ?? errorName(err));
        span.setStatus({ code: SpanStatusCode.ERROR });
      }
      span.end();
    }
    this.#instruments?.operationDuration.record(durationMs / 1000, {
      'db.system.name': SYSTEM,
      'db.operation.name': this.#operation,
      'db.client.connection.pool.name': this.#pool,
      ...(err === undefined ? {} : { 'error.type': code ?? errorName(err), ...(code ? { 'db.response.status_code': code } : {}) }),
    });
  }
}

/** The statement's first keyword, as the server's parser reads it (comments skipped): `SELECT`, `INSERT`, `WITH` … */
export function operationOf(text: string): string {
  return /^(?:\s+|--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)*([A-Za-z]+)/.exec(text)?.[1]?.toUpperCase() ?? 'UNKNOWN';
}

/** `BATCH SELECT` when every statement is one operation, else `BATCH` (the semantic conventions' rule). */
function batchOperation(statements: readonly { text: string }[]): string {
  const first = statements[0] === undefined ? undefined : operationOf(statements[0].text);
  return first !== undefined && statements.every((s) => operationOf(s.text) === first) ? `BATCH ${first}` : 'BATCH';
}

/**
 * The statement's text without literal values: poolgate's statements are parameterised (values
 * travel in params, which are never recorded), but a text may still spell a literal; string
 * literals (also dollar-quoted) and free-standing numbers become `?`. Bounded in length.
 */
export function sanitize(text: string): string {
  const out = text
    .replace(/\$(\w*)\$[\s\S]*?\$\1\$/g, '?')
    .replace(/[EeBbXxUu]?&?'(?:[^']|'')*'/g, '?')
    .replace(/(?<![\w$."])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b/g, '?');
  return out.length > 2048 ? out.slice(0, 2048) : out;
}

/** The SQLSTATE of a driver error, or of what an AppError wraps (a cancelled statement: 57014). */
export function sqlState(err: unknown): string | undefined {
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

function errorName(err: unknown): string {
  return codeOfError(err) || (err instanceof Error ? err.name : '_OTHER');
}

// ---- Metrics ---------------------------------------------------------------------------------------

interface Instruments {
  operationDuration: Histogram;
  waitTime: Histogram;
  useTime: Histogram;
}

/** The pools whose figures the observable instruments report (a Database registers its own while open). */
export interface PoolFiguresSource {
  readonly name: string;
  figures(): { total: number; idle: number; waiting: number; max: number } | undefined;
}

/** Held weakly: a database dropped without close (tests make many) leaves nothing behind here. */
const pools = new Set<WeakRef<PoolFiguresSource>>();

/** Reports `source`'s connection counts while registered and alive (hold `source`); returns the unregister call (a database's close). */
export function observePool(source: PoolFiguresSource): () => void {
  const ref = new WeakRef(source);
  pools.add(ref);
  return () => pools.delete(ref);
}

let current: { provider: MeterProvider; instruments: Instruments | undefined } | undefined;

/** The instruments of the meter provider registered now; undefined while it is the api's no-op one. */
function currentInstruments(): Instruments | undefined {
  const provider = metrics.getMeterProvider();
  if (current?.provider !== provider) {
    const meter = provider.getMeter(SCOPE);
    current = { provider, instruments: meter === createNoopMeter() ? undefined : createInstruments(meter) };
  }
  return current.instruments;
}

/** The duration buckets the semantic conventions advise for database client durations, in seconds. */
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10];

function createInstruments(meter: Meter): Instruments {
  const seconds = (name: string, description: string) =>
    meter.createHistogram(name, { unit: 's', description, advice: { explicitBucketBoundaries: DURATION_BUCKETS } });
  const count = meter.createObservableUpDownCounter('db.client.connection.count', {
    unit: '{connection}',
    description: 'Connections of the pool, by state (idle, used).',
  });
  const pending = meter.createObservableUpDownCounter('db.client.connection.pending_requests', {
    unit: '{request}',
    description: 'Requests waiting for a connection (admission and the pool).',
  });
  const max = meter.createObservableUpDownCounter('db.client.connection.max', {
    unit: '{connection}',
    description: 'The most connections the pool may hold now (its share of the connection budget).',
  });
  meter.addBatchObservableCallback(
    (result) => {
      for (const ref of pools) {
        const source = ref.deref();
        if (source) observeFigures(result, source);
        else pools.delete(ref);
      }
    },
    [count, pending, max],
  );
  function observeFigures(result: BatchObservableResult, source: PoolFiguresSource): void {
    const f = source.figures();
    if (!f) return;
    const pool = { 'db.client.connection.pool.name': source.name };
    result.observe(count, f.idle, { ...pool, 'db.client.connection.state': 'idle' });
    result.observe(count, f.total - f.idle, { ...pool, 'db.client.connection.state': 'used' });
    result.observe(pending, f.waiting, pool);
    result.observe(max, f.max, pool);
  }
  return {
    operationDuration: seconds('db.client.operation.duration', 'Duration of database client operations.'),
    waitTime: seconds('db.client.connection.wait_time', 'The time it took to obtain a connection from the pool (admission included).'),
    useTime: seconds('db.client.connection.use_time', 'The time between borrowing a connection and returning it to the pool.'),
  };
}

/** A connection was obtained after `waitMs` (the core's acquire wait: admission and the pool). */
export function recordWait(pool: string, waitMs: number): void {
  currentInstruments()?.waitTime.record(waitMs / 1000, { 'db.client.connection.pool.name': pool });
}

/** A connection went back to its pool after being held `useMs`. */
export function recordUse(pool: string, useMs: number): void {
  currentInstruments()?.useTime.record(useMs / 1000, { 'db.client.connection.pool.name': pool });
}
