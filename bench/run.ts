/**
 * `npm run bench` (a few minutes) and `npm run bench -- --quick` (under a minute): poolgate
 * against its baselines, measured in one run on one machine, written to
 * bench/results/<date>.md and .json (`<date>-quick.*` for the quick pass).
 *
 * Order: scratch database (+ a private SCRAM + TLS instance, started meanwhile) → pgbench -S →
 * connect-per-request and the Node gateway on the private instance, alternating → the bare
 * ceilings (plain, prepared, pipelined) and the Node gateway on the shared server, one
 * concurrency at a time, in rotating rounds → the edge topology → the guide's scenarios → (the
 * WAN-latency bench's hook) → targets → (a target missed) CPU profiles of the prepared ceiling and
 * the gateway on the same step → report.
 *
 * The shared database is PostgreSQL named by BENCH_DATABASE_URL or DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/test); the bench only ever works in a database of its own,
 * poolgate_bench_<pid>, created there and dropped at the end. Connect-per-request measures what
 * opening a connection costs, so it runs on an instance of the bench's own that authenticates
 * like a real deployment (bench/private-postgres.ts), stopped and deleted at the end; when that
 * instance cannot start, it runs on the shared server and the report says so and names its auth.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { PoolStats } from '../src/db/types.js';
import { DEMO_USER_ID } from '../src/fitness/seed.js';
import { BenchError, createBenchDatabase, prepareSchema, sourceDatabaseUrl, WRITER_USER_ID, type BenchDatabase } from './database.js';
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
  type ProcessTreeStats,
} from './load.js';
import { BenchPostgresError, removeStaleInstances, startBenchPostgres, type BenchPostgres } from './private-postgres.js';
import { compareProfiles, summariseProfile, type ProfileSummary } from './profile.js';
import {
  evaluateTargets,
  localDate,
  machine,
  renderJson,
  renderMarkdown,
  targetsTable,
  TARGET_INFO,
  type BenchResults,
  type PhaseSection,
  type ProfileReport,
  type ScenarioResult,
  type ServerInfo,
  type ServerKey,
  type StepResult,
  type StepTarget,
} from './report.js';
import { renderWanMarkdown, runWanBench, writeWanResults } from './wan.js';
import { launchTarget, type TargetConfig, type TargetKind, type TargetProcess } from './targets.js';

const USAGE = `usage: npm run bench [-- --quick] [-- --profile | --no-profile]

  --quick       a reduced pass (fewer concurrencies, shorter steps), under a minute
  --profile     always take the CPU profiles (default: only when a target is missed, full pass only)
  --no-profile  never profile

Database: BENCH_DATABASE_URL, else DATABASE_URL, else postgres://postgres@127.0.0.1:5432/test.
The bench creates its own database there (poolgate_bench_<pid>) and drops it at the end.
Connect-per-request runs on a private PostgreSQL (initdb -A scram-sha-256, TLS with a self-signed
certificate) that the bench starts from /usr/lib/postgresql/15/bin and deletes at the end.
Writes bench/results/<YYYY-MM-DD>.md and .json (quick: <YYYY-MM-DD>-quick.*).`;

// ---------------------------------------------------------------------------------------------
// Plan

interface Plan {
  /** Alternating rounds per step of targets measured side by side (the measured duration is split between them). */
  pairRounds: number;
  /** The same for connect-per-request and the gateway beside it, and the measured time of each of their rounds. */
  connectRounds: number;
  connectSegmentMs: number;
  /** Unmeasured load on each route of a freshly started server before its first step (JIT, pools). */
  primeMs: number;
  warmupMs: number;
  durationMs: number;
  /**
   * From 256 connections on, and for connect-per-request: at least this warm-up and this measured
   * time per round (opening the connections, the pool's queue, responses hundreds of ms apart).
   */
  bigWarmupMs: number;
  bigSegmentMs: number;
  conc: Record<StepTarget, number[]>;
  /** Batches per guide scenario. */
  scenarioBatches: number;
}

