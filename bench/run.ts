/**
 * `npm run bench` (a few minutes) and `npm run bench -- --quick` (under a minute): poolgate
 * against its baselines, measured in one run on one machine, written to
 * bench/results/<date>.md and .json (`<date>-quick.*` for the quick pass).
 *
 * Order: scratch database → pgbench -S → connect-per-request → ceiling and Node gateway, one
 * concurrency at a time, alternating → the edge topology → the guide's scenarios → targets →
 * (a target missed) CPU profiles of the ceiling and the gateway on the same step → report.
 * The database is PostgreSQL named by BENCH_DATABASE_URL or DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/test); the bench only ever works in a database of its own,
 * poolgate_bench_<pid>, created there and dropped at the end.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { PoolStats, Queryable } from '../src/db/types.js';
import { migrate } from '../src/db/migrate.js';
import { MIGRATIONS } from '../src/fitness/migrations.js';
import { DEMO_USER_ID, seed } from '../src/fitness/seed.js';
import {
  burst,
  ConnectionSampler,
  connectionHeadroom,
  findPgbench,
  initPgbench,
  latencyOf,
  now,
  processTreeStats,
  runLoad,
  runPgbench,
  type BurstRequest,
  type BurstResult,
  type ConnectionPeaks,
  type LiveFigures,
  type LoadResult,
  type PgbenchResult,
  type PgbenchTarget,
  type ProcessTreeStats,
} from './load.js';
import { compareProfiles, summariseProfile, type ProfileSummary } from './profile.js';
import {
  evaluateTargets,
  renderJson,
  renderMarkdown,
  targetsTable,
  TARGET_INFO,
  type BenchResults,
  type ProfileReport,
  type ScenarioResult,
  type StepResult,
  type StepTarget,
} from './report.js';
import { launchTarget, type TargetConfig, type TargetKind, type TargetProcess } from './targets.js';

const USAGE = `usage: npm run bench [-- --quick] [-- --profile | --no-profile]

  --quick       a reduced pass (fewer concurrencies, shorter steps), under a minute
  --profile     always take the CPU profiles (default: only when a target is missed, full pass only)
  --no-profile  never profile

Database: BENCH_DATABASE_URL, else DATABASE_URL, else postgres://postgres@127.0.0.1:5432/test.
The bench creates its own database there (poolgate_bench_<pid>) and drops it at the end.
Writes bench/results/<YYYY-MM-DD>.md and .json (quick: <YYYY-MM-DD>-quick.*).`;

// ---------------------------------------------------------------------------------------------
// Plan

interface Plan {
  /** Alternating rounds per ceiling/gateway pair (the measured duration is split between them). */
  pairRounds: number;
  /** Unmeasured load on each route of a freshly started server before its first step (JIT, pools). */
  primeMs: number;
  warmupMs: number;
  durationMs: number;
  conc: Record<StepTarget, number[]>;
  /** Batches per guide scenario. */
  scenarioBatches: number;
}

const PLANS: Record<'full' | 'quick', Plan> = {
  full: {
    pairRounds: 4,
    primeMs: 1_500,
    warmupMs: 1_000,
    durationMs: 4_000,
    conc: {
      pgbench: [1, 8, 64],
      connect: [1, 8, 64],
      ceiling: [1, 8, 64, 256, 1000],
      'gateway-read': [1, 8, 64, 256, 1000],
      'gateway-write': [1, 8, 64, 256, 1000],
      'gateway-summary': [1, 8, 32],
      'edge-read-http': [1, 8, 64],
      // One Postgres connection per request in flight (a WebSocket each): kept under max_connections.
      'edge-read-ws': [1, 8, 32],
      'edge-write': [1, 8, 64],
    },
    scenarioBatches: 5,
  },
  quick: {
    pairRounds: 2,
    primeMs: 400,
    warmupMs: 400,
    durationMs: 1_200,
    conc: {
      pgbench: [64],
      connect: [64],
      ceiling: [1, 64, 1000],
      'gateway-read': [1, 64, 1000],
      'gateway-write': [64],
      'gateway-summary': [8],
      'edge-read-http': [64],
      'edge-read-ws': [8],
      'edge-write': [64],
    },
    scenarioBatches: 3,
  },
};

const POOL_MAX = 20;
const SAMPLER_INTERVAL_MS = 50;
const PROFILE_CONNECTIONS = 64;
const WRITER_USER_ID = '00000000-0000-4000-8000-0000000000b1';
const DEFAULT_URL = 'postgres://postgres@127.0.0.1:5432/test';

/** application_name per target, so pg_stat_activity tells the targets apart. */
const APP = {
  connect: 'poolgate-bench-connect',
  ceiling: 'poolgate-bench-ceiling',
  gateway: 'poolgate-bench-gateway',
  edgeNode: 'poolgate-bench-edge-node',
  sampler: 'poolgate-bench-sampler',
  admin: 'poolgate-bench-admin',
};
/**
 * The Neon driver names its connections itself, over HTTP (the local proxy's pool, max 10) and
 * over WebSocket (one connection per request) alike; the two edge read steps run one after the
 * other, WebSocket first, so the proxy's idle HTTP pool is not yet open during the WebSocket step.
 */
const NEON_APP = 'pkg:npm/%40neondatabase/serverless';

const MATCH: Record<StepTarget, (app: string) => boolean> = {
  connect: (a) => a === APP.connect,
  ceiling: (a) => a === APP.ceiling,
  pgbench: (a) => a === 'pgbench',
  'gateway-read': (a) => a === APP.gateway,
  'gateway-write': (a) => a === APP.gateway,
  'gateway-summary': (a) => a === APP.gateway,
  'edge-read-http': (a) => a.startsWith(NEON_APP),
  'edge-read-ws': (a) => a.startsWith(NEON_APP),
  'edge-write': (a) => a === APP.edgeNode,
};

/** Targets that open one Postgres connection per request in flight. */
const PER_CLIENT_CONNECTIONS = new Set<StepTarget>(['connect', 'pgbench', 'edge-read-ws']);

const WRITE_BODY = JSON.stringify({
  userId: WRITER_USER_ID,
  kind: 'run',
  startedAt: '2026-01-08T07:00:00Z',
  durationSeconds: 1800,
  sets: [{ exercise: 'squat', reps: 5, weightKg: 100 }],
});

interface RouteSpec {
  path: string;
  method?: 'GET' | 'POST';
  body?: string;
}
const READ: RouteSpec = { path: `/api/users/${DEMO_USER_ID}` };
const SUMMARY: RouteSpec = { path: `/api/users/${DEMO_USER_ID}/summary` };
const WRITE: RouteSpec = { path: '/api/workouts', method: 'POST', body: WRITE_BODY };

// ---------------------------------------------------------------------------------------------
// Progress

const fmtClock = (ms: number) => {
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
};

