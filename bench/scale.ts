/**
 * `npm run bench:scale` (about 2 minutes: 107–140 s on a busy 2-core machine): issue 21, many
 * instances on one database, and poolers.
 *
 * **The flood.** A private PostgreSQL cluster (test/helpers/private-postgres.ts: trust auth, its own
 * port) with max_connections 40, superuser_reserved_connections 3 and a role `operator` that is no
 * superuser (so the superusers' reserve does not let it in). Four gateways (bench/targets.ts
 * 'gateway': real processes, real HTTP, POOL_MAX 20 each: 80 asked of a server with 37 for them) are
 * flooded at once with reads, 2,000 each, 200 in flight per gateway, from this process. Twice: with
 * POOL_BUDGET=off (the baseline: the pools ask for more than the server has) and with the default
 * (auto: the connection budget every instance on the server shares). Meanwhile, from a process of
 * its own (bench/server-watch.ts), client backends are counted in pg_stat_activity every 20 ms and
 * `operator` connects every ~100 ms, as an operator's psql would. Connects refused with 53300 are
 * counted in the server's own log (by user; the same in both modes) and in the gateways' /stats
 * (pool.budget.refusedCount, where there is a budget).
 *
 * **The poolers.** The fitness API's mixed load (bench/fitness-mix.ts, the mix poolers.test.ts
 * sends) on three gateways with every setting at its default: direct to the shared PostgreSQL, and
 * through PgBouncer (test/helpers/pgbouncer.ts: the installed one, every setting at its default) in
 * transaction and in session mode. 32 closed-loop clients, one side at a time in rotating rounds;
 * 5xx counted over everything (warm-up included), throughput and p50/p99 over the rounds, each as a
 * ratio against the direct side of the same run.
 *
 * Database for the poolers: BENCH_DATABASE_URL, else DATABASE_URL, else
 * postgres://postgres@127.0.0.1:5432/test; works in poolgate_scale_<pid>, dropped at the end. The
 * cluster, its database and the PgBouncers are stopped and deleted at the end (and on Ctrl-C).
 * Writes bench/results/<date>-scale.json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { AdmissionStats, BudgetFigures, PoolStats, RefusedFeatures } from '../src/db/types.js';
import { DEMO_USER_ID } from '../src/fitness/seed.js';
import {
  privatePostgresAvailable,
  privateTestDatabase,
  startPrivatePostgres,
  type PrivatePostgres,
} from '../test/helpers/private-postgres.js';
import { pgBouncerMissing, startPgBouncer, type PgBouncer, type PoolMode } from '../test/helpers/pgbouncer.js';
import { quickOrExit, runIfMain } from './cli.js';
import { createBenchDatabase, prepareSchema, sourceDatabaseUrl } from './database.js';
import { createUserCall, fitnessCall, MIX_USERS } from './fitness-mix.js';
import { latencyOf, now, processTreeStats, runMix, type Latency, type MixOutcome } from './load.js';
import { localDate, machine, runStamp, type BenchResults, type RunStamp } from './report.js';
import { startServerWatch, type OperatorFigures } from './server-watch.js';
import { launchTarget, type TargetProcess } from './targets.js';

const FLOOD = {
  gateways: 4,
  poolMax: 20,
  /** The issue's figures: 2,000 reads per gateway, 200 in flight each. */
  reads: 2_000,
  concurrency: 200,
  maxConnections: 40,
  superuserReserved: 3,
  /** POOL_RESERVE's default: what the budget leaves free below the server's limit. */
  reserve: 3,
  samplerIntervalMs: 20,
  operatorEveryMs: 100,
} as const;
const GATEWAY_APP = 'poolgate-bench-scale';
const OPERATOR_APP = 'poolgate-bench-operator';
const SAMPLER_APP = 'poolgate-bench-sampler';

const POOLERS = { clients: 32, rounds: 4, segmentMs: 5_000, warmupMs: 2_000, poolMax: 20 } as const;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const tally = (into: Record<string, number>, key: string) => (into[key] = (into[key] ?? 0) + 1);
const keyOf = (o: MixOutcome) => (o.status === undefined ? `no answer: ${o.error ?? '?'}` : `${o.status}${o.code ? ` ${o.code}` : ''}`);
const countWhere = (t: Record<string, number>, match: (key: string) => boolean) =>
  Object.entries(t).reduce((n, [k, c]) => n + (match(k) ? c : 0), 0);