const PLANS: Record<'full' | 'quick', Plan> = {
  full: {
    pairRounds: 3,
    connectRounds: 1,
    connectSegmentMs: 2_500,
    primeMs: 1_500,
    warmupMs: 1_000,
    durationMs: 3_000,
    bigWarmupMs: 1_500,
    bigSegmentMs: 2_000,
    conc: {
      pgbench: [1, 8, 64],
      connect: [1, 8, 64],
      'gateway-read-vs-connect': [1, 8, 64],
      ceiling: [1, 8, 64, 256, 1000],
      'ceiling-prepared': [1, 8, 64, 256, 1000],
      'ceiling-pipelined': [8, 64, 256],
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
    connectRounds: 1,
    connectSegmentMs: 1_000,
    primeMs: 300,
    warmupMs: 300,
    durationMs: 1_000,
    bigWarmupMs: 600,
    bigSegmentMs: 800,
    conc: {
      pgbench: [64],
      connect: [64],
      'gateway-read-vs-connect': [64],
      ceiling: [1, 64, 1000],
      'ceiling-prepared': [1, 64, 1000],
      'ceiling-pipelined': [],
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
/** Connections the pipelined ceiling shares its requests over (pipelining needs few). */
const PIPELINE_CLIENTS = 4;

/**
 * Phases that run after the loopback ones and before the targets are evaluated. The WAN-latency
 * bench goes here, e.g. `{ name: 'WAN model', run: async ({ mode, sourceUrl, signal, log }) => {
 * const r = await runWanBench({ quick: mode === 'quick', sourceUrl, signal, log }); return
 * { title: 'The WAN model of the edge', markdown: renderWanMarkdown(r, { headingLevel: 3 }), data: r } } }`
 * (bench/wan.ts). A phase may also record steps (record(ctx, …), with the server they ran on) and
 * notes (ctx.notes); it stops whatever it starts, also when it throws or `signal` aborts (Ctrl-C).
 * A failed phase is a note in the report, not a failed run. Mind the time budget: the quick pass
 * stays under a minute and the full one under about six.
 */
interface PhaseInput {
  ctx: Context;
  mode: 'full' | 'quick';
  /** The admin URL the bench was given (the shared server), for a phase that makes its own scratch database. */
  sourceUrl: string;
  servers: { shared: BenchServer; private?: BenchServer };
  signal: AbortSignal;
  log: (line: string) => void;
}
interface Phase {
  name: string;
  /** Its section of the report, if it has one (rendered after the guide's scenarios; `data` goes into the .json). */
  run(input: PhaseInput): Promise<PhaseSection | void>;
}
const LATER_PHASES: readonly Phase[] = [
  {
    // The full pass only: the quick one stays under a minute (`npm run bench:wan -- --quick` on its own).
    name: 'WAN model',
    run: async ({ mode, sourceUrl, signal, log }) => {
      if (mode === 'quick') return;
      const r = await runWanBench({ quick: false, sourceUrl, signal, log });
      writeWanResults(r);
      return { title: 'The WAN model of the edge', markdown: renderWanMarkdown(r, { headingLevel: 3 }), data: r };
    },
  },
];

/** Targets whose miss a CPU profile of the read path would not explain. */
const NOT_PROFILED = new Set(['reuse', 'run-time', 'connect-scram-tls', 'vs-connect']);

/** The targets measured side by side, in rotating rounds, at every concurrency two or more of them share. */
const CONNECT_GROUP: readonly StepTarget[] = ['connect', 'gateway-read-vs-connect'];
const CEILING_GROUP: readonly StepTarget[] = ['ceiling', 'ceiling-prepared', 'ceiling-pipelined', 'gateway-read'];

const SAMPLER_INTERVAL_MS = 50;
const PROFILE_CONNECTIONS = 64;

/** application_name per target, so pg_stat_activity tells the targets apart. */
const APP = {
  connect: 'poolgate-bench-connect',
  ceiling: 'poolgate-bench-ceiling',
  ceilingPrepared: 'poolgate-bench-ceiling-prepared',
  ceilingPipelined: 'poolgate-bench-ceiling-pipelined',
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
  'gateway-read-vs-connect': (a) => a === APP.gateway,
  ceiling: (a) => a === APP.ceiling,
  'ceiling-prepared': (a) => a === APP.ceilingPrepared,
  'ceiling-pipelined': (a) => a === APP.ceilingPipelined,
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

/** A server the bench loads targets against: its scratch database and a pg_stat_activity sampler there. */
interface BenchServer {
  key: ServerKey;
  db: BenchDatabase;
  info: ServerInfo;
  sampler: ConnectionSampler;
  samplerClient: pg.Client;
}

async function openServer(key: ServerKey, db: BenchDatabase, extra: Partial<ServerInfo> = {}): Promise<BenchServer> {
  const samplerClient = new pg.Client({ connectionString: db.url, application_name: APP.sampler });
  samplerClient.on('error', () => {});
  await samplerClient.connect();
  return {
    key,
    db,
    sampler: new ConnectionSampler(samplerClient, db.name, SAMPLER_INTERVAL_MS),
    samplerClient,
    info: {
      server: db.server,
      database: db.name,
      postgres: db.postgres,
      maxConnections: db.maxConnections,
      auth: db.auth,
      authShort: db.authShort,
      ...extra,
    },
  };
}

/** The private SCRAM + TLS instance with the bench's schema in a scratch database of its own. */
async function startPrivateServer(settings: Record<string, string>): Promise<{ instance: BenchPostgres; db: BenchDatabase }> {
  const instance = await startBenchPostgres({ settings });
  try {
    const db = await createBenchDatabase(instance.url('postgres'));
    await prepareSchema(db.url);
    return { instance, db: { ...db, auth: instance.auth } };
  } catch (err) {
    await instance.destroy().catch(() => {});
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// The run

interface Context {
  plan: Plan;
  progress: Progress;
  /** Where the current phase's targets run (and whose connections the sampler counts). */
  server: BenchServer;
  steps: StepResult[];
  notes: string[];
}

/** A step's figures, stamped with the server (and so the auth) they were measured on. */
function record(ctx: Context, result: StepResult): StepResult {
  const stamped = { ...result, server: ctx.server.key };
  ctx.steps.push(stamped);
  return stamped;
}

/** Skips a step that would open more Postgres connections than the server has free. */
async function headroomSkip(ctx: Context, target: StepTarget, c: number): Promise<string | undefined> {
  if (!PER_CLIENT_CONNECTIONS.has(target)) return undefined;
  const { headroom, max, used } = await connectionHeadroom(ctx.server.samplerClient);
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
  ctx.server.sampler.start();
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
    peaks = await ctx.server.sampler.stop();
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
function shapeFor(plan: Plan, c: number, target?: StepTarget): { rounds: number; warmupMs: number; segmentMs: number } {
  // A new connection per request answers in hundreds of ms under load: a short window would hold
  // a handful of responses, or only the ramp. Its ratio is tens of times, so fewer rounds suffice.
  if (target && CONNECT_GROUP.includes(target))
    return { rounds: plan.connectRounds, warmupMs: Math.max(plan.warmupMs, plan.bigWarmupMs), segmentMs: plan.connectSegmentMs };
  if (c < 256) return { rounds: plan.pairRounds, warmupMs: plan.warmupMs, segmentMs: plan.durationMs / plan.pairRounds };
  const rounds = Math.max(1, Math.ceil(plan.pairRounds / 2));
  return {
    rounds,
    warmupMs: Math.max(plan.warmupMs, plan.bigWarmupMs),
    segmentMs: Math.max(plan.durationMs / plan.pairRounds, plan.bigSegmentMs),
  };
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
    const { warmupMs, segmentMs, rounds } = shapeFor(ctx.plan, c, target);
    result = skip
      ? { target, connections: c, skipped: skip }
      : mergeSegments(target, c, [await segment(ctx, proc, route, c, warmupMs, segmentMs * rounds)]);
  } catch (err) {
    result = failed(target, c, err);
  }
  ctx.progress.end(stepLine(result));
  return record(ctx, result);
}

interface Side {
  target: StepTarget;
  proc: TargetProcess | undefined;
}

/**
 * Several targets on the same route and concurrency, in rounds (A B C, B C A, C A B…), each
 * round with its own short warm-up; each target's rounds are merged. Drift on a shared machine
 * (other work starting or stopping) then lands on every side of a ratio instead of on one, and
 * the rotation gives no target the same neighbour every time (the GC or TIME_WAIT sockets a
 * round leaves behind land on the next).
 */
async function alternatingStep(ctx: Context, c: number, route: RouteSpec, sides: readonly Side[]): Promise<void> {
  if (sides.length === 1) {
    await httpStep(ctx, sides[0]!.target, c, sides[0]!.proc, route);
    return;
  }
  const { plan, progress } = ctx;
  const { rounds, warmupMs, segmentMs } = shapeFor(plan, c, sides[0]!.target);
  const label = (t: StepTarget) => `${TARGET_INFO[t].label}  c=${c}`;
  progress.begin(`${sides.map((s) => TARGET_INFO[s.target].label).join(' ⇄ ')}  c=${c}`);
  const segs = sides.map((): Segment[] => []);
  const outcome = sides.map((): { skipped?: string; error?: unknown } => ({}));
  for (const [i, side] of sides.entries()) {
    if (!side.proc) outcome[i]!.error = new Error('its server did not start');
    else {
      const skipped = await headroomSkip(ctx, side.target, c);
      if (skipped) outcome[i]!.skipped = skipped;
    }
  }
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < sides.length; k++) {
      const i = (k + round) % sides.length;
      const { target, proc } = sides[i]!;
      if (outcome[i]!.error || outcome[i]!.skipped) continue;
      try {
        // Every round reopens its connections, so each keeps the full warm-up; the measured time is split.
        segs[i]!.push(await segment(ctx, proc!, route, c, warmupMs, segmentMs, `round ${round + 1}/${rounds} ${target}: `));
      } catch (err) {
        outcome[i]!.error = err;
      }
    }
  }
  for (const [i, { target }] of sides.entries()) {
    const { skipped, error } = outcome[i]!;
    const result = skipped ? { target, connections: c, skipped } : error ? failed(target, c, error) : mergeSegments(target, c, segs[i]!);
    progress.end(stepLine(result), label(target));
    record(ctx, result);
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
  const { plan, progress } = ctx;
  const { sampler } = ctx.server;
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
        r = await runPgbench(bin, ctx.server.db.pgbench, { clients: c, warmupMs: plan.warmupMs, durationMs: plan.durationMs });
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
  record(ctx, result);
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
  ctx.server.sampler.start();
  try {
    for (let i = 0; i < ctx.plan.scenarioBatches; i++) {
      runs.push(await burst(requests));
      ctx.progress.live(`batch ${i + 1}/${ctx.plan.scenarioBatches}: ${runs[i]!.wallMs.toFixed(1)} ms`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    peaks = await ctx.server.sampler.stop();
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
    return await launchTarget(kind, { ...cfg, databaseUrl: ctx.server.db.url });
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
      // The baseline is the prepared ceiling: the faster bare route, the one the gateway must come closest to.
      const proc = await launch(ctx, kind === 'ceiling' ? 'ceiling-prepared' : 'gateway', {
        applicationName: kind === 'ceiling' ? APP.ceilingPrepared : APP.gateway,
        poolMax: POOL_MAX,
      });
      if (!proc) return { skipped: `the ${kind} did not start for profiling` };
      procs[kind] = proc;
      await prime(ctx, proc, READ, 32);
    }
    const { rounds, warmupMs, segmentMs } = shapeFor(ctx.plan, c);
    ctx.progress.begin(`profile prepared ceiling ⇄ gateway  c=${c}`);
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
    const merged = mergeSegments(kind === 'ceiling' ? 'ceiling-prepared' : 'gateway-read', c, segs[kind]);
    summaries[kind] = { summary: summariseProfile(files[kind], merged.ok ?? 0), rps: merged.rps ?? 0 };
    ctx.progress.end(
      `${Math.round(merged.rps ?? 0).toLocaleString('en-US')} req/s under the profiler; ${summaries[kind].summary.busyUsPerRequest.toFixed(0)} µs main-thread CPU/request`,
      `profile ${kind === 'ceiling' ? 'prepared ceiling' : kind}  c=${c}`,
    );
  }
  const allFiles = [...files.ceiling, ...files.gateway];
  const base = summaries.ceiling;
  const g = summaries.gateway;
  const delta = compareProfiles(base.summary, g.summary);
  const busy = (s: ProfileSummary) => s.busyMs / Math.max(1, s.busyMs + s.idleMs);
  const findings: string[] = [];
  // Magnitudes from the unprofiled paired step (the profiler slows deep call stacks more than shallow ones).
  const plainC = ctx.steps.find(
    (s) => s.target === 'ceiling-prepared' && s.server === 'shared' && s.connections === PROFILE_CONNECTIONS && !s.skipped,
  );
  const plainG = ctx.steps.find(
    (s) => s.target === 'gateway-read' && s.server === 'shared' && s.connections === PROFILE_CONNECTIONS && !s.skipped,
  );
  if (plainC?.serverCpuUsPerRequest && plainG?.serverCpuUsPerRequest && plainC.rps && plainG.rps) {
    const cpuRatio = plainG.serverCpuUsPerRequest / plainC.serverCpuUsPerRequest;
    findings.push(
      `Without the profiler (the measured step at ${PROFILE_CONNECTIONS} connections) the gateway process used ${plainG.serverCpuUsPerRequest.toFixed(0)} µs of CPU per request against the prepared ceiling’s ` +
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
    step: `GET /api/users/:id at ${PROFILE_CONNECTIONS} connections, the prepared ceiling and the gateway alternating`,
    baselineLabel: 'prepared ceiling',
    ceiling: base.summary,
    gateway: g.summary,
    delta,
    files: allFiles,
    findings,
  };
}

/** Roughly how long a pass takes (for the progress line): steps, priming runs, start-ups, scenarios. */
function estimateMs(plan: Plan, pgbench: boolean): number {
  const sharing = (target: StepTarget, c: number) =>
    [CONNECT_GROUP, CEILING_GROUP].some((g) => g.includes(target) && g.filter((t) => plan.conc[t].includes(c)).length > 1);
  // Primes, target start-ups (the private instance among them), the guide's scenarios.
  let ms = 10 * plan.primeMs + 18_000 + SCENARIOS.length * 1_000;
  if (pgbench) ms += plan.conc.pgbench.length * (Math.round((plan.warmupMs + plan.durationMs) / 1000) * 1000 + 400);
  for (const [target, list] of Object.entries(plan.conc) as [StepTarget, number[]][]) {
    if (target === 'pgbench') continue;
    for (const c of list) {
      const { rounds, warmupMs, segmentMs } = shapeFor(plan, c, target);
      ms += sharing(target, c) ? rounds * (warmupMs + segmentMs + 250) : warmupMs + segmentMs * rounds + 300;
    }
  }
  return ms;
}

/** Observations the figures need beside them, drawn from this run's own numbers. */
function addNotes(ctx: Context, loadAvgStart: number[]): void {
  const cpus = os.availableParallelism?.() ?? os.cpus().length;
  const busiest = Math.max(loadAvgStart[0] ?? 0, os.loadavg()[0] ?? 0);
  if (busiest > cpus) {
    ctx.notes.push(
      `The machine was busy with other work: load average up to ${busiest.toFixed(1)} on ${cpus} cores over the run. Absolute figures mean little here; ` +
        'the ratios of targets measured in the same alternating rounds hold better, but even they move by tens of percent between runs like this one.',
    );
  }
  const find = (t: StepTarget, c: number) => ctx.steps.find((s) => s.target === t && s.connections === c && !s.skipped);
  const connect = ctx.steps.find((s) => s.target === 'connect' && !s.skipped && s.latencyMs);
  const pooled = find('gateway-read-vs-connect', connect?.connections ?? 1);
  if (connect?.latencyMs && pooled?.latencyMs) {
    ctx.notes.push(
      `A new connection costs: connect-per-request p50 is ${connect.latencyMs.p50.toFixed(1)} ms at ${connect.connections} connection(s), against ${pooled.latencyMs.p50.toFixed(2)} ms ` +
        `for the gateway's pooled request on the same server (${connect.server === 'private' ? 'SCRAM-SHA-256 over TLS' : 'the shared server’s auth'}). Each connect pays a TCP handshake, ` +
        `${connect.server === 'private' ? 'a TLS handshake, the SCRAM exchange (4096 PBKDF2 iterations on both sides), ' : ''}and a backend fork; Postgres forks one backend at a time, ` +
        'which is also why connect-per-request barely gains from more concurrency.',
    );
  }
  const piped = ctx.steps.filter((s) => s.target === 'ceiling-pipelined' && !s.skipped && s.rps);
  const vsPrepared = piped.flatMap((s) => {
    const p = find('ceiling-prepared', s.connections);
    return p?.rps ? [{ c: s.connections, ratio: s.rps! / p.rps }] : [];
  });
  if (vsPrepared.length) {
    // Below a tenth either way, alternating rounds on a shared machine cannot tell the two apart.
    const wins = vsPrepared.filter((x) => x.ratio >= 1.1).map((x) => x.c);
    const losses = vsPrepared.filter((x) => x.ratio <= 0.9).map((x) => x.c);
    ctx.notes.push(
      `Pipelining the bare route (${PIPELINE_CLIENTS} connections opened with \`pipeline: true\`, named statements) against the prepared ceiling on its pool of ${POOL_MAX}: ` +
        `${vsPrepared.map((x) => `${x.ratio.toFixed(2)}× at ${x.c}`).join(', ')}. ` +
        (wins.length
          ? `It helps the bare route at ${wins.join(', ')} connections: queries queue behind each other on a few busy connections instead of waiting for one of their own, ` +
            'and fewer Postgres backends share the cores. '
          : `It did not help the bare route by a tenth or more at any concurrency in this run${losses.length ? ` (slower at ${losses.join(', ')})` : ''}. `) +
        'It is kept as a third ceiling, measured in the same rounds; the targets are against the plain and the prepared ones, as issue 13 states them.',
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
  const sourceUrl = sourceDatabaseUrl();
  const startedAt = new Date();

  let db: BenchDatabase;
  try {
    db = await createBenchDatabase(sourceUrl);
  } catch (err) {
    console.error(`bench: ${(err as Error).message}`);
    return err instanceof BenchError ? err.exitCode : 1;
  }

  const children = new Set<TargetProcess>();
  // Started in the background while the shared database is prepared; stopped and deleted at the end.
  let privateStart: Promise<{ instance: BenchPostgres; db: BenchDatabase }> | undefined;
  const destroyPrivate = async () => {
    const started = await privateStart?.catch(() => undefined);
    if (!started) return;
    await started.db.drop().catch(() => {}); // closes its admin connection; the folder goes next anyway
    await started.instance.destroy();
  };
  let interrupted = false;
  const stopping = new AbortController();
  const onSignal = (signal: string) => {
    if (interrupted) return;
    interrupted = true;
    stopping.abort();
    process.stdout.write(`\nbench: ${signal}, stopping servers and the private PostgreSQL, dropping ${db.name}…\n`);
    const hardExit = setTimeout(() => process.exit(130), 30_000);
    hardExit.unref();
    void Promise.allSettled([...children].map((c) => c.stop(5_000)))
      .then(() => destroyPrivate().catch(() => {}))
      .then(() => db.drop())
      .then(
        () => process.stdout.write(`bench: dropped ${db.name}\n`),
        (err: unknown) => process.stdout.write(`bench: could not drop ${db.name} (${(err as Error).message}); drop it by hand\n`),
      )
      .finally(() => process.exit(130));
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));

  const pgbenchBin = findPgbench();
  const stepCount = Object.values(plan.conc).reduce((n, list) => n + list.length, 0) - (pgbenchBin ? 0 : plan.conc.pgbench.length);
  // Per-step estimate for the ETA, with the priming runs and start-ups spread over the steps.
  const perStepMs = estimateMs(plan, Boolean(pgbenchBin)) / (stepCount + SCENARIOS.length);
  const progress = new Progress(stepCount + SCENARIOS.length, perStepMs);
  const loadAvgStart = os.loadavg();
  const steps: StepResult[] = [];
  const notes: string[] = [];
  let shared: BenchServer | undefined;
  let priv: BenchServer | undefined;
  let privateFailure: string | undefined;
  const scenarios: ScenarioResult[] = [];
  const sections: PhaseSection[] = [];
  let gatewayPool: PoolStats | undefined;
  let edgeNodePool: PoolStats | undefined;
  let profile: BenchResults['profile'];
  const track = async <T extends TargetProcess | undefined>(p: Promise<T>): Promise<T> => {
    const proc = await p;
    if (proc) children.add(proc);
    return proc;
  };
  const stop = async (...procs: (TargetProcess | undefined)[]) => {
    await Promise.all(
      procs.map(async (proc) => {
        if (!proc) return;
        await proc.stop();
        children.delete(proc);
      }),
    );
  };

  try {
    const secs = Math.round(((stepCount + SCENARIOS.length) * perStepMs) / 1000);
    progress.note(
      `poolgate bench (${mode}): ${stepCount} load steps + ${SCENARIOS.length} guide scenarios, about ${fmtClock(secs * 1000)} min. ` +
        `PostgreSQL ${db.postgres} at ${db.server} (${db.authShort}), scratch database ${db.name}.`,
    );
    if (!/^(127\.|localhost$|\[?::1\]?$)/.test(new URL(sourceUrl).hostname)) {
      progress.note('  note: the database is not on loopback; its network latency is in every figure.');
      notes.push('The database was not on loopback: its network latency is in every figure.');
    }
    if (db.staleDropped.length) progress.note(`  dropped scratch databases left by runs that were killed: ${db.staleDropped.join(', ')}`);
    privateStart = (async () => {
      const stale = await removeStaleInstances();
      if (stale.length) progress.note(`  removed private PostgreSQL instances left by runs that were killed: ${stale.join(', ')}`);
      return startPrivateServer(db.settings);
    })();
    privateStart.catch(() => {}); // awaited below; a failure is reported there
    progress.note('  preparing the schema; starting a private PostgreSQL (SCRAM + TLS) for connect-per-request…');
    await prepareSchema(db.url);
    shared = await openServer('shared', db);
    const ctx: Context = { plan, progress, server: shared, steps, notes };
    // Every server starts now, at once, while nothing is measured (those on the private instance
    // once it is up); each idles until its phase (an idle server uses about 1% of a core) and is
    // primed just before it.
    const ceilingKinds = (
      [
        ['ceiling', 'ceiling', APP.ceiling],
        ['ceiling-prepared', 'ceiling-prepared', APP.ceilingPrepared],
        ['ceiling-pipelined', 'ceiling-pipelined', APP.ceilingPipelined],
        ['gateway-read', 'gateway', APP.gateway],
      ] as const
    ).filter(([target]) => plan.conc[target].length > 0 || target === 'gateway-read');
    const sharedLaunches = Promise.all([
      track(launch(ctx, 'topology', { applicationName: APP.edgeNode, poolMax: POOL_MAX })),
      ...ceilingKinds.map(([, kind, applicationName]) =>
        track(launch(ctx, kind, { applicationName, poolMax: POOL_MAX, pipelineClients: PIPELINE_CLIENTS })),
      ),
    ]);
    let pgbenchReady: string | undefined;
    if (pgbenchBin) {
      progress.note('  pgbench -i -s 1 (scratch database only)…');
      try {
        await initPgbench(pgbenchBin, db.pgbench);
        pgbenchReady = pgbenchBin;
      } catch (err) {
        notes.push(`pgbench could not run: ${(err as Error).message}`);
        for (const c of plan.conc.pgbench)
          record(ctx, { target: 'pgbench', connections: c, skipped: `pgbench failed: ${(err as Error).message}` });
      }
    } else {
      notes.push('pgbench is not installed (looked on PATH and in /usr/bin): no pgbench baseline.');
      for (const c of plan.conc.pgbench) record(ctx, { target: 'pgbench', connections: c, skipped: 'pgbench not installed' });
    }
    try {
      const p = await privateStart;
      priv = await openServer('private', p.db, { differences: p.instance.differences });
      progress.note(`  private PostgreSQL at ${priv.info.server}: ${priv.info.auth}`);
    } catch (err) {
      privateFailure = (err as Error).message;
      const why = err instanceof BenchPostgresError ? privateFailure : `${privateFailure} (${(err as Error).name})`;
      progress.note(`  the private PostgreSQL did not start (${why}); connect-per-request runs on the shared server (${db.authShort})`);
      notes.push(
        `The private SCRAM + TLS PostgreSQL could not start (${why}): connect-per-request and the gateway beside it ran on the shared server, ` +
          `with its auth (${db.auth}), so their ratio reflects that server's connection cost, not a real deployment's.`,
      );
    }

    const cctx: Context = { ...ctx, server: priv ?? shared };
    const [connect, connectGateway] = await Promise.all([
      track(launch(cctx, 'connect', { applicationName: APP.connect, poolMax: POOL_MAX })),
      track(launch(cctx, 'gateway', { applicationName: APP.gateway, poolMax: POOL_MAX })),
    ]);
    const [topology, ...ceilingProcs] = await sharedLaunches;

    // pgbench -S: what the database does alone.
    if (pgbenchReady) for (const c of plan.conc.pgbench) await pgbenchStep(ctx, pgbenchReady, c);

    // Connect-per-request, and the gateway's pool beside it on the same server (the private
    // SCRAM + TLS one): both pay that server's auth and TLS, one per request, the other once per
    // pooled connection, so their ratio is the cost of connecting and nothing else.
    {
      const gateway = connectGateway;
      await prime(cctx, connect, READ, 4);
      await prime(cctx, gateway, READ, 32);
      const levels = [...new Set(CONNECT_GROUP.flatMap((t) => plan.conc[t]))].sort((x, y) => x - y);
      const procOf: Partial<Record<StepTarget, TargetProcess | undefined>> = { connect, 'gateway-read-vs-connect': gateway };
      for (const c of levels) {
        const sides = CONNECT_GROUP.filter((t) => plan.conc[t].includes(c)).map((target) => ({ target, proc: procOf[target] }));
        await alternatingStep(cctx, c, READ, sides);
      }
      await stop(connect, gateway);
    }

    // The bare ceilings and the gateway side by side, in rotating rounds per concurrency so drift hits all alike.
    {
      const procs = ceilingProcs;
      const procOf = Object.fromEntries(ceilingKinds.map(([target], i) => [target, procs[i]])) as Partial<
        Record<StepTarget, TargetProcess | undefined>
      >;
      // Their pools fill side by side: say so when the server (shared with whatever else runs there) has no room for them.
      const poolsNeed = ceilingKinds.reduce((n, [target]) => n + (target === 'ceiling-pipelined' ? PIPELINE_CLIENTS : POOL_MAX), 0);
      const room = await connectionHeadroom(shared.samplerClient, 0).catch(() => undefined);
      if (room && room.headroom < poolsNeed) {
        const msg =
          `The shared server had ${room.headroom} connections free (max_connections ${room.max}, ${room.used} in use by everything on it) for the ` +
          `${poolsNeed} the bare ceilings' and the gateway's pools hold side by side: a pool that cannot fill answers slower or with errors (the gateway: 503).`;
        progress.note(`  note: ${msg}`);
        notes.push(msg);
      }
      for (const proc of procs) await prime(ctx, proc, READ, 32);
      const gateway = procOf['gateway-read'];
      const levels = [...new Set(CEILING_GROUP.flatMap((t) => plan.conc[t]))].sort((x, y) => x - y);
      for (const c of levels) {
        const sides = CEILING_GROUP.filter((t) => plan.conc[t].includes(c)).map((target) => ({ target, proc: procOf[target] }));
        await alternatingStep(ctx, c, READ, sides);
      }
      await stop(...procs.filter((p) => p !== gateway));
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
      const topo = topology;
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

    // Later phases (the WAN-latency bench), on the same servers.
    for (const phase of LATER_PHASES) {
      try {
        const section = await phase.run({
          ctx,
          mode,
          sourceUrl,
          servers: { shared, ...(priv ? { private: priv } : {}) },
          signal: stopping.signal,
          log: (line) => progress.note(`  ${line}`),
        });
        if (section) sections.push({ name: phase.name, ...section });
      } catch (err) {
        progress.note(`  ${phase.name} failed: ${(err as Error).message}`);
        notes.push(`${phase.name} failed: ${(err as Error).message.split('\n')[0]}`);
      }
    }

    addNotes(ctx, loadAvgStart);

    // Targets, and a profile where one is missed.
    const draft = (): BenchResults => ({
      version: 1,
      mode,
      date: localDate(startedAt),
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      // From this process's start (the clock's origin), so start-up and the database's creation count too.
      durationSec: now() / 1000,
      machine: { ...machine(db.postgres, undefined), loadAvg: { start: loadAvgStart, end: os.loadavg() } },
      database: { server: db.server, name: db.name, maxConnections: db.maxConnections },
      servers: { shared: shared!.info, ...(priv ? { private: priv.info } : {}) },
      ...(privateFailure ? { privateFailure } : {}),
      settings: {
        warmupMs: plan.warmupMs,
        durationMs: plan.durationMs,
        pairRounds: plan.pairRounds,
        bigWarmupMs: plan.bigWarmupMs,
        bigSegmentMs: plan.bigSegmentMs,
        samplerIntervalMs: SAMPLER_INTERVAL_MS,
        poolMax: POOL_MAX,
        pipelineClients: PIPELINE_CLIENTS,
        connectRounds: plan.connectRounds,
        connectSegmentMs: plan.connectSegmentMs,
        concurrencies: plan.conc,
      },
      steps: ctx.steps,
      ...(gatewayPool ? { gatewayPool } : {}),
      ...(edgeNodePool ? { edgeNodePool } : {}),
      scenarios,
      ...(sections.length ? { sections } : {}),
      targets: [],
      notes: ctx.notes,
    });
    const missed = evaluateTargets(draft(), POOL_MAX).filter((t) => t.status === 'missed' && !NOT_PROFILED.has(t.id));
    const wantProfile = args['no-profile'] ? false : args.profile ? true : mode === 'full' && missed.length > 0;
    if (wantProfile) {
      progress.addSteps(2);
      progress.note(
        `  ${missed.length ? `missed: ${missed.map((t) => t.id).join(', ')}; ` : ''}profiling the prepared ceiling and the gateway at ${PROFILE_CONNECTIONS} connections…`,
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
    const final: BenchResults = {
      ...d,
      machine: { ...d.machine, ...machine(db.postgres, pgbenchBin ? await pgbenchVersion(pgbenchBin) : undefined) },
      ...(profile ? { profile } : {}),
    };
    // Evaluated again at the end: the run's own duration is one of them.
    const results: BenchResults = { ...final, targets: evaluateTargets(final, POOL_MAX) };
    const outDir = fileURLToPath(new URL('./results/', import.meta.url));
    mkdirSync(outDir, { recursive: true });
    const base = join(outDir, mode === 'quick' ? `${results.date}-quick` : results.date);
    writeFileSync(`${base}.md`, renderMarkdown(results));
    writeFileSync(`${base}.json`, renderJson(results));
    progress.note('');
    progress.note(targetsTable(results));
    progress.note('');
    progress.note(`bench: wrote ${base}.md and ${base}.json in ${fmtClock(now())} min`);
    return 0;
  } catch (err) {
    progress.note(`bench: failed: ${(err as Error).stack ?? String(err)}`);
    return 1;
  } finally {
    await Promise.allSettled([...children].map((c) => c.stop(5_000)));
    await Promise.allSettled([shared?.samplerClient.end(), priv?.samplerClient.end()]);
    await destroyPrivate().catch((err: unknown) =>
      progress.note(`bench: could not remove the private PostgreSQL: ${(err as Error).message}`),
    );
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
