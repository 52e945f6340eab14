/**
 * The load side of the bench: autocannon (as a library) for HTTP steps, pgbench for the
 * database's own ceiling, concurrent bursts for the guide's scenarios, and a pg_stat_activity
 * sampler that records how many Postgres connections each application held during a step.
 *
 * Every loop here is bounded twice: by its own count or duration, and by a hard deadline after
 * which it gives up and reports what it saw.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';

export const now = (): number => performance.now();
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Latency figures

export interface Latency {
  p50: number;
  p95: number;
  p99: number;
  mean: number;
  max: number;
}

/** Exact percentiles (nearest rank) over every sample; autocannon's histogram rounds to 1 ms. */
export function latencyOf(samples: Float64Array): Latency {
  const n = samples.length;
  if (n === 0) return { p50: NaN, p95: NaN, p99: NaN, mean: NaN, max: NaN };
  const sorted = Float64Array.from(samples).sort();
  const q = (p: number) => sorted[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))]!;
  let sum = 0;
  for (const v of sorted) sum += v;
  return { p50: q(0.5), p95: q(0.95), p99: q(0.99), mean: sum / n, max: sorted[n - 1]! };
}

/** A growable list of doubles without boxing. */
class Samples {
  #buf = new Float64Array(1 << 14);
  #n = 0;
  push(v: number): void {
    if (this.#n === this.#buf.length) {
      const next = new Float64Array(this.#buf.length * 2);
      next.set(this.#buf);
      this.#buf = next;
    }
    this.#buf[this.#n++] = v;
  }
  get length(): number {
    return this.#n;
  }
  view(): Float64Array {
    return this.#buf.subarray(0, this.#n);
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP load (autocannon)

/** The subset of autocannon this file uses (it ships no types). */
interface AutocannonInstance {
  on(event: 'response', fn: (client: object, statusCode: number, resBytes: number, responseTimeMs: number) => void): void;
  on(event: 'reqError', fn: (err: Error) => void): void;
  stop(): void;
}
type Autocannon = (opts: Record<string, unknown>, done: (err: Error | null, result: unknown) => void) => AutocannonInstance;
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

export interface LoadSpec {
  url: string;
  method?: 'GET' | 'POST';
  body?: string;
  headers?: Record<string, string>;
  connections: number;
  /** Responses in the first `warmupMs` are not counted (connections opening, JIT, pool filling). */
  warmupMs: number;
  durationMs: number;
  /** Per-request timeout; a request past it counts as an error. */
  timeoutSec?: number;
  /** Called as the measured window opens and closes (CPU readings, profiler start/stop). */
  onWindowStart?: () => void;
  onWindowEnd?: () => void;
  /** After the window, how long the requests in flight may take to finish before the rest are cut (default 3 s). */
  drainMs?: number;
}

export interface LoadResult {
  connections: number;
  /** Length of the measured window. */
  windowMs: number;
  /** 2xx responses in the window. */
  ok: number;
  rps: number;
  latencyMs: Latency;
  non2xx: number;
  /** Socket errors and timeouts. */
  socketErrors: number;
  errors: number;
  statusCounts: Record<string, number>;
  firstError?: string;
  /** Every 2xx latency of the window (ms), to merge segments of one step. */
  samples: Float64Array;
}

export interface LiveFigures {
  phase: 'warmup' | 'measure';
  elapsedMs: number;
  ok: number;
  errors: number;
}

/** The part of autocannon's per-connection client that ends it after a number of responses. */
interface AutocannonClient {
  reqsMade: number;
  responseMax?: number;
}

/**
 * Runs one load step: `warmupMs` unmeasured, then `durationMs` measured; latencies are taken
 * per response (2xx only) from autocannon's own timer, so p50 keeps its sub-millisecond digits.
 *
 * The step ends by draining, not by cutting: after the window no connection sends another
 * request, and each closes once its response has arrived (autocannon's own responseMax, set on
 * the fly). Cutting them would abort up to `connections` requests mid-flight at every step's end,
 * and a server that cancels the statement of a request whose client left (the gateway does;
 * a bare pg.Pool does not) would start its next step refilling its pool: a cost of the harness,
 * not of serving. What is still in flight after `drainMs` is cut.
 */
export async function runLoad(spec: LoadSpec, onLive?: (live: LiveFigures) => void): Promise<LoadResult> {
  const latencies = new Samples();
  const statusCounts: Record<string, number> = {};
  let ok = 0;
  let non2xx = 0;
  let socketErrors = 0;
  let firstError: string | undefined;
  let measuring = false;
  let closed = false;
  let warmOk = 0;
  let warmErrors = 0;

  const started = now();
  let windowStart = started;
  let windowEnd: number;
  const bodyHeaders = spec.body === undefined ? {} : { 'content-type': 'application/json' };
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const instance = autocannon(
    {
      url: spec.url,
      method: spec.method ?? 'GET',
      ...(spec.body === undefined ? {} : { body: spec.body }),
      headers: { ...bodyHeaders, ...spec.headers },
      connections: spec.connections,
      pipelining: 1,
      // A safety bound only: the step is stopped explicitly below.
      duration: (spec.warmupMs + spec.durationMs) / 1000 + 10,
      sampleInt: 100,
      timeout: spec.timeoutSec ?? 10,
    },
    () => finish(),
  );
  let draining = false;
  instance.on('response', (client, status, _bytes, ms) => {
    if (draining) {
      // Called before the client sends its next request: it closes its connection instead.
      const c = client as AutocannonClient;
      c.responseMax = c.reqsMade;
    }
    if (closed) return;
    const good = status >= 200 && status < 300;
    if (!measuring) {
      if (good) warmOk++;
      else warmErrors++;
      return;
    }
    statusCounts[status] = (statusCounts[status] ?? 0) + 1;
    if (good) {
      ok++;
      latencies.push(ms);
    } else {
      non2xx++;
      firstError ??= `HTTP ${status}`;
    }
  });
  instance.on('reqError', (err) => {
    if (closed) return;
    if (!measuring) {
      warmErrors++;
      return;
    }
    socketErrors++;
    firstError ??= err.message;
  });

  const live = onLive
    ? setInterval(() => {
        const t = now();
        onLive(
          measuring
            ? { phase: 'measure', elapsedMs: t - windowStart, ok, errors: non2xx + socketErrors }
            : { phase: 'warmup', elapsedMs: t - started, ok: warmOk, errors: warmErrors },
        );
      }, 250)
    : undefined;
  try {
    await sleep(spec.warmupMs);
    spec.onWindowStart?.();
    measuring = true;
    windowStart = now();
    await sleep(spec.durationMs);
    windowEnd = now();
    closed = true;
    spec.onWindowEnd?.();
    draining = true;
    // Done once every connection has closed after its last response (noticed on autocannon's 100 ms tick).
    await Promise.race([finished, sleep(spec.drainMs ?? 3_000)]);
    instance.stop();
    // autocannon notices stop on its next sample tick (100 ms); never wait on it for long.
    await Promise.race([finished, sleep(10_000)]);
  } finally {
    if (live) clearInterval(live);
    closed = true;
  }
  const windowMs = windowEnd - windowStart;
  return {
    connections: spec.connections,
    windowMs,
    ok,
    rps: (ok / windowMs) * 1000,
    latencyMs: latencyOf(latencies.view()),
    non2xx,
    socketErrors,
    errors: non2xx + socketErrors,
    statusCounts,
    ...(firstError ? { firstError } : {}),
    samples: latencies.view().slice(),
  };
}

// ---------------------------------------------------------------------------------------------
// Bursts (the guide's scenarios): N requests at once, wall time for the whole batch

export interface BurstRequest {
  url: string;
  method?: 'GET' | 'POST';
  body?: string;
}

export interface BurstResult {
  wallMs: number;
  ok: number;
  errors: number;
  statusCounts: Record<string, number>;
}

/** Sends every request at once and waits for all of them (each bounded by `timeoutMs`). */
export async function burst(requests: readonly BurstRequest[], timeoutMs = 10_000): Promise<BurstResult> {
  const statusCounts: Record<string, number> = {};
  let ok = 0;
  let errors = 0;
  const started = now();
  await Promise.all(
    requests.map(async (r) => {
      try {
        const res = await fetch(r.url, {
          method: r.method ?? 'GET',
          ...(r.body === undefined ? {} : { body: r.body, headers: { 'content-type': 'application/json' } }),
          signal: AbortSignal.timeout(timeoutMs),
        });
        await res.arrayBuffer();
        statusCounts[res.status] = (statusCounts[res.status] ?? 0) + 1;
        if (res.ok) ok++;
        else errors++;
      } catch {
        statusCounts.error = (statusCounts.error ?? 0) + 1;
        errors++;
      }
    }),
  );
  return { wallMs: now() - started, ok, errors, statusCounts };
}

// ---------------------------------------------------------------------------------------------
// Mixed closed-loop load: each client picks its next request (a kind among several, maybe one it
// will abort), so every answer is seen whole: status, the error's `code`, Retry-After, the body.
// autocannon sends one request shape per run and reports statuses only.

export interface MixRequest {
  /** What the request is, for the tallies (e.g. 'fast', 'slow', 'write'). */
  kind: string;
  url: string;
  method?: 'GET' | 'POST' | 'PATCH';
  body?: string;
  headers?: Record<string, string>;
  /** The client gives up after this many ms (AbortController): the request counts as aborted if no full answer came first. */
  abortAfterMs?: number;
}

export interface MixOutcome {
  kind: string;
  /** When the request was sent and when it ended, in ms from the run's start. */
  startMs: number;
  endMs: number;
  /** The client aborted it before its answer was complete. */
  aborted: boolean;
  /** Undefined when no answer came (aborted, socket error, or the bound of `timeoutMs`). */
  status?: number;
  /** The error body's `error.code`, when the answer was not 2xx. */
  code?: string;
  retryAfter?: string;
  /** The server's own time for the answer: the `total` entry of its Server-Timing header, when it sent one. */
  serverMs?: number;
  /** Which server its reads came from (`primary`, `replica-1` …), where the gateway has replicas: its Server-Timing `db` entry. */
  servedBy?: string;
  /** The consistency token the answer carried (`Poolgate-Consistency`: a write's, where the gateway has replicas). */
  consistency?: string;
  /** The parsed body of a 2xx answer to a POST (its id, for the bench's own checks). */
  body?: unknown;
  /** The socket error, for answers that never came. */
  error?: string;
}

export interface MixSpec {
  connections: number;
  durationMs: number;
  /** The next request of client `client` (0 … connections − 1). */
  next(client: number): MixRequest;
  /** Every request's outcome, in the order they end. */
  onOutcome(outcome: MixOutcome, request: MixRequest): void;
  /** Hard bound per request (default 10 s): past it the request ends as an error. */
  timeoutMs?: number;
  /** Stops the clients early (each finishes or aborts its request in flight). */
  signal?: AbortSignal;
  /** At most this many requests in all, over every client (default: as many as the duration allows). */
  requests?: number;
}

/**
 * The `total` of a Server-Timing header (poolgate's conn-stats writes `…, total;dur=1.23, …`): the
 * server's time from taking the request to answering it, without the network or the client's own lag.
 */
export function serverTotalMs(header: string | null): number | undefined {
  const m = header && /(?:^|,)\s*total;(?:[^,]*;)?dur=([\d.]+)/.exec(header);
  return m ? Number(m[1]) : undefined;
}

/**
 * The server a Server-Timing header says the request read from: the last word of its `db` entry's
 * description (`db;dur=0.41;desc="pg-pipeline 1q replica-1"`), where the gateway has replicas.
 */
export function servedByOf(header: string | null): string | undefined {
  return (header && /(?:^|,)\s*db;[^,]*desc="[^"]* (primary|replica-\d+)"/.exec(header)?.[1]) || undefined;
}

/** What a response says beside its status: the server's time, the server read from, the consistency token. */
function answerHeaders(res: Response): Pick<MixOutcome, 'serverMs' | 'servedBy' | 'consistency'> {
  const timing = res.headers.get('server-timing');
  const serverMs = serverTotalMs(timing);
  const servedBy = servedByOf(timing);
  const consistency = res.headers.get('poolgate-consistency') ?? undefined;
  return {
    ...(serverMs === undefined ? {} : { serverMs }),
    ...(servedBy === undefined ? {} : { servedBy }),
    ...(consistency === undefined ? {} : { consistency }),
  };
}

/**
 * One request, its answer read whole; `t0` is the run's start (now()) its times count from.
 * @example const o = await sendRequest({ kind: 'read', url }, now(), 10_000); // o.status, o.servedBy
 */
export async function sendRequest(req: MixRequest, t0: number, timeoutMs: number): Promise<MixOutcome> {
  const startMs = now() - t0;
  const client = new AbortController();
  let aborted = false;
  const abortTimer =
    req.abortAfterMs === undefined
      ? undefined
      : setTimeout(() => {
          aborted = true;
          client.abort();
        }, req.abortAfterMs);
  const signal = AbortSignal.any([client.signal, AbortSignal.timeout(timeoutMs)]);
  const end = (o: Omit<MixOutcome, 'kind' | 'startMs' | 'endMs' | 'aborted'>): MixOutcome => ({
    kind: req.kind,
    startMs,
    endMs: now() - t0,
    aborted,
    ...o,
  });
  try {
    const res = await fetch(req.url, {
      method: req.method ?? 'GET',
      ...(req.body === undefined ? {} : { body: req.body }),
      headers: { ...(req.body === undefined ? {} : { 'content-type': 'application/json' }), ...req.headers },
      signal,
    });
    const text = await res.text();
    // Complete: whatever the abort timer does from here on changes nothing the server saw.
    clearTimeout(abortTimer);
    aborted = false;
    const retryAfter = res.headers.get('retry-after') ?? undefined;
    const timing = answerHeaders(res);
    if (res.ok) return end({ status: res.status, ...timing, ...(req.method === 'POST' ? { body: JSON.parse(text) as unknown } : {}) });
    let code: string | undefined;
    try {
      code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
    } catch {
      code = 'not-json';
    }
    return end({ status: res.status, ...timing, ...(code ? { code } : {}), ...(retryAfter ? { retryAfter } : {}) });
  } catch (err) {
    clearTimeout(abortTimer);
    return end({
      error:
        (err as Error).name === 'AbortError' ? 'aborted' : (((err as Error).cause as Error | undefined)?.message ?? (err as Error).message),
    });
  }
}

/**
 * `connections` clients, each sending its next request as soon as the last one ended, for
 * `durationMs` or until `requests` were sent (requests in flight then finish; none is cut).
 * Returns the run's length in ms.
 */
export async function runMix(spec: MixSpec): Promise<number> {
  const t0 = now();
  const until = t0 + spec.durationMs;
  const timeoutMs = spec.timeoutMs ?? 10_000;
  let left = spec.requests ?? Infinity;
  await Promise.all(
    Array.from({ length: spec.connections }, async (_, client) => {
      while (now() < until && !spec.signal?.aborted && left-- > 0) {
        const req = spec.next(client);
        spec.onOutcome(await sendRequest(req, t0, timeoutMs), req);
      }
    }),
  );
  return now() - t0;
}

// ---------------------------------------------------------------------------------------------
// pg_stat_activity sampler

export interface ConnectionPeaks {
  /** Peak number of connections counted (see ConnectionSampler: the bench database's, or the server's client backends). */
  total: number;
  /** Peak per application_name ('' when a client set none). */
  byApp: Record<string, number>;
  sampleCount: number;
  /** The longest time between two samples' starts: a starved sampler shows here. */
  longestGapMs: number;
  /** Peak, over samples, of the summed counts of applications matching `match`. */
  peakOf(match: (applicationName: string) => boolean): number;
}

/**
 * Counts connections by application_name every `intervalMs` on its own connection, from start()
 * to stop(): the bench database's (the sampler's own excluded), or with `database` undefined every
 * client backend of the server, the sampler's own included (it holds a slot of max_connections
 * too). One query in flight at a time: a slow sample delays the next rather than piling up.
 */
export class ConnectionSampler {
  readonly #client: pg.Client;
  readonly #database: string | undefined;
  readonly #intervalMs: number;
  #samples: Map<string, number>[] = [];
  #sampledAt: number[] = [];
  #running: Promise<void> | undefined;
  #stopping = false;

  constructor(client: pg.Client, database: string | undefined, intervalMs = 50) {
    this.#client = client;
    this.#database = database;
    this.#intervalMs = intervalMs;
  }

  /** One sample now, outside a step (e.g. to check headroom). */
  async count(): Promise<Map<string, number>> {
    const { rows } =
      this.#database === undefined
        ? await this.#client.query<{ app: string; n: number }>(
            `SELECT coalesce(application_name, '') AS app, count(*)::int AS n
             FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1`,
          )
        : await this.#client.query<{ app: string; n: number }>(
            `SELECT coalesce(application_name, '') AS app, count(*)::int AS n
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() GROUP BY 1`,
            [this.#database],
          );
    return new Map(rows.map((r) => [r.app, r.n]));
  }

  start(maxDurationMs = 120_000): void {
    if (this.#running) throw new Error('The sampler is already running; stop() it before starting it again.');
    this.#samples = [];
    this.#sampledAt = [];
    this.#stopping = false;
    const deadline = now() + maxDurationMs;
    this.#running = (async () => {
      while (!this.#stopping && now() < deadline) {
        const t = now();
        this.#sampledAt.push(t);
        try {
          this.#samples.push(await this.count());
        } catch {
          // A missed sample is a gap, not a failure of the step.
        }
        await sleep(Math.max(0, this.#intervalMs - (now() - t)));
      }
    })();
  }

  async stop(): Promise<ConnectionPeaks> {
    this.#stopping = true;
    await this.#running;
    this.#running = undefined;
    const samples = this.#samples;
    let longestGapMs = 0;
    for (let i = 1; i < this.#sampledAt.length; i++) longestGapMs = Math.max(longestGapMs, this.#sampledAt[i]! - this.#sampledAt[i - 1]!);
    const byApp: Record<string, number> = {};
    let total = 0;
    for (const s of samples) {
      let sum = 0;
      for (const [app, n] of s) {
        byApp[app] = Math.max(byApp[app] ?? 0, n);
        sum += n;
      }
      total = Math.max(total, sum);
    }
    return {
      total,
      byApp,
      sampleCount: samples.length,
      longestGapMs,
      peakOf(match) {
        let peak = 0;
        for (const s of samples) {
          let sum = 0;
          for (const [app, n] of s) if (match(app)) sum += n;
          peak = Math.max(peak, sum);
        }
        return peak;
      },
    };
  }
}

/** Connections a new client may still open, keeping `margin` free for everyone else. */
export async function connectionHeadroom(client: pg.Client, margin = 8): Promise<{ headroom: number; max: number; used: number }> {
  const { rows } = await client.query<{ max: number; reserved: number; used: number }>(
    `SELECT current_setting('max_connections')::int AS max,
            current_setting('superuser_reserved_connections')::int AS reserved,
            (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend') AS used`,
  );
  const r = rows[0]!;
  return { headroom: r.max - r.reserved - r.used - margin, max: r.max, used: r.used };
}

// ---------------------------------------------------------------------------------------------
// pgbench -S

export interface PgbenchTarget {
  host: string;
  port: number;
  user: string;
  password: string | undefined;
  database: string;
}

/** pgbench on PATH or at /usr/bin/pgbench, or undefined. */
export function findPgbench(): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), '/usr/bin', '/usr/lib/postgresql/15/bin'];
  for (const dir of dirs) {
    const candidate = join(dir, 'pgbench');
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

function pgbenchArgs(t: PgbenchTarget, extra: string[]): { args: string[]; env: NodeJS.ProcessEnv } {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, PGCONNECT_TIMEOUT: '10' };
  if (t.password !== undefined) env.PGPASSWORD = t.password;
  return { args: ['-h', t.host, '-p', String(t.port), '-U', t.user, ...extra, t.database], env };
}

function runProcess(
  bin: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8_000)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** `pgbench -i -s 1`: the small select-only schema (100 000 accounts), in the bench database only. */
export async function initPgbench(bin: string, t: PgbenchTarget): Promise<void> {
  const { args, env } = pgbenchArgs(t, ['-i', '-s', '1', '-q']);
  const r = await runProcess(bin, args, env, 120_000);
  if (r.code !== 0) throw new Error(`pgbench -i failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
}

export interface PgbenchResult extends LoadResult {
  /** pgbench's own figure over the whole run, warm-up included. */
  reportedTps: number;
}

/**
 * `pgbench -S -M extended` (select-only, the extended protocol that node-postgres uses) with
 * `clients` connections for warm-up + duration (whole seconds), logging every transaction so the
 * warm-up can be cut and exact percentiles taken.
 */
export async function runPgbench(
  bin: string,
  t: PgbenchTarget,
  opts: { clients: number; warmupMs: number; durationMs: number },
): Promise<PgbenchResult> {
  const seconds = Math.max(1, Math.round((opts.warmupMs + opts.durationMs) / 1000));
  const dir = mkdtempSync(join(tmpdir(), 'poolgate-pgbench-'));
  try {
    const threads = Math.min(opts.clients, 2);
    const { args, env } = pgbenchArgs(t, [
      '-n',
      '-S',
      '-M',
      'extended',
      '-c',
      String(opts.clients),
      '-j',
      String(threads),
      '-T',
      String(seconds),
      '-l',
      `--log-prefix=${join(dir, 'tx')}`,
    ]);
    const r = await runProcess(bin, args, env, seconds * 1000 + 60_000);
    const reportedTps = Number(/tps = ([\d.]+)/.exec(r.stdout)?.[1] ?? NaN);
    const failed = Number(/number of failed transactions: (\d+)/.exec(r.stdout)?.[1] ?? 0);
    if (r.code !== 0 && Number.isNaN(reportedTps)) {
      throw new Error(`pgbench failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-2).join(' | ')}`);
    }
    // Log lines: client_id transaction_no latency_us script_no epoch_s epoch_us (end of transaction).
    const ends: number[] = [];
    const lat: number[] = [];
    for (const f of readdirSync(dir)) {
      for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) {
        const p = line.split(' ');
        if (p.length < 6) continue;
        ends.push(Number(p[4]) * 1000 + Number(p[5]) / 1000);
        lat.push(Number(p[2]) / 1000);
      }
    }
    let first = Infinity;
    let last = -Infinity;
    for (let i = 0; i < ends.length; i++) {
      first = Math.min(first, ends[i]! - lat[i]!);
      last = Math.max(last, ends[i]!);
    }
    const windowStart = first + opts.warmupMs;
    const inWindow = new Samples();
    for (let i = 0; i < ends.length; i++) if (ends[i]! >= windowStart) inWindow.push(lat[i]!);
    const windowMs = Math.max(1, last - windowStart);
    return {
      connections: opts.clients,
      windowMs,
      ok: inWindow.length,
      rps: (inWindow.length / windowMs) * 1000,
      latencyMs: latencyOf(inWindow.view()),
      non2xx: failed,
      socketErrors: r.code === 0 ? 0 : 1,
      errors: failed + (r.code === 0 ? 0 : 1),
      statusCounts: {},
      samples: inWindow.view().slice(),
      reportedTps,
      ...(r.code === 0 ? {} : { firstError: r.stderr.trim().split('\n').slice(-1)[0] ?? `exit ${r.code}` }),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Server CPU and system calls (Linux /proc): a process and all its descendants (workerd under the topology)

const TICK_MS = 10; // CLK_TCK is 100 on Linux

export interface ProcessTreeStats {
  /** User + system CPU, the tree's ended processes' included (those its processes reaped). */
  cpuMs: number;
  /** read/recv-like and write/send-like system calls (/proc/<pid>/io syscr, syscw). */
  readCalls: number;
  writeCalls: number;
}

/** Totals for `pid` and its descendants, or undefined where /proc is missing. */
export function processTreeStats(pid: number): ProcessTreeStats | undefined {
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return undefined;
  }
  const parent = new Map<number, number>();
  const cpu = new Map<number, number>();
  for (const e of entries) {
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parent.set(Number(e), Number(f[1]));
      // utime + stime, and cutime + cstime: the children it has reaped (a postmaster's backends and
      // parallel workers end while a step runs; without them their CPU would leave the total).
      cpu.set(Number(e), (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * TICK_MS);
    } catch {
      // The process ended while we read.
    }
  }
  if (!cpu.has(pid)) return undefined;
  const total: ProcessTreeStats = { cpuMs: 0, readCalls: 0, writeCalls: 0 };
  for (const [p, ms] of cpu) {
    let q: number | undefined = p;
    for (let hops = 0; q !== undefined && q > 1 && hops < 32; hops++) {
      if (q === pid) {
        total.cpuMs += ms;
        try {
          const io = readFileSync(`/proc/${p}/io`, 'utf8');
          total.readCalls += Number(/syscr: (\d+)/.exec(io)?.[1] ?? 0);
          total.writeCalls += Number(/syscw: (\d+)/.exec(io)?.[1] ?? 0);
        } catch {
          // Not readable (another user) or gone: CPU alone still counts.
        }
        break;
      }
      q = parent.get(q);
    }
  }
  return total;
}