/** A gateway's /stats `pool` (the figures this bench reads), or undefined when it did not answer. */
async function poolStats(url: string): Promise<PoolStats | undefined> {
  try {
    const res = await fetch(`${url}/stats`, { signal: AbortSignal.timeout(5_000) });
    return ((await res.json()) as { pool?: PoolStats }).pool;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The flood: four gateways, one small server

interface FloodCluster {
  cluster: PrivatePostgres;
  /** The fitness database on it. */
  url: string;
  operatorUrl: string;
  /**
   * Connects refused with 53300 so far, by user, from the server's log; read on `client`, a
   * connection opened before the flood (during one the gateways, superusers here, may hold every slot).
   */
  refusals(client: pg.Client): Promise<Record<string, number>>;
  close(): Promise<void>;
}

/**
 * The cluster the flood runs on. Its log goes through the logging collector into the data folder,
 * each line prefixed with its SQLSTATE and user, so refusals can be read back with pg_read_file.
 */
async function startFloodCluster(): Promise<FloodCluster> {
  const cluster = await startPrivatePostgres();
  try {
    const admin = new pg.Client({ connectionString: cluster.url() });
    await admin.connect();
    for (const [name, value] of [
      ['max_connections', FLOOD.maxConnections],
      ['superuser_reserved_connections', FLOOD.superuserReserved],
      ['logging_collector', 'on'],
      ['log_filename', 'scale.log'],
      ['log_line_prefix', '%e %u '],
    ] as const)
      await admin.query(`ALTER SYSTEM SET ${name} = '${value}'`);
    await admin.query('CREATE ROLE operator LOGIN'); // not a superuser: only the room others leave lets it in
    await admin.end();
    await cluster.stop();
    await cluster.start();
    await cluster.acceptsConnections();
    const db = await privateTestDatabase(cluster, 'poolgate_scale');
    await prepareSchema(db.url);
    const operator = new URL(cluster.url());
    operator.username = 'operator';
    let closing: Promise<void> | undefined;
    return {
      cluster,
      url: db.url,
      operatorUrl: operator.toString(),
      refusals,
      close: () =>
        (closing ??= (async () => {
          await db.drop();
          await cluster.destroy();
        })()),
    };
  } catch (err) {
    await cluster.destroy();
    throw err;
  }
}

async function refusals(client: pg.Client): Promise<Record<string, number>> {
  const { rows } = await client.query<{ who: string; n: number }>(
    `SELECT split_part(line, ' ', 2) AS who, count(*)::int AS n
     FROM regexp_split_to_table(pg_read_file('log/scale.log'), E'\\n') AS line
     WHERE line LIKE '53300 %' GROUP BY 1`,
  );
  return Object.fromEntries(rows.map((r) => [r.who || '?', r.n]));
}

type BudgetMode = 'off' | 'auto';

export interface FloodFigures {
  mode: BudgetMode;
  /** Answers by "status code". */
  answers: Record<string, number>;
  wallMs: number;
  readsPerSec: number;
  /** Every answer's latency, whatever its status. */
  latencyMs: Latency;
  refused53300: { serverLog: Record<string, number>; budgetRefusedCount?: number };
  backends: {
    /** Peak client backends on the server but the operator's (the sampler's own counted). */
    peak: number;
    peakGateways: number;
    peakAll: number;
    limitLessReserve: number;
    samples: number;
    longestGapMs: number;
  };
  operator: OperatorFigures;
  /** Until every gateway saw its peers (auto), ms after they all served. */
  peersSeenAfterMs?: number;
  /** CPU over the flood: this process (the load), the four gateways, the cluster's live processes. */
  cpuMs: { load: number; gateways: number; postgres: number };
  /** When the 503s were sent, in s from the flood's start (first and last), none if none. */
  fiveOhThreeSentSec?: { first: number; last: number };
  /** Each gateway's /stats pool after the flood: its size, its admission's sheds (pool, lanes), its budget where there is one. */
  gateways: {
    max?: number;
    total?: number;
    lanes?: number;
    /** Reads the lanes sent to the pool: every lane busy or stalled, or the read looked slow. */
    toPool?: { overflow?: number; slow?: number };
    acquireTimeoutCount?: number;
    shed?: { pool?: AdmissionStats['shed']; lanes?: AdmissionStats['shed'] };
    budget?: BudgetFigures;
  }[];
}

const subtract = (after: Record<string, number>, before: Record<string, number>) =>
  Object.fromEntries(Object.entries(after).map(([k, n]) => [k, n - (before[k] ?? 0)]));

async function launchFloodGateways(fc: FloodCluster, mode: BudgetMode): Promise<TargetProcess[]> {
  const launched = await Promise.allSettled(
    Array.from({ length: FLOOD.gateways }, (_, i) =>
      launchTarget('gateway', {
        databaseUrl: fc.url,
        applicationName: `${GATEWAY_APP}-${i}`,
        poolMax: FLOOD.poolMax,
        // auto is the default: it is not set, as a user would not set it.
        env: mode === 'off' ? { POOL_BUDGET: 'off' } : {},
      }),
    ),
  );
  const up = launched.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = launched.find((r) => r.status === 'rejected');
  if (failed) {
    await Promise.allSettled(up.map((g) => g.stop()));
    throw failed.reason;
  }
  return up;
}

/** ms until every gateway's budget counts all of them (bounded: undefined if it never did). */
async function peersSeen(gateways: TargetProcess[], timeoutMs = 20_000): Promise<number | undefined> {
  const t = now();
  while (now() - t < timeoutMs) {
    const seen = await Promise.all(gateways.map(async (g) => (await poolStats(g.urls.url))?.budget?.instances));
    if (seen.every((n) => n === gateways.length)) return now() - t;
    await sleep(100);
  }
  return undefined;
}

/** Every gateway's reads at once; answers tallied, each answer's latency kept, and when the 503s were sent. */
async function floodReads(
  gateways: TargetProcess[],
): Promise<{ answers: Record<string, number>; latencies: number[]; wallMs: number; fiveOhThreeSentMs: number[] }> {
  const answers: Record<string, number> = {};
  const latencies: number[] = [];
  const fiveOhThreeSentMs: number[] = [];
  const t = now();
  await Promise.all(
    gateways.map((g) => {
      let i = 0;
      return runMix({
        connections: FLOOD.concurrency,
        durationMs: 60_000, // a bound, not the plan: the count ends it
        requests: FLOOD.reads,
        timeoutMs: 30_000,
        next: () => ({
          kind: 'read',
          url: `${g.urls.url}/api/users/${DEMO_USER_ID}${++i % 3 === 0 ? '/workouts?limit=5' : ''}`,
        }),
        onOutcome: (o) => {
          tally(answers, keyOf(o));
          latencies.push(o.endMs - o.startMs);
          if (o.status === 503) fiveOhThreeSentMs.push(o.startMs);
        },
      });
    }),
  );
  return { answers, latencies, wallMs: now() - t, fiveOhThreeSentMs };
}

/** CPU ms of this process, of the gateways' processes and of the cluster's (its postmaster and live backends). */
function cpuNow(gateways: TargetProcess[], postmasterPid: number): FloodFigures['cpuMs'] {
  const own = process.cpuUsage();
  const tree = (pid: number) => processTreeStats(pid)?.cpuMs ?? 0;
  return {
    load: (own.user + own.system) / 1000,
    gateways: gateways.reduce((n, g) => n + tree(g.pid), 0),
    postgres: tree(postmasterPid),
  };
}

/** One flood in `mode`, on gateways of its own; they are stopped and their backends gone when this resolves. */
async function flood(fc: FloodCluster, mode: BudgetMode, log: (line: string) => void): Promise<FloodFigures> {
  const gateways = await launchFloodGateways(fc, mode);
  // Opened before the flood: during one, the gateways (superusers here) may hold every slot.
  const admin = new pg.Client({ connectionString: fc.cluster.url(), application_name: SAMPLER_APP });
  await admin.connect();
  try {
    const peersSeenAfterMs = mode === 'auto' ? await peersSeen(gateways) : undefined;
    const postmasterPid = Number(
      (await admin.query<{ pid: string }>(`SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1) AS pid`)).rows[0]!.pid,
    );
    const refusedBefore = await fc.refusals(admin);
    const watch = await startServerWatch(
      {
        samplerUrl: fc.cluster.url(),
        samplerApp: SAMPLER_APP,
        operatorUrl: fc.operatorUrl,
        operatorApp: OPERATOR_APP,
        operatorEveryMs: FLOOD.operatorEveryMs,
        samplerIntervalMs: FLOOD.samplerIntervalMs,
      },
      { peak: `!${OPERATOR_APP}`, gateways: GATEWAY_APP },
    );
    const cpuBefore = cpuNow(gateways, postmasterPid);
    const { answers, latencies, wallMs, fiveOhThreeSentMs } = await floodReads(gateways);
    const cpuAfter = cpuNow(gateways, postmasterPid);
    const seen = await watch.stop();
    const stats = await Promise.all(gateways.map((g) => poolStats(g.urls.url)));
    await sleep(500); // the logging collector writes behind
    const serverLog = subtract(await fc.refusals(admin), refusedBefore);
    const budgets = stats.map((s) => s?.budget);
    const figures: FloodFigures = {
      mode,
      answers,
      wallMs,
      readsPerSec: (countWhere(answers, (k) => k === '200') / wallMs) * 1000,
      latencyMs: latencyOf(Float64Array.from(latencies)),
      refused53300: {
        serverLog,
        ...(budgets.every(Boolean) ? { budgetRefusedCount: budgets.reduce((n, b) => n + (b?.refusedCount ?? 0), 0) } : {}),
      },
      backends: {
        peak: seen.peaks.peak!,
        peakGateways: seen.peaks.gateways!,
        peakAll: seen.peakAll,
        limitLessReserve: FLOOD.maxConnections - FLOOD.superuserReserved - FLOOD.reserve,
        samples: seen.samples,
        longestGapMs: seen.longestGapMs,
      },
      operator: seen.operator,
      ...(peersSeenAfterMs === undefined ? {} : { peersSeenAfterMs }),
      cpuMs: {
        load: cpuAfter.load - cpuBefore.load,
        gateways: cpuAfter.gateways - cpuBefore.gateways,
        postgres: cpuAfter.postgres - cpuBefore.postgres,
      },
      ...(fiveOhThreeSentMs.length
        ? { fiveOhThreeSentSec: { first: Math.min(...fiveOhThreeSentMs) / 1000, last: Math.max(...fiveOhThreeSentMs) / 1000 } }
        : {}),
      gateways: stats.map((s) => ({
        max: s?.max,
        total: s?.total,
        lanes: s?.pipeline?.lanes,
        toPool: { overflow: s?.pipeline?.overflowCount, slow: s?.pipeline?.slowToPoolCount },
        acquireTimeoutCount: s?.acquireTimeoutCount,
        shed: { pool: s?.admission?.shed, lanes: s?.pipeline?.admission?.shed },
        ...(s?.budget ? { budget: s.budget } : {}),
      })),
    };
    logFlood(figures, log);
    return figures;
  } finally {
    await Promise.allSettled(gateways.map((g) => g.stop()));
    await gatewaysGone(admin);
    await admin.end().catch(() => {});
  }
}

function logFlood(f: FloodFigures, log: (line: string) => void): void {
  const b = f.backends;
  const o = f.operator;
  log(
    `POOL_BUDGET=${f.mode}: ${JSON.stringify(f.answers)} in ${(f.wallMs / 1000).toFixed(1)} s (${f.readsPerSec.toFixed(0)} reads/s, p50 ${f.latencyMs.p50.toFixed(0)} / p99 ${f.latencyMs.p99.toFixed(0)} ms)`,
  );
  log(
    `  53300 in the server log ${JSON.stringify(f.refused53300.serverLog)}${f.refused53300.budgetRefusedCount === undefined ? '' : `, in /stats ${f.refused53300.budgetRefusedCount}`}; ` +
      `peak backends ${b.peak} (gateways ${b.peakGateways}, all ${b.peakAll}; limit less reserve ${b.limitLessReserve}; ${b.samples} samples, longest gap ${b.longestGapMs.toFixed(0)} ms)`,
  );
  log(
    `  operator ${o.admitted}/${o.attempted} admitted ${JSON.stringify(o.refused)} (slowest ${o.slowestMs.toFixed(0)} ms); ` +
      `CPU s: load ${(f.cpuMs.load / 1000).toFixed(1)}, gateways ${(f.cpuMs.gateways / 1000).toFixed(1)}, postgres ${(f.cpuMs.postgres / 1000).toFixed(1)}` +
      (f.mode === 'auto'
        ? `; peers seen after ${f.peersSeenAfterMs === undefined ? 'never (20 s)' : `${f.peersSeenAfterMs.toFixed(0)} ms`}`
        : ''),
  );
  const shed = (path: 'pool' | 'lanes') => {
    const sum: Record<string, number> = {};
    for (const g of f.gateways) for (const [why, n] of Object.entries(g.shed?.[path] ?? {})) if (n) sum[why] = (sum[why] ?? 0) + n;
    return JSON.stringify(sum);
  };
  const toPool = (k: 'overflow' | 'slow') => f.gateways.reduce((n, g) => n + (g.toPool?.[k] ?? 0), 0);
  log(
    `  503s sent ${f.fiveOhThreeSentSec ? `${f.fiveOhThreeSentSec.first.toFixed(1)}–${f.fiveOhThreeSentSec.last.toFixed(1)} s into the flood` : ': none'}; ` +
      `admission shed: pool ${shed('pool')}, lanes ${shed('lanes')}; reads the lanes sent to the pool: ${toPool('overflow')} overflow, ${toPool('slow')} slow`,
  );
}

/** Waits (up to 10 s) until no gateway backend is left, so the next mode starts on an empty server. */
async function gatewaysGone(client: pg.Client): Promise<void> {
  for (let t = now(); now() - t < 10_000;) {
    const { rows } = await client.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE $1`, [
      `${GATEWAY_APP}%`,
    ]);
    if (rows[0]!.n === 0) return;
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------
// The poolers: direct, PgBouncer transaction, PgBouncer session

type Side = 'direct' | PoolMode;
const SIDES: readonly Side[] = ['direct', 'transaction', 'session'];

interface SideState {
  side: Side;
  gateway: TargetProcess;
  next: number;
  workout?: string;
  /** Every answer by "status code", warm-up included. */
  answers: Record<string, number>;
  /** Latencies of the correct answers (2xx, 404) in the measured rounds. */
  samples: number[];
  measuredMs: number;
}

export interface PoolerSide {
  side: Side;
  answers: Record<string, number>;
  fiveHundreds: number;
  fiveXx: number;
  rps: number;
  latencyMs: Latency;
  vsDirect: { rps: number; p50: number; p99: number };
  /** /stats pool after the load: what the pooler refused, the budget, the lanes. */
  refused?: RefusedFeatures;
  budget?: BudgetFigures;
  lanesOpened?: number;
}

/** `durationMs` of the mix on one side; `measure` keeps the latencies and the time. */
async function mixOn(s: SideState, users: string[], durationMs: number, measure: boolean): Promise<void> {
  const base = s.gateway.urls.url;
  const ms = await runMix({
    connections: POOLERS.clients,
    durationMs,
    next: () => {
      const call = fitnessCall(s.next++, users, s.workout);
      return {
        kind: call.kind,
        url: `${base}${call.path}`,
        method: call.method,
        ...(call.body === undefined ? {} : { body: JSON.stringify(call.body) }),
      };
    },
    onOutcome: (o) => {
      tally(s.answers, keyOf(o));
      if (o.kind === 'create-workout' && o.status === 201) s.workout = (o.body as { id: string }).id;
      if (measure && o.status !== undefined && (o.status < 300 || o.status === 404)) s.samples.push(o.endMs - o.startMs);
    },
  });
  if (measure) s.measuredMs += ms;
}

async function createUsers(base: string): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < MIX_USERS; i++) {
    const call = createUserCall(`User ${i}`);
    const res = await fetch(`${base}${call.path}`, {
      method: call.method,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(call.body),
    });
    if (res.status !== 201) throw new Error(`creating a user answered ${res.status}: ${await res.text()}`);
    ids.push(((await res.json()) as { id: string }).id);
  }
  return ids;
}

async function poolerRuns(log: (line: string) => void): Promise<{ server: string; sides: PoolerSide[] }> {
  const db = await createBenchDatabase(sourceDatabaseUrl(), { prefix: 'poolgate_scale_' });
  const bouncers: PgBouncer[] = [];
  const states: SideState[] = [];
  try {
    await prepareSchema(db.url);
    for (const side of SIDES) {
      let url = db.url;
      if (side !== 'direct') {
        const bouncer = await startPgBouncer(side, {}, db.url);
        bouncers.push(bouncer);
        url = bouncer.url(db.url);
      }
      const gateway = await launchTarget('gateway', {
        databaseUrl: url,
        applicationName: `poolgate-bench-scale-${side}`,
        poolMax: POOLERS.poolMax,
      });
      states.push({ side, gateway, next: 0, answers: {}, samples: [], measuredMs: 0 });
    }
    const users = await createUsers(states[0]!.gateway.urls.url);
    for (const s of states) await mixOn(s, users, POOLERS.warmupMs, false);
    for (let round = 0; round < POOLERS.rounds; round++) {
      for (let k = 0; k < states.length; k++) {
        const s = states[(round + k) % states.length]!;
        const before = s.samples.length;
        const measuredBefore = s.measuredMs;
        await mixOn(s, users, POOLERS.segmentMs, true);
        log(
          `round ${round + 1} ${s.side.padEnd(11)} ${(((s.samples.length - before) / (s.measuredMs - measuredBefore)) * 1000).toFixed(0)} req/s, ` +
            `5xx so far ${countWhere(s.answers, (key) => key.startsWith('5'))}`,
        );
      }
    }
    const stats = await Promise.all(states.map((s) => poolStats(s.gateway.urls.url)));
    const figures = states.map((s, i) => {
      const pool = stats[i];
      return {
        side: s.side,
        answers: s.answers,
        fiveHundreds: countWhere(s.answers, (k) => k.startsWith('500')),
        fiveXx: countWhere(s.answers, (k) => k.startsWith('5')),
        rps: (s.samples.length / s.measuredMs) * 1000,
        latencyMs: latencyOf(Float64Array.from(s.samples)),
        ...(pool?.refused ? { refused: pool.refused } : {}),
        ...(pool?.budget ? { budget: pool.budget } : {}),
        ...(pool?.pipeline ? { lanesOpened: pool.pipeline.openedCount } : {}),
      };
    });
    const direct = figures[0]!;
    return {
      server: db.server,
      sides: figures.map((f) => ({
        ...f,
        vsDirect: { rps: f.rps / direct.rps, p50: f.latencyMs.p50 / direct.latencyMs.p50, p99: f.latencyMs.p99 / direct.latencyMs.p99 },
      })),
    };
  } finally {
    await Promise.allSettled(states.map((s) => s.gateway.stop()));
    await Promise.allSettled(bouncers.map((b) => b.stop()));
    await db.drop().catch((err: unknown) => console.error(`scale: could not drop ${db.name}: ${(err as Error).message}`));
  }
}

// ---------------------------------------------------------------------------------------------
// Targets and the run

export interface ScaleTarget {
  target: string;
  measured: string;
  met: boolean;
}

function evaluate(floods: FloodFigures[], poolers: PoolerSide[] | undefined): ScaleTarget[] {
  const out: ScaleTarget[] = [];
  const auto = floods.find((f) => f.mode === 'auto');
  if (auto) {
    const fiveOhThree = countWhere(auto.answers, (k) => k.startsWith('503'));
    const refused = Object.values(auto.refused53300.serverLog).reduce((n, c) => n + c, 0);
    out.push(
      {
        target: 'flood with the budget: 0 × 503',
        measured: `${fiveOhThree} (answers ${JSON.stringify(auto.answers)})`,
        met: fiveOhThree === 0,
      },
      {
        target: 'flood with the budget: 0 × 53300',
        measured: `${refused} in the server log ${JSON.stringify(auto.refused53300.serverLog)}; /stats refusedCount ${auto.refused53300.budgetRefusedCount ?? '–'}`,
        met: refused === 0 && !auto.refused53300.budgetRefusedCount,
      },
      {
        target: 'flood with the budget: client backends never above limit − reserve',
        measured: `peak ${auto.backends.peak} (the operator's excluded) against ${auto.backends.limitLessReserve}, ${auto.backends.samples} samples`,
        met: auto.backends.peak <= auto.backends.limitLessReserve,
      },
      {
        target: 'flood with the budget: the operator always admitted',
        measured: `${auto.operator.admitted} of ${auto.operator.attempted}${Object.keys(auto.operator.refused).length ? ` (refused ${JSON.stringify(auto.operator.refused)})` : ''}`,
        met: auto.operator.attempted > 0 && auto.operator.admitted === auto.operator.attempted,
      },
    );
  }
  for (const p of poolers ?? []) {
    if (p.side === 'direct') continue;
    out.push({
      target: `PgBouncer ${p.side} mode, defaults: 0 × 500`,
      measured: `${p.fiveHundreds} × 500, ${p.fiveXx} × 5xx of ${Object.values(p.answers).reduce((n, c) => n + c, 0)}`,
      met: p.fiveHundreds === 0,
    });
  }
  return out;
}

export interface ScaleResult extends RunStamp {
  machine: BenchResults['machine'] & { loadAvg: { start: number[]; end: number[] } };
  flood: { settings: typeof FLOOD; runs: FloodFigures[] };
  poolers: { settings: typeof POOLERS; server: string; sides: PoolerSide[] } | { skipped: string };
  targets: ScaleTarget[];
}

const USAGE = `usage: npm run bench:scale
Four gateways (POOL_MAX 20) flooded on a private PostgreSQL with max_connections 40, POOL_BUDGET=off then
auto; then the fitness mix direct and through PgBouncer (transaction, session). About 2 minutes (there
is no quick pass). Writes bench/results/<date>-scale.json.`;

async function main(): Promise<number> {
  const mode = quickOrExit('scale', USAGE);
  if (typeof mode === 'number') return mode;
  if (mode === 'quick') {
    console.error(`scale: there is no quick pass\n${USAGE}`);
    return 2;
  }
  if (!privatePostgresAvailable) {
    console.error('scale: the flood needs a private cluster (/usr/lib/postgresql/15/bin, run as root or postgres)');
    return 2;
  }
  const startedAt = new Date();
  const loadAvgStart = os.loadavg();
  const log = (line: string) => console.log(`  ${line}`);
  const cleanups: (() => Promise<unknown>)[] = [];
  // Ctrl-C must not leave a postmaster behind: the cluster is no bench instance a later run would find.
  const onSignal = () => void Promise.allSettled(cleanups.map((c) => c())).then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  console.log(`scale: the flood (${FLOOD.gateways} gateways × ${FLOOD.reads} reads, ${FLOOD.concurrency} in flight each)`);
  const fc = await startFloodCluster();
  cleanups.push(() => fc.close());
  const floods: FloodFigures[] = [];
  try {
    for (const budget of ['off', 'auto'] as const) floods.push(await flood(fc, budget, log));
  } finally {
    await fc.close();
  }

  let poolers: ScaleResult['poolers'];
  if (pgBouncerMissing) poolers = { skipped: pgBouncerMissing };
  else {
    console.log(`scale: the poolers (${POOLERS.clients} clients, ${POOLERS.rounds} rounds × ${POOLERS.segmentMs / 1000} s per side)`);
    const p = await poolerRuns(log);
    poolers = { settings: POOLERS, ...p };
    for (const s of p.sides)
      log(
        `${s.side.padEnd(11)} ${s.rps.toFixed(0)} req/s (×${s.vsDirect.rps.toFixed(2)}), p50 ${s.latencyMs.p50.toFixed(2)} ms (×${s.vsDirect.p50.toFixed(2)}), ` +
          `p99 ${s.latencyMs.p99.toFixed(1)} ms (×${s.vsDirect.p99.toFixed(2)}); 5xx ${s.fiveXx}; refused ${JSON.stringify(s.refused ?? {})}`,
      );
  }

  const targets = evaluate(floods, 'sides' in poolers ? poolers.sides : undefined);
  for (const t of targets) console.log(`  ${t.met ? 'met   ' : 'MISSED'} ${t.target}: ${t.measured}`);
  const result: ScaleResult = {
    ...runStamp('full', startedAt),
    machine: { ...machine((await serverVersion()) ?? '?', undefined), loadAvg: { start: loadAvgStart, end: os.loadavg() } },
    flood: { settings: FLOOD, runs: floods },
    poolers,
    targets,
  };
  const dir = fileURLToPath(new URL('./results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${localDate(startedAt)}-scale.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(
    `scale: wrote ${file} (${result.durationSec.toFixed(0)} s; load average ${loadAvgStart[0]!.toFixed(1)} → ${os.loadavg()[0]!.toFixed(1)})`,
  );
  return 0;
}

async function serverVersion(): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: sourceDatabaseUrl(), connectionTimeoutMillis: 5_000 });
  try {
    await client.connect();
    return (await client.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v.split(' ')[0];
  } catch {
    return undefined;
  } finally {
    await client.end().catch(() => {});
  }
}

runIfMain(import.meta.url, main);