/** One live line on a terminal (rewritten in place); one line per finished step elsewhere. */
class Progress {
  readonly #tty = Boolean(process.stdout.isTTY);
  readonly #started = now();
  #total: number;
  #done = 0;
  #label = '';
  readonly #perStepMs: number;

  constructor(total: number, perStepMs: number) {
    this.#total = total;
    this.#perStepMs = perStepMs;
  }

  addSteps(n: number): void {
    this.#total += n;
  }

  #prefix(): string {
    const n = String(this.#total).length;
    return `[${String(this.#done + 1).padStart(n)}/${this.#total}] ${this.#label.padEnd(42)}`;
  }

  #clock(): string {
    const left = Math.max(0, this.#total - this.#done) * this.#perStepMs;
    return `elapsed ${fmtClock(now() - this.#started)}, ~${fmtClock(left)} left`;
  }

  begin(label: string): void {
    this.#label = label;
    this.live('starting');
  }

  live(text: string): void {
    if (this.#tty) process.stdout.write(`\r\x1b[K${this.#prefix()} ${text}  (${this.#clock()})`);
  }

  end(text: string, label?: string): void {
    if (label !== undefined) this.#label = label;
    const line = `${this.#prefix()} ${text}`;
    this.#done++;
    process.stdout.write(this.#tty ? `\r\x1b[K${line}\n` : `${line}\n`);
  }

  /** A live line outside the numbered steps (terminal only). */
  aside(text: string): void {
    if (this.#tty) process.stdout.write(`\r\x1b[K  ${text}  (${this.#clock()})`);
  }

  note(text: string): void {
    process.stdout.write(this.#tty ? `\r\x1b[K${text}\n` : `${text}\n`);
  }

  get elapsedMs(): number {
    return now() - this.#started;
  }
}

const liveText = (l: LiveFigures) =>
  l.phase === 'warmup'
    ? `warm-up ${(l.elapsedMs / 1000).toFixed(1)} s`
    : `${(l.elapsedMs / 1000).toFixed(1)} s  ${Math.round((l.ok / Math.max(1, l.elapsedMs)) * 1000).toLocaleString('en-US')} req/s  errors ${l.errors}`;

const stepLine = (s: StepResult) =>
  s.skipped
    ? `skipped: ${s.skipped}`
    : `${Math.round(s.rps ?? 0)
        .toLocaleString('en-US')
        .padStart(
          7,
        )} req/s  p50 ${(s.latencyMs?.p50 ?? NaN).toFixed(2)} ms  p99 ${(s.latencyMs?.p99 ?? NaN).toFixed(2)} ms  errors ${s.errors}  pg ${s.pgPeak}/${s.pgPeakAll}`;

// ---------------------------------------------------------------------------------------------
// Database

/** host:port/db of a URL, never its user or password. */
function describeUrl(u: URL): string {
  return `${u.hostname}:${u.port || '5432'}${u.pathname}`;
}

class BenchError extends Error {
  override name = 'BenchError';
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

interface BenchDatabase {
  /** Scratch databases of earlier runs that died without dropping theirs, dropped now. */
  staleDropped: string[];
  url: string;
  name: string;
  server: string;
  postgres: string;
  maxConnections: number;
  pgbench: PgbenchTarget;
  drop(): Promise<void>;
}

/**
 * A run killed outright (SIGKILL; or `tsx` escalating a Ctrl-C it thinks went unanswered) cannot
 * drop its database. On a loopback server the name's pid is a process of this machine: a scratch
 * database whose process is gone is dropped here. Anything else is left alone.
 */
async function dropStaleDatabases(admin: pg.Client, source: URL): Promise<string[]> {
  if (!/^(127\.|localhost$|\[?::1\]?$)/.test(source.hostname)) return [];
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EPERM';
    }
  };
  const { rows } = await admin.query<{ name: string }>(`SELECT datname AS name FROM pg_database WHERE datname ~ '^poolgate_bench_[0-9]+$'`);
  const stale = rows
    .map((r) => r.name)
    .filter((n) => Number(n.slice('poolgate_bench_'.length)) !== process.pid && !alive(Number(n.slice('poolgate_bench_'.length))));
  for (const n of stale) await admin.query(`DROP DATABASE IF EXISTS ${n} WITH (FORCE)`).catch(() => {});
  return stale;
}

async function createBenchDatabase(sourceUrl: string): Promise<BenchDatabase> {
  const source = new URL(sourceUrl);
  const admin = new pg.Client({ connectionString: sourceUrl, application_name: APP.admin, connectionTimeoutMillis: 5_000 });
  admin.on('error', () => {});
  try {
    await admin.connect();
  } catch (err) {
    throw new BenchError(`cannot reach PostgreSQL at ${describeUrl(source)} (${(err as Error).message}); set BENCH_DATABASE_URL`);
  }
  let version: string;
  let serverVersion: string;
  let maxConnections: number;
  try {
    version = (await admin.query<{ v: string }>('SELECT version() AS v')).rows[0]!.v;
    if (/PGlite|emscripten|wasm32/i.test(version)) {
      throw new BenchError(
        'refusing to run against the embedded PGlite. It is one single-threaded WebAssembly backend behind a socket: every ' +
          'connection shares it and statements queue, so pool sizes, connection counts and concurrency figures would mean ' +
          'nothing. Point BENCH_DATABASE_URL at a real PostgreSQL (e.g. postgres://postgres@127.0.0.1:5432/test).',
        2,
      );
    }
    serverVersion = (await admin.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v.split(' ')[0]!;
    maxConnections = Number((await admin.query<{ m: string }>("SELECT current_setting('max_connections') AS m")).rows[0]!.m);
  } catch (err) {
    await admin.end().catch(() => {});
    throw err;
  }
  const name = `poolgate_bench_${process.pid}`;
  const dropped = await dropStaleDatabases(admin, source);
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${name}`);
  } catch (err) {
    await admin.end().catch(() => {});
    throw new BenchError(
      `cannot create the scratch database ${name} on ${describeUrl(source)} (${(err as Error).message}); the role needs CREATEDB`,
    );
  }
  const url = new URL(sourceUrl);
  url.pathname = `/${name}`;
  let dropping: Promise<void> | undefined;
  return {
    staleDropped: dropped,
    url: url.toString(),
    name,
    server: `${source.hostname}:${source.port || '5432'}`,
    postgres: serverVersion,
    maxConnections,
    pgbench: {
      host: source.hostname.replace(/^\[(.*)\]$/, '$1'),
      port: Number(source.port || 5432),
      user: decodeURIComponent(source.username) || os.userInfo().username,
      password: source.password ? decodeURIComponent(source.password) : undefined,
      database: name,
    },
    drop: () =>
      (dropping ??= (async () => {
        try {
          await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        } finally {
          await admin.end().catch(() => {});
        }
      })()),
  };
}

/** Schema, demo user (reads) and a second user for the writes, so /summary stays the same size. */
async function prepareSchema(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, application_name: APP.admin });
  await client.connect();
  const q: Queryable = {
    async query<R>(text: string, params?: readonly unknown[]) {
      const r = await client.query(text, params as unknown[]);
      return { rows: r.rows as R[], rowCount: r.rowCount ?? null };
    },
  };
  const runTx = async <T>(fn: (tx: Queryable) => Promise<T>): Promise<T> => {
    await client.query('BEGIN');
    try {
      const result = await fn(q);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    }
  };
  try {
    await migrate(runTx, MIGRATIONS);
    await runTx(seed);
    await client.query(`INSERT INTO users (id, email, name) VALUES ($1, 'bench-writer@poolgate.dev', 'Bench Writer')`, [WRITER_USER_ID]);
    await client.query(`INSERT INTO user_preferences (user_id, units) VALUES ($1, 'metric')`, [WRITER_USER_ID]);
  } finally {
    await client.end();
  }
}

// ---------------------------------------------------------------------------------------------
// The run

interface Context {
  plan: Plan;
  progress: Progress;
  sampler: ConnectionSampler;
  samplerClient: pg.Client;
  db: BenchDatabase;
  steps: StepResult[];
  notes: string[];
}

/** Skips a step that would open more Postgres connections than the server has free. */
async function headroomSkip(ctx: Context, target: StepTarget, c: number): Promise<string | undefined> {
  if (!PER_CLIENT_CONNECTIONS.has(target)) return undefined;
  const { headroom, max, used } = await connectionHeadroom(ctx.samplerClient);
  // A WebSocket request's connection outlives it briefly (ended after the response): allow for two per slot.
  const needed = target === 'edge-read-ws' ? 2 * c : c;
  if (needed <= headroom) return undefined;
  return `needs up to ${needed} Postgres connections; max_connections ${max}, ${used} in use`;
}

/** One measured stretch of load on one target, with its CPU and Postgres connection readings. */
interface Segment {
  load: LoadResult;
  /** The server process tree's CPU and system calls over the measured window. */
  server?: ProcessTreeStats;
  peaks: ConnectionPeaks;
}

async function segment(
  ctx: Context,
  proc: TargetProcess,
  route: RouteSpec,
  c: number,
  warmupMs: number,
  durationMs: number,
  liveLabel = '',
  hooks: { start?(): void; end?(): void } = {},
): Promise<Segment> {
  let atStart: ProcessTreeStats | undefined;
  let atEnd: ProcessTreeStats | undefined;
  let load: LoadResult;
  let peaks: ConnectionPeaks;
  ctx.sampler.start();
  try {
    load = await runLoad(
      {
        url: `${proc.urls.url}${route.path}`,
        method: route.method ?? 'GET',
        ...(route.body === undefined ? {} : { body: route.body }),
        connections: c,
        warmupMs,
        durationMs,
        onWindowStart: () => {
          atStart = processTreeStats(proc.pid);
          hooks.start?.();
        },
        onWindowEnd: () => {
          atEnd = processTreeStats(proc.pid);
          hooks.end?.();
        },
      },
      (live) => ctx.progress.live(`${liveLabel}${liveText(live)}`),
    );
  } finally {
    peaks = await ctx.sampler.stop();
  }
  const server =
    atStart && atEnd
      ? {
          cpuMs: atEnd.cpuMs - atStart.cpuMs,
          readCalls: atEnd.readCalls - atStart.readCalls,
          writeCalls: atEnd.writeCalls - atStart.writeCalls,
        }
      : undefined;
  return { load, peaks, ...(server ? { server } : {}) };
}

/** One step's figures from one or more segments (alternating rounds are merged per target). */
function mergeSegments(target: StepTarget, c: number, segs: Segment[]): StepResult {
  const ok = segs.reduce((n, s) => n + s.load.ok, 0);
  const windowMs = segs.reduce((n, s) => n + s.load.windowMs, 0);
  const all = new Float64Array(segs.reduce((n, s) => n + s.load.samples.length, 0));
  let at = 0;
  for (const s of segs) {
    all.set(s.load.samples, at);
    at += s.load.samples.length;
  }
  const statusCounts: Record<string, number> = {};
  const byApp: Record<string, number> = {};
  for (const s of segs) {
    for (const [k, v] of Object.entries(s.load.statusCounts)) statusCounts[k] = (statusCounts[k] ?? 0) + v;
    for (const [k, v] of Object.entries(s.peaks.byApp)) byApp[k] = Math.max(byApp[k] ?? 0, v);
  }
  const firstError = segs.find((s) => s.load.firstError)?.load.firstError;
  const measured = segs.every((s) => s.server !== undefined);
  const cpu = measured ? segs.reduce((n, s) => n + s.server!.cpuMs, 0) : undefined;
  const calls = measured ? segs.reduce((n, s) => n + s.server!.readCalls + s.server!.writeCalls, 0) : undefined;
  const non2xx = segs.reduce((n, s) => n + s.load.non2xx, 0);
  const socketErrors = segs.reduce((n, s) => n + s.load.socketErrors, 0);
  return {
    target,
    connections: c,
    windowMs,
    ok,
    rps: (ok / Math.max(1, windowMs)) * 1000,
    latencyMs: latencyOf(all),
    non2xx,
    socketErrors,
    errors: non2xx + socketErrors,
    statusCounts,
    ...(firstError ? { firstError } : {}),
    pgPeak: Math.max(...segs.map((s) => s.peaks.peakOf(MATCH[target]))),
    pgPeakAll: Math.max(...segs.map((s) => s.peaks.total)),
    pgByApp: byApp,
    ...(cpu !== undefined && ok > 0 ? { serverCpuUsPerRequest: (cpu * 1000) / ok, serverCpuCores: cpu / Math.max(1, windowMs) } : {}),
    ...(calls !== undefined && ok > 0 ? { serverSyscallsPerRequest: calls / ok } : {}),
  };
}

/**
 * How a step at `c` connections is measured. Hundreds of connections need longer: opening them
 * and filling the pool's queue takes a while, and with p50 near a second a short window would
 * measure the ramp, not the steady state.
 */
function shapeFor(plan: Plan, c: number): { rounds: number; warmupMs: number; segmentMs: number } {
  if (c < 256) return { rounds: plan.pairRounds, warmupMs: plan.warmupMs, segmentMs: plan.durationMs / plan.pairRounds };
  const rounds = Math.max(1, Math.floor(plan.pairRounds / 2));
  return { rounds, warmupMs: Math.max(plan.warmupMs, 1_500), segmentMs: Math.max(plan.durationMs / rounds, 2_000) };
}

const failed = (target: StepTarget, c: number, err: unknown): StepResult => ({
  target,
  connections: c,
  skipped: `failed: ${(err as Error).message.split('\n')[0]}`,
});

async function httpStep(
  ctx: Context,
  target: StepTarget,
  c: number,
  proc: TargetProcess | undefined,
  route: RouteSpec,
): Promise<StepResult> {
  ctx.progress.begin(`${TARGET_INFO[target].label}  c=${c}`);
  let result: StepResult;
  try {
    if (!proc) throw new Error('its server did not start');
    const skip = await headroomSkip(ctx, target, c);
    const { warmupMs, segmentMs, rounds } = shapeFor(ctx.plan, c);
    result = skip
      ? { target, connections: c, skipped: skip }
      : mergeSegments(target, c, [await segment(ctx, proc, route, c, warmupMs, segmentMs * rounds)]);
  } catch (err) {
    result = failed(target, c, err);
  }
  ctx.progress.end(stepLine(result));
  ctx.steps.push(result);
  return result;
}

/**
 * Two targets on the same route and concurrency, in alternating rounds (A B A B…), each round
 * with its own short warm-up; each target's rounds are merged. Drift on a shared machine (other
 * work starting or stopping) then lands on both sides of the ratio instead of on one.
 */
async function pairedStep(
  ctx: Context,
  c: number,
  route: RouteSpec,
  a: { target: StepTarget; proc: TargetProcess | undefined },
  b: { target: StepTarget; proc: TargetProcess | undefined },
): Promise<void> {
  const { plan, progress } = ctx;
  const { rounds, warmupMs, segmentMs } = shapeFor(plan, c);
  const label = (t: StepTarget) => `${TARGET_INFO[t].label}  c=${c}`;
  progress.begin(`${TARGET_INFO[a.target].label} ⇄ ${TARGET_INFO[b.target].label}  c=${c}`);
  const segs: Record<'a' | 'b', Segment[]> = { a: [], b: [] };
  const errors: Partial<Record<'a' | 'b', unknown>> = {};
  for (let round = 1; round <= rounds; round++) {
    for (const side of ['a', 'b'] as const) {
      const { target, proc } = side === 'a' ? a : b;
      if (errors[side]) continue;
      try {
        if (!proc) throw new Error('its server did not start');
        // Every round reopens its connections, so each keeps the full warm-up; the measured time is split.
        segs[side].push(await segment(ctx, proc, route, c, warmupMs, segmentMs, `round ${round}/${rounds} ${target}: `));
      } catch (err) {
        errors[side] = err;
      }
    }
  }
  for (const side of ['a', 'b'] as const) {
    const target = side === 'a' ? a.target : b.target;
    const result = errors[side] ? failed(target, c, errors[side]) : mergeSegments(target, c, segs[side]);
    progress.end(stepLine(result), label(target));
    ctx.steps.push(result);
  }
}

/** Unmeasured load on one route of a fresh server, so no step measures a cold JIT or an empty pool. */
async function prime(ctx: Context, proc: TargetProcess | undefined, route: RouteSpec, connections: number): Promise<void> {
  if (!proc) return;
  ctx.progress.aside(
    `priming ${proc.kind} ${route.method ?? 'GET'} ${route.path.replace(DEMO_USER_ID, ':id')} (c=${connections}, not measured)`,
  );
  await runLoad({
    url: `${proc.urls.url}${route.path}`,
    method: route.method ?? 'GET',
    ...(route.body === undefined ? {} : { body: route.body }),
    connections,
    warmupMs: 0,
    durationMs: ctx.plan.primeMs,
  }).catch(() => undefined);
}

async function pgbenchStep(ctx: Context, bin: string, c: number): Promise<void> {
  const { plan, progress, sampler } = ctx;
  progress.begin(`${TARGET_INFO.pgbench.label}  c=${c}`);
  let result: StepResult;
  try {
    const skip = await headroomSkip(ctx, 'pgbench', c);
    if (skip) {
      result = { target: 'pgbench', connections: c, skipped: skip };
    } else {
      const started = now();
      const ticker = setInterval(() => progress.live(`pgbench running ${((now() - started) / 1000).toFixed(1)} s`), 250);
      sampler.start();
      let r: PgbenchResult;
      let peaks: ConnectionPeaks;
      try {
        r = await runPgbench(bin, ctx.db.pgbench, { clients: c, warmupMs: plan.warmupMs, durationMs: plan.durationMs });
      } finally {
        clearInterval(ticker);
        peaks = await sampler.stop();
      }
      {
        result = {
          target: 'pgbench',
          connections: c,
          windowMs: r.windowMs,
          ok: r.ok,
          rps: r.rps,
          latencyMs: r.latencyMs,
          non2xx: r.non2xx,
          socketErrors: r.socketErrors,
          errors: r.errors,
          ...(r.firstError ? { firstError: r.firstError } : {}),
          reportedTps: r.reportedTps,
          pgPeak: peaks.peakOf(MATCH.pgbench),
          pgPeakAll: peaks.total,
          pgByApp: peaks.byApp,
        };
      }
    }
  } catch (err) {
    result = { target: 'pgbench', connections: c, skipped: `failed: ${(err as Error).message.split('\n')[0]}` };
  }
  progress.end(stepLine(result));
  ctx.steps.push(result);
}

interface ScenarioDef {
  id: string;
  name: string;
  guideClaim: string;
  guideMs?: number;
  how: string;
}

const SCENARIOS: ScenarioDef[] = [
  {
    id: 'neon-50',
    name: '1. 50 concurrent Neon queries',
    guideClaim: '~200 ms',
    guideMs: 200,
    how: '50 × GET /api/users/:id at the edge (workerd → Neon HTTP → local proxy)',
  },
  {
    id: 'pool-20',
    name: '2. 20 PG pool queries',
    guideClaim: '~150 ms',
    guideMs: 150,
    how: '20 × GET /api/users/:id on the Node gateway (pg Pool)',
  },
  {
    id: 'mixed-50',
    name: '3. 50 mixed queries',
    guideClaim: '~300 ms',
    guideMs: 300,
    how: '25 edge reads (Neon HTTP) + 25 edge writes forwarded to the Node pool (POST /api/workouts)',
  },
  {
    id: 'stress-100',
    name: '4. 100 concurrent queries, no exhaustion',
    guideClaim: 'no exhaustion',
    how: `100 × GET /api/users/:id on the Node gateway, pool max ${POOL_MAX}`,
  },
];

async function scenario(
  ctx: Context,
  id: string,
  requests: BurstRequest[] | undefined,
  match: (app: string) => boolean,
  poolMax?: number,
  unavailable?: string,
): Promise<ScenarioResult> {
  const def = SCENARIOS.find((s) => s.id === id)!;
  const base = { id: def.id, name: def.name, guideClaim: def.guideClaim, ...(def.guideMs ? { guideMs: def.guideMs } : {}), how: def.how };
  ctx.progress.begin(`guide scenario ${def.name}`);
  if (!requests) {
    const r: ScenarioResult = {
      ...base,
      runs: [],
      firstMs: NaN,
      medianMs: NaN,
      errors: 0,
      pgPeak: 0,
      skipped: unavailable ?? 'its server did not start',
    };
    ctx.progress.end(`skipped: ${r.skipped}`);
    return r;
  }
  const runs: BurstResult[] = [];
  let peaks: ConnectionPeaks;
  ctx.sampler.start();
  try {
    for (let i = 0; i < ctx.plan.scenarioBatches; i++) {
      runs.push(await burst(requests));
      ctx.progress.live(`batch ${i + 1}/${ctx.plan.scenarioBatches}: ${runs[i]!.wallMs.toFixed(1)} ms`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    peaks = await ctx.sampler.stop();
  }
  const sorted = runs.map((r) => r.wallMs).sort((a, b) => a - b);
  const result: ScenarioResult = {
    ...base,
    runs,
    firstMs: runs[0]!.wallMs,
    medianMs: sorted[Math.floor((sorted.length - 1) / 2)]!,
    errors: runs.reduce((n, r) => n + r.errors, 0),
    pgPeak: peaks.peakOf(match),
    ...(poolMax ? { pgPoolMax: poolMax } : {}),
  };
  ctx.progress.end(
    `first ${result.firstMs.toFixed(1)} ms, median ${result.medianMs.toFixed(1)} ms (guide: ${def.guideClaim}), errors ${result.errors}, pg ${result.pgPeak}`,
  );
  return result;
}

async function launch(ctx: Context, kind: TargetKind, cfg: Omit<TargetConfig, 'databaseUrl'>): Promise<TargetProcess | undefined> {
  ctx.progress.note(`  starting ${kind}…`);
  try {
    return await launchTarget(kind, { ...cfg, databaseUrl: ctx.db.url });
  } catch (err) {
    const msg = (err as Error).message;
    ctx.progress.note(`  ${kind} failed to start: ${msg}`);
    ctx.notes.push(`The ${kind} target failed to start: ${msg.split('\n')[0]}`);
    return undefined;
  }
}

async function poolStats(url: string | undefined): Promise<PoolStats | undefined> {
  if (!url) return undefined;
  try {
    const res = await fetch(`${url}/stats`, { signal: AbortSignal.timeout(5_000) });
    return ((await res.json()) as { pool?: PoolStats }).pool;
  } catch {
    return undefined;
  }
}

/**
 * The 64-connection read step again, ceiling and gateway up side by side in alternating rounds
 * as in the measured step, with the V8 profiler on over each measured window only.
 */
async function profilePhase(ctx: Context): Promise<ProfileReport | { skipped: string }> {
  const dir = mkdtempSync(join(os.tmpdir(), 'poolgate-bench-profile-'));
  const kinds = ['ceiling', 'gateway'] as const;
  const procs: Partial<Record<(typeof kinds)[number], TargetProcess>> = {};
  const files: Record<(typeof kinds)[number], string[]> = { ceiling: [], gateway: [] };
  const segs: Record<(typeof kinds)[number], Segment[]> = { ceiling: [], gateway: [] };
  const c = PROFILE_CONNECTIONS;
  try {
    for (const kind of kinds) {
      const proc = await launch(ctx, kind, { applicationName: kind === 'ceiling' ? APP.ceiling : APP.gateway, poolMax: POOL_MAX });
      if (!proc) return { skipped: `the ${kind} did not start for profiling` };
      procs[kind] = proc;
      await prime(ctx, proc, READ, 32);
    }
    const { rounds, warmupMs, segmentMs } = shapeFor(ctx.plan, c);
    ctx.progress.begin(`profile ceiling ⇄ gateway  c=${c}`);
    for (let round = 1; round <= rounds; round++) {
      for (const kind of kinds) {
        const proc = procs[kind]!;
        const file = join(dir, `${kind}-c${c}-round${round}.cpuprofile`);
        let started: Promise<void> = Promise.resolve();
        let stopped: Promise<void> = Promise.resolve();
        segs[kind].push(
          await segment(ctx, proc, READ, c, warmupMs, segmentMs, `round ${round}/${rounds} ${kind} (profiled): `, {
            start: () => {
              started = proc.profileStart();
            },
            end: () => {
              stopped = started.then(() => proc.profileStop(file));
            },
          }),
        );
        await stopped;
        files[kind].push(file);
      }
    }
  } catch (err) {
    ctx.progress.end(`failed: ${(err as Error).message}`);
    return { skipped: `profiling failed: ${(err as Error).message}` };
  } finally {
    await Promise.allSettled(Object.values(procs).map((p) => p.stop()));
  }
  const summaries = {} as Record<(typeof kinds)[number], { summary: ProfileSummary; rps: number }>;
  for (const kind of kinds) {
    const merged = mergeSegments(kind === 'ceiling' ? 'ceiling' : 'gateway-read', c, segs[kind]);
    summaries[kind] = { summary: summariseProfile(files[kind], merged.ok ?? 0), rps: merged.rps ?? 0 };
    ctx.progress.end(
      `${Math.round(merged.rps ?? 0).toLocaleString('en-US')} req/s under the profiler; ${summaries[kind].summary.busyUsPerRequest.toFixed(0)} µs main-thread CPU/request`,
      `profile ${kind}  c=${c}`,
    );
  }
  const allFiles = [...files.ceiling, ...files.gateway];
  const base = summaries.ceiling;
  const g = summaries.gateway;
  const delta = compareProfiles(base.summary, g.summary);
  const busy = (s: ProfileSummary) => s.busyMs / Math.max(1, s.busyMs + s.idleMs);
  const findings: string[] = [];
  // Magnitudes from the unprofiled paired step (the profiler slows deep call stacks more than shallow ones).
  const plainC = ctx.steps.find((s) => s.target === 'ceiling' && s.connections === PROFILE_CONNECTIONS && !s.skipped);
  const plainG = ctx.steps.find((s) => s.target === 'gateway-read' && s.connections === PROFILE_CONNECTIONS && !s.skipped);
  if (plainC?.serverCpuUsPerRequest && plainG?.serverCpuUsPerRequest && plainC.rps && plainG.rps) {
    const cpuRatio = plainG.serverCpuUsPerRequest / plainC.serverCpuUsPerRequest;
    findings.push(
      `Without the profiler (the measured step at ${PROFILE_CONNECTIONS} connections) the gateway process used ${plainG.serverCpuUsPerRequest.toFixed(0)} µs of CPU per request against the ceiling’s ` +
        `${plainC.serverCpuUsPerRequest.toFixed(0)} µs (×${cpuRatio.toFixed(2)}), the servers using ${((plainG.serverCpuCores ?? 0) * 100).toFixed(0)}% and ${((plainC.serverCpuCores ?? 0) * 100).toFixed(0)}% of a core. ` +
        (Math.abs((plainG.serverCpuCores ?? 0) - (plainC.serverCpuCores ?? 0)) <= 0.15 * Math.max(plainC.serverCpuCores ?? 0, 0.1)
          ? `Both got about the same CPU share of the 2 cores (the load generator and Postgres take the rest), so req/s follows CPU per request: `
          : `The gateway got ${(plainG.serverCpuCores ?? 0) > (plainC.serverCpuCores ?? 0) ? 'more' : 'less'} CPU than the ceiling in that window, which ${(plainG.serverCpuCores ?? 0) > (plainC.serverCpuCores ?? 0) ? 'hid' : 'added to'} part of its extra CPU per request: `) +
        `at equal CPU the ratio predicts ${((1 / cpuRatio) * 100).toFixed(0)}% of the ceiling; measured ${((plainG.rps / plainC.rps) * 100).toFixed(0)}%.`,
    );
  }
  if (plainC?.serverSyscallsPerRequest !== undefined && plainG?.serverSyscallsPerRequest !== undefined) {
    const [gs, cs] = [plainG.serverSyscallsPerRequest, plainC.serverSyscallsPerRequest];
    findings.push(
      Math.abs(gs - cs) <= 0.1 * Math.max(cs, 0.1)
        ? `Both make the same I/O: ${gs.toFixed(2)} (gateway) and ${cs.toFixed(2)} (ceiling) read/write system calls per request, ` +
            'so the extra is computation in the process, not more round trips to Postgres or to the client.'
        : `The gateway makes ${gs.toFixed(2)} read/write system calls per request against the ceiling’s ${cs.toFixed(2)}: part of the extra is more I/O.`,
    );
  }
  const extra = g.summary.busyUsPerRequest - base.summary.busyUsPerRequest;
  findings.push(
    `Under the profiler: ${g.summary.busyUsPerRequest.toFixed(0)} µs vs ${base.summary.busyUsPerRequest.toFixed(0)} µs of main-thread CPU per request (${extra >= 0 ? '+' : ''}${extra.toFixed(0)} µs), ` +
      `main thread busy ${(busy(g.summary) * 100).toFixed(0)}% and ${(busy(base.summary) * 100).toFixed(0)}%; ${((g.rps / Math.max(1, base.rps)) * 100).toFixed(0)}% of the ceiling’s req/s while profiled. ` +
      'The profiler adds its own cost and socket writes cost more when the machine is busier, so read the shares below, not the absolute figures.',
  );
  // Shares of the groups that grew (a group that shrank, e.g. socket writes under less contention, does not offset them).
  const grown = delta.reduce((n, d) => n + Math.max(0, d.extraUs), 0);
  const top = delta.filter((d) => d.extraUs > 0).slice(0, 6);
  if (top.length) {
    findings.push(
      `Where the gateway spends more (share of all that grew, ${grown.toFixed(0)} µs/request): ${top.map((d) => `${d.group} ${((d.extraUs / Math.max(1, grown)) * 100).toFixed(0)}%`).join('; ')}.`,
    );
  }
  const own = g.summary.groups.filter((x) => x.group.startsWith('poolgate ') || x.group === 'zod');
  if (own.length) {
    const sum = own.reduce((n, x) => n + x.usPerRequest, 0);
    const fns = g.summary.ownTop
      .slice(0, 5)
      .map((f) => `${f.fn} (${f.where.replace(/:\d+$/, '')}) ${((f.selfMs * 1000) / Math.max(1, g.summary.requests)).toFixed(1)} µs`);
    const more = (groups: string[]) => delta.filter((d) => groups.includes(d.group)).reduce((n, d) => n + d.extraUs, 0);
    const causes = [
      [['hono', '@hono/node-server'], 'more Hono middleware and adapter work (hono, @hono/node-server)'],
      [['undici (Web Headers/Request/Response)'], 'WHATWG Headers objects for the headers it adds (undici)'],
      [['node:timers'], 'more timers per request (node:timers)'],
      [
        ['node:http', 'native: socket I/O (syscalls)', 'node:streams'],
        'more bytes and header lines to serialise and write (node:http, socket writes)',
      ],
      [['pg', 'pg-protocol', 'pg-pool'], 'more node-postgres work per request (pg, pg-protocol, pg-pool)'],
      [['V8: garbage collector'], 'more garbage (GC)'],
    ] as const;
    const seen = causes.filter(([groups]) => more([...groups]) > 1).map(([groups, text]) => `${text} +${more([...groups]).toFixed(0)} µs`);
    findings.push(
      `poolgate’s own code is ${sum.toFixed(0)} µs/request of self time (${((sum / Math.max(1, grown)) * 100).toFixed(0)}% of what grew); heaviest: ${fns.join(', ')}.` +
        (seen.length ? ` The rest is work it causes elsewhere: ${seen.join('; ')}.` : ''),
    );
  }
  return {
    step: `GET /api/users/:id at ${PROFILE_CONNECTIONS} connections, ceiling and gateway alternating`,
    ceiling: base.summary,
    gateway: g.summary,
    delta,
    files: allFiles,
    findings,
  };
}

/** Roughly how long a pass takes (for the progress line): steps, priming runs, start-ups, scenarios. */
function estimateMs(plan: Plan, pgbench: boolean): number {
  const paired = (c: number) => plan.conc.ceiling.includes(c) && plan.conc['gateway-read'].includes(c);
  let ms = 8 * plan.primeMs + 12_000 + SCENARIOS.length * 1_000;
  if (pgbench) ms += plan.conc.pgbench.length * (Math.round((plan.warmupMs + plan.durationMs) / 1000) * 1000 + 400);
  for (const [target, list] of Object.entries(plan.conc) as [StepTarget, number[]][]) {
    if (target === 'pgbench') continue;
    for (const c of list) {
      const { rounds, warmupMs, segmentMs } = shapeFor(plan, c);
      const isPaired = (target === 'ceiling' || target === 'gateway-read') && paired(c);
      ms += isPaired ? rounds * (warmupMs + segmentMs + 250) : warmupMs + segmentMs * rounds + 300;
    }
  }
  return ms;
}

/** Observations the figures need beside them, drawn from this run's own numbers. */
function addNotes(ctx: Context): void {
  const find = (t: StepTarget, c: number) => ctx.steps.find((s) => s.target === t && s.connections === c && !s.skipped);
  const connect = ctx.steps.find((s) => s.target === 'connect' && !s.skipped && s.latencyMs);
  const pooled = find('gateway-read', connect?.connections ?? 1) ?? find('gateway-read', 1);
  if (connect?.latencyMs && pooled?.latencyMs) {
    ctx.notes.push(
      `Opening a PostgreSQL connection is slow on this machine: connect-per-request p50 is ${connect.latencyMs.p50.toFixed(1)} ms at ${connect.connections} connection(s), ` +
        `against ${pooled.latencyMs.p50.toFixed(2)} ms for a pooled request at ${pooled.connections}. Postgres forks one backend per connection, one at a time, which is also why ` +
        `connect-per-request barely gains from more concurrency.`,
    );
  }
  for (const s of ctx.steps) {
    if (s.target === 'edge-read-ws' && !s.skipped && (s.pgPeak ?? 0) > s.connections) {
      ctx.notes.push(
        `The edge WebSocket read at ${s.connections} connection(s) held up to ${s.pgPeak} Postgres connections: each request’s Neon Pool is ended after its response ` +
          '(waitUntil), so its connection outlives the request briefly, and every request pays a new connection.',
      );
    }
  }
  if (ctx.steps.some((s) => s.target.startsWith('edge-') && !s.skipped)) {
    ctx.notes.push(
      'Edge figures run workerd (miniflare), the local Neon-compatible proxy and the edge topology’s Node gateway on the same 2 cores as the load generator and Postgres; ' +
        'against Neon the proxy hop is a network round trip instead. Read them as the cost of the edge path relative to Node, not as edge latency.',
    );
  }
}

function machine(postgres: string, pgbench: string | undefined): BenchResults['machine'] {
  const cpus = os.cpus();
  return {
    cpus: os.availableParallelism?.() ?? cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown CPU',
    memGb: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    postgres,
    ...(pgbench ? { pgbench } : {}),
  };
}

const localDate = (d = new Date()) =>
  `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;

async function pgbenchVersion(bin: string): Promise<string | undefined> {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve) => execFile(bin, ['--version'], { timeout: 5_000 }, (err, out) => resolve(err ? undefined : out.trim())));
}

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      options: {
        quick: { type: 'boolean' },
        profile: { type: 'boolean' },
        'no-profile': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    console.error(`bench: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (args.help) {
    console.log(USAGE);
    return 0;
  }
  const mode = args.quick ? 'quick' : 'full';
  const plan = PLANS[mode];
  const sourceUrl = process.env.BENCH_DATABASE_URL || process.env.DATABASE_URL || DEFAULT_URL;
  const startedAt = new Date();

  let db: BenchDatabase;
  try {
    db = await createBenchDatabase(sourceUrl);
  } catch (err) {
    console.error(`bench: ${(err as Error).message}`);
    return err instanceof BenchError ? err.exitCode : 1;
  }

  const children = new Set<TargetProcess>();
  let interrupted = false;
  const onSignal = (signal: string) => {
    if (interrupted) return;
    interrupted = true;
    process.stdout.write(`\nbench: ${signal}, stopping servers and dropping ${db.name}…\n`);
    const hardExit = setTimeout(() => process.exit(130), 30_000);
    hardExit.unref();
    void Promise.allSettled([...children].map((c) => c.stop(5_000)))
      .then(() => db.drop())
      .then(
        () => process.stdout.write(`bench: dropped ${db.name}\n`),
        (err: unknown) => process.stdout.write(`bench: could not drop ${db.name} (${(err as Error).message}); drop it by hand\n`),
      )
      .finally(() => process.exit(130));
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));

  const samplerClient = new pg.Client({ connectionString: db.url, application_name: APP.sampler });
  samplerClient.on('error', () => {});
  const pgbenchBin = findPgbench();
  const stepCount = Object.values(plan.conc).reduce((n, list) => n + list.length, 0) - (pgbenchBin ? 0 : plan.conc.pgbench.length);
  // Per-step estimate for the ETA, with the priming runs (8 routes) and start-ups spread over the steps.
  const perStepMs = estimateMs(plan, Boolean(pgbenchBin)) / (stepCount + SCENARIOS.length);
  const progress = new Progress(stepCount + SCENARIOS.length, perStepMs);
  const loadAvgStart = os.loadavg();
  const ctx: Context = {
    plan,
    progress,
    sampler: new ConnectionSampler(samplerClient, db.name, SAMPLER_INTERVAL_MS),
    samplerClient,
    db,
    steps: [],
    notes: [],
  };
  const scenarios: ScenarioResult[] = [];
  let gatewayPool: PoolStats | undefined;
  let edgeNodePool: PoolStats | undefined;
  let profile: BenchResults['profile'];
  const track = async <T extends TargetProcess | undefined>(p: Promise<T>): Promise<T> => {
    const proc = await p;
    if (proc) children.add(proc);
    return proc;
  };
  const stop = async (proc: TargetProcess | undefined) => {
    if (!proc) return;
    await proc.stop();
    children.delete(proc);
  };

  try {
    const secs = Math.round(((stepCount + SCENARIOS.length) * perStepMs) / 1000);
    progress.note(
      `poolgate bench (${mode}): ${stepCount} load steps + ${SCENARIOS.length} guide scenarios, about ${fmtClock(secs * 1000)} min. ` +
        `PostgreSQL ${db.postgres} at ${db.server}, scratch database ${db.name}.`,
    );
    if (!/^(127\.|localhost$|\[?::1\]?$)/.test(new URL(sourceUrl).hostname)) {
      progress.note('  note: the database is not on loopback; its network latency is in every figure.');
      ctx.notes.push('The database was not on loopback: its network latency is in every figure.');
    }
    if (db.staleDropped.length) progress.note(`  dropped scratch databases left by runs that were killed: ${db.staleDropped.join(', ')}`);
    await prepareSchema(db.url);
    await samplerClient.connect();

    // pgbench -S: what the database does alone.
    if (pgbenchBin) {
      progress.note('  pgbench -i -s 1 (scratch database only)…');
      try {
        await initPgbench(pgbenchBin, db.pgbench);
        for (const c of plan.conc.pgbench) await pgbenchStep(ctx, pgbenchBin, c);
      } catch (err) {
        ctx.notes.push(`pgbench could not run: ${(err as Error).message}`);
        for (const c of plan.conc.pgbench)
          ctx.steps.push({ target: 'pgbench', connections: c, skipped: `pgbench failed: ${(err as Error).message}` });
      }
    } else {
      ctx.notes.push('pgbench is not installed (looked on PATH and in /usr/bin): no pgbench baseline.');
      for (const c of plan.conc.pgbench) ctx.steps.push({ target: 'pgbench', connections: c, skipped: 'pgbench not installed' });
    }

    // Connect-per-request, alone: it needs the Postgres connections the pools would otherwise hold.
    {
      const proc = await track(launch(ctx, 'connect', { applicationName: APP.connect, poolMax: POOL_MAX }));
      await prime(ctx, proc, READ, 4);
      for (const c of plan.conc.connect) await httpStep(ctx, 'connect', c, proc, READ);
      await stop(proc);
    }

    // Ceiling and gateway side by side, alternating per concurrency so drift hits both alike.
    {
      const ceiling = await track(launch(ctx, 'ceiling', { applicationName: APP.ceiling, poolMax: POOL_MAX }));
      const gateway = await track(launch(ctx, 'gateway', { applicationName: APP.gateway, poolMax: POOL_MAX }));
      await prime(ctx, ceiling, READ, 32);
      await prime(ctx, gateway, READ, 32);
      const levels = [...new Set([...plan.conc.ceiling, ...plan.conc['gateway-read']])].sort((a, b) => a - b);
      for (const c of levels) {
        const both = plan.conc.ceiling.includes(c) && plan.conc['gateway-read'].includes(c);
        if (both) await pairedStep(ctx, c, READ, { target: 'ceiling', proc: ceiling }, { target: 'gateway-read', proc: gateway });
        else if (plan.conc.ceiling.includes(c)) await httpStep(ctx, 'ceiling', c, ceiling, READ);
        else await httpStep(ctx, 'gateway-read', c, gateway, READ);
      }
      await stop(ceiling);
      await prime(ctx, gateway, WRITE, 32);
      for (const c of plan.conc['gateway-write']) await httpStep(ctx, 'gateway-write', c, gateway, WRITE);
      await prime(ctx, gateway, SUMMARY, 8);
      for (const c of plan.conc['gateway-summary']) await httpStep(ctx, 'gateway-summary', c, gateway, SUMMARY);
      const g = gateway?.urls.url;
      scenarios.push(
        await scenario(
          ctx,
          'pool-20',
          g ? Array.from({ length: 20 }, () => ({ url: `${g}${READ.path}` })) : undefined,
          MATCH['gateway-read'],
          POOL_MAX,
        ),
      );
      scenarios.push(
        await scenario(
          ctx,
          'stress-100',
          g ? Array.from({ length: 100 }, () => ({ url: `${g}${READ.path}` })) : undefined,
          MATCH['gateway-read'],
          POOL_MAX,
        ),
      );
      gatewayPool = await poolStats(g);
      await stop(gateway);
    }

    // The edge topology: workerd + local Neon proxy + its own Node gateway.
    {
      const topo = await track(launch(ctx, 'topology', { applicationName: APP.edgeNode, poolMax: POOL_MAX }));
      await prime(ctx, topo, SUMMARY, 4);
      for (const c of plan.conc['edge-read-ws']) await httpStep(ctx, 'edge-read-ws', c, topo, SUMMARY);
      await prime(ctx, topo, READ, 16);
      for (const c of plan.conc['edge-read-http']) await httpStep(ctx, 'edge-read-http', c, topo, READ);
      await prime(ctx, topo, WRITE, 16);
      for (const c of plan.conc['edge-write']) await httpStep(ctx, 'edge-write', c, topo, WRITE);
      const e = topo?.urls.url;
      scenarios.push(
        await scenario(
          ctx,
          'neon-50',
          e ? Array.from({ length: 50 }, () => ({ url: `${e}${READ.path}` })) : undefined,
          MATCH['edge-read-http'],
        ),
      );
      const mixed = e
        ? Array.from({ length: 50 }, (_, i): BurstRequest =>
            i % 2 === 0 ? { url: `${e}${READ.path}` } : { url: `${e}${WRITE.path}`, method: 'POST', body: WRITE_BODY },
          )
        : undefined;
      scenarios.push(await scenario(ctx, 'mixed-50', mixed, (a) => a.startsWith(NEON_APP) || a === APP.edgeNode));
      // Reported in the guide's order.
      scenarios.sort((a, b) => SCENARIOS.findIndex((s) => s.id === a.id) - SCENARIOS.findIndex((s) => s.id === b.id));
      edgeNodePool = await poolStats(topo?.urls.nodeUrl);
      await stop(topo);
    }

    addNotes(ctx);

    // Targets, and a profile where one is missed.
    const draft = (): BenchResults => ({
      version: 1,
      mode,
      date: localDate(startedAt),
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      durationSec: progress.elapsedMs / 1000,
      machine: { ...machine(db.postgres, undefined), loadAvg: { start: loadAvgStart, end: os.loadavg() } },
      database: { server: db.server, name: db.name, maxConnections: db.maxConnections },
      settings: {
        warmupMs: plan.warmupMs,
        durationMs: plan.durationMs,
        pairRounds: plan.pairRounds,
        samplerIntervalMs: SAMPLER_INTERVAL_MS,
        poolMax: POOL_MAX,
        concurrencies: plan.conc,
      },
      steps: ctx.steps,
      ...(gatewayPool ? { gatewayPool } : {}),
      ...(edgeNodePool ? { edgeNodePool } : {}),
      scenarios,
      targets: [],
      notes: ctx.notes,
    });
    const targets = evaluateTargets(draft(), POOL_MAX);
    const missed = targets.filter((t) => t.status === 'missed' && t.id !== 'reuse');
    const wantProfile = args['no-profile'] ? false : args.profile ? true : mode === 'full' && missed.length > 0;
    if (wantProfile) {
      progress.addSteps(2);
      progress.note(
        `  ${missed.length ? `missed: ${missed.map((t) => t.id).join(', ')}; ` : ''}profiling the ceiling and the gateway at ${PROFILE_CONNECTIONS} connections…`,
      );
      profile = await profilePhase(ctx);
    } else if (missed.length) {
      profile = {
        skipped: args['no-profile']
          ? 'disabled with --no-profile'
          : 'the quick pass does not profile; run the full `npm run bench` (or add --profile)',
      };
    }

    const d = draft();
    const results: BenchResults = {
      ...d,
      machine: { ...d.machine, ...machine(db.postgres, pgbenchBin ? await pgbenchVersion(pgbenchBin) : undefined) },
      targets,
      ...(profile ? { profile } : {}),
    };
    const outDir = fileURLToPath(new URL('./results/', import.meta.url));
    mkdirSync(outDir, { recursive: true });
    const base = join(outDir, mode === 'quick' ? `${results.date}-quick` : results.date);
    writeFileSync(`${base}.md`, renderMarkdown(results));
    writeFileSync(`${base}.json`, renderJson(results));
    progress.note('');
    progress.note(targetsTable(results));
    progress.note('');
    progress.note(`bench: wrote ${base}.md and ${base}.json in ${fmtClock(progress.elapsedMs)} min`);
    return 0;
  } catch (err) {
    progress.note(`bench: failed: ${(err as Error).stack ?? String(err)}`);
    return 1;
  } finally {
    await Promise.allSettled([...children].map((c) => c.stop(5_000)));
    await samplerClient.end().catch(() => {});
    await db.drop().catch((err: unknown) => progress.note(`bench: could not drop ${db.name}: ${(err as Error).message}`));
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
