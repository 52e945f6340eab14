/**
 * `npm run bench:replicas` (about 3 minutes; `-- --quick` about 1): issue 22, read replicas with
 * read-your-writes, on a private primary and two streaming standbys (test/helpers/private-replicas.ts:
 * PostgreSQL 15, `pg_basebackup -R -X stream`, lag made with recovery_min_apply_delay on both
 * standbys). The fitness app (bench/mixed-app.ts: with a slow and a CPU-bound read route of the
 * bench's own) is served by the Node gateway in a process of its own (bench/targets.ts), over real
 * HTTP, with DATABASE_REPLICA_URLS naming both standbys and every other setting at its default
 * (POOL_MAX 20, REPLICA_MAX_LAG_MS 5000, REPLICA_CHECK_INTERVAL_MS 500). Four parts:
 *
 * 1. **Read-your-writes under lag.** At an apply delay of 0, 1 s and 5 s, 16 clients each write
 *    (POST /api/users or POST /api/workouts, in turn) and then read what they wrote (GET of its id)
 *    carrying the write's Poolgate-Consistency token: a 404 there is a violation. Each read's server
 *    is counted (its Server-Timing `db` entry). Then, as a control, the same read without the token:
 *    a 404 there shows the lag was real. Once a write is older than the delay plus two looks, its
 *    client reads it once more with the token (a later read: tokens must not pin reads to the primary).
 * 2. **Token-less reads at 1 s lag** while writers keep writing: the share served by the replicas.
 * 3. **Read throughput, one primary and two replicas against the primary alone**: two gateways with
 *    the same settings (one without DATABASE_REPLICA_URLS) on the same primary, loaded one at a time
 *    in alternating rounds by the same closed loop; a read that waits on the server (pg_sleep: its
 *    capacity is its connections) and one that spends its CPU (an aggregate over a few hundred
 *    thousand rows). The CPU of each part of the system is read over the rounds, to say what limited it.
 * 4. **A standby stopped under reads**: readers all along; a standby stopped (`pg_ctl stop -m fast`),
 *    started again; every answer counted, and the time from its accepting connections to its next
 *    read served (the gateway's /stats).
 *
 * Everything is the bench's own and goes at the end (and on Ctrl-C): the gateways, the three
 * servers and their folders. Writes bench/results/<date>-replicas.json (`-quick` for `--quick`).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { PoolStats, ReplicaSetFigures } from '../src/db/types.js';
import { DEMO_USER_ID } from '../src/fitness/seed.js';
import { privatePostgresAvailable, privateTestDatabase } from '../test/helpers/private-postgres.js';
import { startReplicaSet, type ReplicaSet } from '../test/helpers/private-replicas.js';
import { quickOrExit, runIfMain } from './cli.js';
import { prepareSchema, WRITER_USER_ID } from './database.js';
import { createUserCall, createWorkoutCall, type FitnessCall } from './fitness-mix.js';
import { latencyOf, now, processTreeStats, runMix, sendRequest, type Latency, type MixOutcome } from './load.js';
import { AGGREGATE_PATH, AGGREGATE_SQL, AGGREGATE_TABLE_SQL, SLOW_PATH } from './mixed-app.js';
import { localDate, machine, runStamp, type BenchResults, type RunStamp } from './report.js';
import { launchTarget, type TargetProcess } from './targets.js';

const HEADER = 'poolgate-consistency';
const DB_NAME = 'poolgate_replicas_bench';
/** POOL_MAX's default, passed as every bench passes it. */
const POOL_MAX = 20;
/** REPLICA_CHECK_INTERVAL_MS's default: a later read waits for the delay and two looks past it. */
const CHECK_INTERVAL_MS = 500;
const REQUEST_TIMEOUT_MS = 10_000;

interface Plan {
  /** Write → read pairs over all the lag steps, split evenly. */
  pairs: number;
  pairClients: number;
  applyDelaysMs: readonly number[];
  /** A bound on each lag step, whatever its count. */
  stepBoundMs: number;
  tokenless: { applyDelayMs: number; writers: number; readers: number; leadMs: number; durationMs: number };
  throughput: {
    clients: number;
    rounds: number;
    segmentMs: number;
    /** Before each side's first round, and before each of its rounds (unmeasured: the replicas' looks go stale after 4 s without reads). */
    warmupMs: number;
    roundWarmupMs: number;
    sleepMs: number;
    aggregateRows: number;
  };
  failover: { cycles: number; readers: number; downMs: number };
}

const FULL: Plan = {
  pairs: 10_000,
  pairClients: 16,
  applyDelaysMs: [0, 1_000, 5_000],
  stepBoundMs: 40_000,
  tokenless: { applyDelayMs: 1_000, writers: 2, readers: 14, leadMs: 1_500, durationMs: 10_000 },
  throughput: { clients: 48, rounds: 3, segmentMs: 4_000, warmupMs: 1_500, roundWarmupMs: 500, sleepMs: 50, aggregateRows: 300_000 },
  failover: { cycles: 2, readers: 8, downMs: 1_000 },
};

const QUICK: Plan = {
  ...FULL,
  pairs: 1_500,
  stepBoundMs: 15_000,
  tokenless: { ...FULL.tokenless, durationMs: 4_000 },
  throughput: { ...FULL.throughput, rounds: 2, segmentMs: 2_000, warmupMs: 1_000 },
  failover: { ...FULL.failover, cycles: 1 },
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const tally = (into: Record<string, number>, key: string) => (into[key] = (into[key] ?? 0) + 1);
const answerKey = (o: MixOutcome) => (o.status === undefined ? `no answer: ${o.error ?? '?'}` : `${o.status}${o.code ? ` ${o.code}` : ''}`);
const sum = (t: Record<string, number>, match: (key: string) => boolean = () => true) =>
  Object.entries(t).reduce((n, [k, c]) => n + (match(k) ? c : 0), 0);
const onReplicas = (servedBy: Record<string, number>) => sum(servedBy, (k) => k.startsWith('replica-'));
const load1 = () => os.loadavg()[0]!;

/** One superuser statement on a server of the set (its own short connection). */
async function queryOnce<R extends pg.QueryResultRow>(url: string, sql: string, params?: unknown[]): Promise<R[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}

const primaryLsn = async (url: string) =>
  (await queryOnce<{ lsn: string }>(url, 'SELECT pg_current_wal_insert_lsn()::text AS lsn'))[0]!.lsn;

/** A server's postmaster pid (its data folder's postmaster.pid), for its processes' CPU. */
const postmasterPid = async (url: string) =>
  Number((await queryOnce<{ pid: string }>(url, `SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1) AS pid`))[0]!.pid);

interface GatewayStats {
  pool?: PoolStats;
  replicas?: ReplicaSetFigures;
}

async function gatewayStats(url: string): Promise<GatewayStats | undefined> {
  try {
    const res = await fetch(`${url}/stats`, { signal: AbortSignal.timeout(5_000) });
    return (await res.json()) as GatewayStats;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Reads counted: answers, the server each came from

interface ReadTally {
  answers: Record<string, number>;
  servedBy: Record<string, number>;
}

const readTally = (): ReadTally => ({ answers: {}, servedBy: {} });

function count(t: ReadTally, o: MixOutcome): void {
  tally(t.answers, answerKey(o));
  if (o.status !== undefined && o.status < 500) tally(t.servedBy, o.servedBy ?? 'unnamed');
}

/** The replicas' lag as /stats saw it, sampled while a part runs: the most and the last per replica, and looks that found one down. */
interface LagWatch {
  stop(): Promise<Record<string, { maxLagMs: number; lastLagMs: number; downSamples: number; samples: number }>>;
}

function watchLag(url: string, everyMs = 500): LagWatch {
  const seen: Record<string, { maxLagMs: number; lastLagMs: number; downSamples: number; samples: number }> = {};
  let on = true;
  const loop = (async () => {
    while (on) {
      for (const r of (await gatewayStats(url))?.replicas?.replicas ?? []) {
        const s = (seen[r.name] ??= { maxLagMs: 0, lastLagMs: 0, downSamples: 0, samples: 0 });
        s.samples++;
        s.maxLagMs = Math.max(s.maxLagMs, r.lagMs);
        s.lastLagMs = r.lagMs;
        if (!r.up) s.downSamples++;
      }
      await sleep(everyMs);
    }
  })();
  return {
    async stop() {
      on = false;
      await loop;
      return seen;
    },
  };
}

/** The gateway's own counts of where token reads went, as /stats has them (cumulative). */
function tokenCounts(s: GatewayStats | undefined) {
  const r = s?.replicas;
  return {
    tokensHonoured: r?.tokensHonoured ?? 0,
    onPrimaryToken: r?.onPrimary.token ?? 0,
    onPrimaryNoReplica: r?.onPrimary.noReplica ?? 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Part 1: read-your-writes under lag

export interface LagStep {
  applyDelayMs: number;
  pairs: number;
  wallMs: number;
  loadAvgAtStart: number;
  writes: Record<string, number>;
  /** 201s that carried no consistency token (each a defect: its read could not ask for it). */
  writesWithoutToken: number;
  /** The read right after the write, with its token: a 404 is a violation. */
  tokenReads: ReadTally & { violations: number };
  /** The same read without the token, right after: a 404 shows the write had not reached the server that served it. */
  controlReads: ReadTally & { stale: number };
  /** The write read once more with its token, once older than the delay plus two looks. */
  laterReads: ReadTally & { violations: number };
  /** /stats over the step: token reads a replica honoured, and reads the primary took for a token or for want of a replica. */
  gateway: ReturnType<typeof tokenCounts>;
  replicaLag: Awaited<ReturnType<LagWatch['stop']>>;
}

interface Written {
  url: string;
  token: string;
  at: number;
}

/** Write number `i` (a user or a workout, in turn); what to read back and its token, or undefined when it did not answer 201 with one. */
async function writeOne(base: string, i: number, step: LagStep, t0: number): Promise<Written | undefined> {
  const call: FitnessCall = i % 2 === 0 ? createUserCall('Replica') : createWorkoutCall(WRITER_USER_ID);
  const o = await sendRequest(
    { kind: call.kind, url: `${base}${call.path}`, method: 'POST', body: JSON.stringify(call.body) },
    t0,
    REQUEST_TIMEOUT_MS,
  );
  tally(step.writes, answerKey(o));
  if (o.status !== 201) return undefined;
  if (!o.consistency) {
    step.writesWithoutToken++;
    return undefined;
  }
  const id = (o.body as { id: string }).id;
  return { url: `${base}${call.kind === 'create-user' ? `/api/users/${id}` : `/api/workouts/${id}`}`, token: o.consistency, at: now() };
}

async function tokenRead(w: Written, into: ReadTally & { violations: number }, t0: number): Promise<void> {
  const o = await sendRequest({ kind: 'token-read', url: w.url, headers: { [HEADER]: w.token } }, t0, REQUEST_TIMEOUT_MS);
  count(into, o);
  if (o.status === 404) into.violations++;
}

/** One client of a lag step: write, read with the token, read without; later reads as writes come of age. */
async function pairClient(base: string, step: LagStep, tickets: { next: number; total: number }, until: number, t0: number) {
  const laterAfterMs = step.applyDelayMs + 2 * CHECK_INTERVAL_MS + 200;
  const waiting: Written[] = [];
  while (now() < until) {
    while (waiting.length && now() - waiting[0]!.at >= laterAfterMs) await tokenRead(waiting.shift()!, step.laterReads, t0);
    const i = tickets.next++;
    if (i >= tickets.total) return;
    const w = await writeOne(base, i, step, t0);
    if (!w) continue;
    await tokenRead(w, step.tokenReads, t0);
    step.pairs++;
    const control = await sendRequest({ kind: 'control-read', url: w.url }, t0, REQUEST_TIMEOUT_MS);
    count(step.controlReads, control);
    if (control.status === 404) step.controlReads.stale++;
    waiting.push(w);
  }
}

async function lagStep(b: Bench, applyDelayMs: number, pairs: number): Promise<LagStep> {
  await Promise.all(b.set.standbys.map((s) => s.setApplyDelay(applyDelayMs)));
  const base = b.replicated.urls.url;
  const step: LagStep = {
    applyDelayMs,
    pairs: 0,
    wallMs: 0,
    loadAvgAtStart: load1(),
    writes: {},
    writesWithoutToken: 0,
    tokenReads: { ...readTally(), violations: 0 },
    controlReads: { ...readTally(), stale: 0 },
    laterReads: { ...readTally(), violations: 0 },
    gateway: tokenCounts(undefined),
    replicaLag: {},
  };
  const before = tokenCounts(await gatewayStats(base));
  const lag = watchLag(base);
  const t0 = now();
  const tickets = { next: 0, total: pairs };
  await Promise.all(Array.from({ length: b.plan.pairClients }, () => pairClient(base, step, tickets, t0 + b.plan.stepBoundMs, t0)));
  step.wallMs = now() - t0;
  step.replicaLag = await lag.stop();
  const after = tokenCounts(await gatewayStats(base));
  step.gateway = {
    tokensHonoured: after.tokensHonoured - before.tokensHonoured,
    onPrimaryToken: after.onPrimaryToken - before.onPrimaryToken,
    onPrimaryNoReplica: after.onPrimaryNoReplica - before.onPrimaryNoReplica,
  };
  logLagStep(step, b.log);
  return step;
}

function logLagStep(s: LagStep, log: (line: string) => void): void {
  const lag = Object.entries(s.replicaLag)
    .map(([name, l]) => `${name} max ${l.maxLagMs} ms`)
    .join(', ');
  log(
    `apply delay ${s.applyDelayMs} ms: ${s.pairs} pairs in ${(s.wallMs / 1000).toFixed(1)} s (load ${s.loadAvgAtStart.toFixed(1)}); ` +
      `token reads ${JSON.stringify(s.tokenReads.answers)} from ${JSON.stringify(s.tokenReads.servedBy)}, VIOLATIONS ${s.tokenReads.violations}`,
  );
  log(
    `  control reads without the token: ${s.controlReads.stale} stale (404) of ${sum(s.controlReads.answers)}, from ${JSON.stringify(s.controlReads.servedBy)}; ` +
      `later token reads ${JSON.stringify(s.laterReads.answers)} from ${JSON.stringify(s.laterReads.servedBy)}, violations ${s.laterReads.violations}`,
  );
  log(
    `  writes ${JSON.stringify(s.writes)}${s.writesWithoutToken ? `, ${s.writesWithoutToken} without a token` : ''}; /stats: ${JSON.stringify(s.gateway)}; lag seen: ${lag}`,
  );
}

// ---------------------------------------------------------------------------------------------
// Part 2: token-less reads at 1 s lag, under writes

export interface TokenlessFigures {
  applyDelayMs: number;
  durationMs: number;
  loadAvgAtStart: number;
  reads: ReadTally;
  replicaShare: number;
  writes: Record<string, number>;
  /** Each writer reads its write back without the token: 404s show the lag was real. */
  writerControl: ReadTally & { stale: number };
  replicaLag: Awaited<ReturnType<LagWatch['stop']>>;
}

const TOKENLESS_PATHS = [`/api/users/${DEMO_USER_ID}`, `/api/users/${DEMO_USER_ID}/workouts?limit=5`, `/api/users/${DEMO_USER_ID}/summary`];

async function tokenless(b: Bench): Promise<TokenlessFigures> {
  const p = b.plan.tokenless;
  await Promise.all(b.set.standbys.map((s) => s.setApplyDelay(p.applyDelayMs)));
  const base = b.replicated.urls.url;
  const f: TokenlessFigures = {
    applyDelayMs: p.applyDelayMs,
    durationMs: p.durationMs,
    loadAvgAtStart: load1(),
    reads: readTally(),
    replicaShare: 0,
    writes: {},
    writerControl: { ...readTally(), stale: 0 },
    replicaLag: {},
  };
  const stopWriters = new AbortController();
  const t0 = now();
  const until = t0 + p.leadMs + p.durationMs + 5_000; // a bound: the readers' end stops them
  const writers = Promise.all(Array.from({ length: p.writers }, () => writerLoop(base, f, stopWriters.signal, until, t0)));
  await sleep(p.leadMs); // the lag is there before the first read
  const lag = watchLag(base);
  let i = 0;
  await runMix({
    connections: p.readers,
    durationMs: p.durationMs,
    next: () => ({ kind: 'read', url: `${base}${TOKENLESS_PATHS[i++ % TOKENLESS_PATHS.length]}` }),
    onOutcome: (o) => count(f.reads, o),
  });
  f.replicaLag = await lag.stop();
  stopWriters.abort();
  await writers;
  f.replicaShare = onReplicas(f.reads.servedBy) / Math.max(1, sum(f.reads.servedBy));
  b.log(
    `apply delay ${p.applyDelayMs} ms, ${p.writers} writers: token-less reads ${JSON.stringify(f.reads.answers)} from ${JSON.stringify(f.reads.servedBy)} ` +
      `(${(f.replicaShare * 100).toFixed(1)}% on replicas); writes ${JSON.stringify(f.writes)}, read back without the token: ${f.writerControl.stale} stale of ` +
      `${sum(f.writerControl.answers)}; lag seen ${JSON.stringify(Object.fromEntries(Object.entries(f.replicaLag).map(([n, l]) => [n, l.maxLagMs])))} ms`,
  );
  return f;
}

/** One writer: a workout written, then read back without its token (a 404: the lag is real), until stopped. */
async function writerLoop(base: string, f: TokenlessFigures, signal: AbortSignal, until: number, t0: number): Promise<void> {
  while (!signal.aborted && now() < until) {
    const call = createWorkoutCall(WRITER_USER_ID);
    const o = await sendRequest(
      { kind: call.kind, url: `${base}${call.path}`, method: 'POST', body: JSON.stringify(call.body) },
      t0,
      REQUEST_TIMEOUT_MS,
    );
    tally(f.writes, answerKey(o));
    if (o.status !== 201) continue;
    const back = await sendRequest(
      { kind: 'control-read', url: `${base}/api/workouts/${(o.body as { id: string }).id}` },
      t0,
      REQUEST_TIMEOUT_MS,
    );
    count(f.writerControl, back);
    if (back.status === 404) f.writerControl.stale++;
  }
}

// ---------------------------------------------------------------------------------------------
// Part 3: read throughput, primary + 2 replicas against the primary alone

type SideName = 'replicas' | 'primary-only';

interface SideState {
  side: SideName;
  gateway: TargetProcess;
  samples: number[];
  serverSamples: number[];
  measuredMs: number;
  answers: Record<string, number>;
  servedBy: Record<string, number>;
  cpuMs: CpuReading;
}

interface CpuReading {
  gateway: number;
  primary: number;
  standbys: number;
  load: number;
}

export interface ThroughputSide {
  side: SideName;
  rps: number;
  latencyMs: Latency;
  /** The gateway's own time per answer (Server-Timing `total`): the rest of the client's is HTTP and the load generator's lag. */
  serverMs: Latency;
  answers: Record<string, number>;
  servedBy: Record<string, number>;
  /** CPU over the measured rounds, as cores busy (CPU time ÷ wall time): the gateway, each server's processes, the load generator. */
  coresBusy: CpuReading & { total: number };
  /** Connections each server's pool held after the rounds (/stats), lanes included. */
  connections: Record<string, number>;
}

export interface ThroughputRoute {
  route: string;
  path: string;
  clients: number;
  loadAvgAtStart: number;
  sides: ThroughputSide[];
  /** req/s with the replicas ÷ req/s on the primary alone. */
  ratio: number;
}

interface Pids {
  primary: number;
  standbys: number[];
}

function cpuNow(gateway: TargetProcess, pids: Pids): CpuReading {
  const tree = (pid: number) => processTreeStats(pid)?.cpuMs ?? 0;
  const own = process.cpuUsage();
  return {
    gateway: tree(gateway.pid),
    primary: tree(pids.primary),
    standbys: pids.standbys.reduce((n, pid) => n + tree(pid), 0),
    load: (own.user + own.system) / 1000,
  };
}

async function segment(s: SideState, url: string, clients: number, durationMs: number, pids: Pids | undefined): Promise<void> {
  const before = pids && cpuNow(s.gateway, pids);
  const ms = await runMix({
    connections: clients,
    durationMs,
    next: () => ({ kind: 'read', url: `${s.gateway.urls.url}${url}` }),
    onOutcome: (o) => {
      if (!pids) return;
      tally(s.answers, answerKey(o));
      if (o.status === 200) {
        s.samples.push(o.endMs - o.startMs);
        if (o.serverMs !== undefined) s.serverSamples.push(o.serverMs);
        tally(s.servedBy, o.servedBy ?? 'unnamed');
      }
    },
  });
  if (!pids || !before) return;
  s.measuredMs += ms;
  const after = cpuNow(s.gateway, pids);
  for (const k of Object.keys(after) as (keyof CpuReading)[]) s.cpuMs[k] += after[k] - before[k];
}

/** Connections open per server in a gateway's /stats: the primary's pool and lanes, and each replica's. */
function connectionsOf(stats: GatewayStats | undefined): Record<string, number> {
  const held = (p: PoolStats | undefined) => (p?.total ?? 0) + (p?.pipeline?.lanes ?? 0);
  return {
    primary: held(stats?.pool),
    ...Object.fromEntries((stats?.replicas?.replicas ?? []).map((r) => [r.name, held(r.pool)])),
  };
}

async function throughputRoute(b: Bench, gateways: TargetProcess[], route: string, path: string, pids: Pids): Promise<ThroughputRoute> {
  const p = b.plan.throughput;
  const states: SideState[] = gateways.map((gateway, i) => ({
    side: i === 0 ? 'replicas' : 'primary-only',
    gateway,
    samples: [],
    serverSamples: [],
    measuredMs: 0,
    answers: {},
    servedBy: {},
    cpuMs: { gateway: 0, primary: 0, standbys: 0, load: 0 },
  }));
  const loadAvgAtStart = load1();
  for (const s of states) await segment(s, path, p.clients, p.warmupMs, undefined);
  for (let round = 0; round < p.rounds; round++)
    for (let k = 0; k < states.length; k++) {
      const s = states[(round + k) % states.length]!;
      await segment(s, path, p.clients, p.roundWarmupMs, undefined);
      await segment(s, path, p.clients, p.segmentMs, pids);
    }
  const sides = await Promise.all(states.map(async (s) => sideFigures(s)));
  const ratio = sides[0]!.rps / sides[1]!.rps;
  for (const s of sides)
    b.log(
      `${route}, ${s.side.padEnd(12)}: ${s.rps.toFixed(0)} req/s, p50 ${s.latencyMs.p50.toFixed(1)} / p99 ${s.latencyMs.p99.toFixed(1)} ms ` +
        `(at the gateway ${s.serverMs.p50.toFixed(1)} / ${s.serverMs.p99.toFixed(1)}), ` +
        `answers ${JSON.stringify(s.answers)} from ${JSON.stringify(s.servedBy)}; cores busy: gateway ${s.coresBusy.gateway.toFixed(2)}, primary ${s.coresBusy.primary.toFixed(2)}, ` +
        `standbys ${s.coresBusy.standbys.toFixed(2)}, load ${s.coresBusy.load.toFixed(2)} (total ${s.coresBusy.total.toFixed(2)}); connections ${JSON.stringify(s.connections)}`,
    );
  b.log(`${route}: replicas ÷ primary alone = ${ratio.toFixed(2)}×`);
  return { route, path, clients: p.clients, loadAvgAtStart, sides, ratio };
}

async function sideFigures(s: SideState): Promise<ThroughputSide> {
  const cores = (ms: number) => ms / s.measuredMs;
  const c = s.cpuMs;
  return {
    side: s.side,
    rps: (s.samples.length / s.measuredMs) * 1000,
    latencyMs: latencyOf(Float64Array.from(s.samples)),
    serverMs: latencyOf(Float64Array.from(s.serverSamples)),
    answers: s.answers,
    servedBy: s.servedBy,
    coresBusy: {
      gateway: cores(c.gateway),
      primary: cores(c.primary),
      standbys: cores(c.standbys),
      load: cores(c.load),
      total: cores(c.gateway + c.primary + c.standbys + c.load),
    },
    connections: connectionsOf(await gatewayStats(s.gateway.urls.url)),
  };
}

/**
 * The aggregate alone, one at a time, on the primary and on a standby in turn: the median ms of
 * `runs` each. What one query costs on each server, without the load.
 */
async function aggregateSoloMs(b: Bench, runs = 15): Promise<Record<string, number>> {
  const servers = { primary: b.primaryUrl, 'replica-1': b.replicaUrls[0]! };
  const clients = Object.values(servers).map((url) => new pg.Client({ connectionString: url }));
  const times: number[][] = clients.map(() => []);
  try {
    await Promise.all(clients.map((c) => c.connect()));
    for (let i = 0; i < runs; i++)
      for (const [k, c] of clients.entries()) {
        const t = now();
        await c.query(AGGREGATE_SQL, [0]);
        times[k]!.push(now() - t);
      }
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
  return Object.fromEntries(Object.keys(servers).map((name, k) => [name, latencyOf(Float64Array.from(times[k]!)).p50]));
}

async function throughput(b: Bench): Promise<{ routes: ThroughputRoute[]; aggregateSoloMs: Record<string, number> }> {
  const p = b.plan.throughput;
  await Promise.all(b.set.standbys.map((s) => s.setApplyDelay(0)));
  const soloMs = await aggregateSoloMs(b);
  b.log(
    `the aggregate alone, one at a time (median ms): ${JSON.stringify(soloMs, (_k, v: unknown) => (typeof v === 'number' ? Number(v.toFixed(1)) : v))}`,
  );
  const alone = await launchGateway(b.primaryUrl, undefined);
  try {
    const pids: Pids = {
      primary: await postmasterPid(b.set.primary.url()),
      standbys: await Promise.all(b.set.standbys.map((s) => postmasterPid(s.url()))),
    };
    const gateways = [b.replicated, alone];
    const routes = [
      await throughputRoute(b, gateways, `pg_sleep ${p.sleepMs} ms`, `${SLOW_PATH}?ms=${p.sleepMs}`, pids),
      await throughputRoute(b, gateways, `aggregate over ${p.aggregateRows.toLocaleString('en')} rows`, AGGREGATE_PATH, pids),
    ];
    return { routes, aggregateSoloMs: soloMs };
  } finally {
    await alone.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Part 4: a standby stopped under reads

export interface FailoverCycle {
  replica: string;
  /** /stats said it was down while it was stopped. */
  seenDown: boolean;
  /** From its accepting connections again to the gateway's first read served there (ms); undefined: not within 10 s. */
  backInMs?: number;
}

export interface FailoverFigures {
  loadAvgAtStart: number;
  reads: ReadTally;
  errors: number;
  cycles: FailoverCycle[];
}

const servedCount = async (base: string, name: string) =>
  (await gatewayStats(base))?.replicas?.replicas.find((r) => r.name === name)?.servedCount ?? -1;

async function stopAndStart(b: Bench, n: number): Promise<FailoverCycle> {
  const base = b.replicated.urls.url;
  const standby = b.set.standbys[n]!;
  const replica = `replica-${n + 1}`;
  await sleep(1_000);
  await standby.stop();
  await sleep(b.plan.failover.downMs);
  const seenDown = (await gatewayStats(base))?.replicas?.replicas.find((r) => r.name === replica)?.up === false;
  await standby.start();
  const back = await standby.acceptsConnections();
  const served = await servedCount(base, replica);
  while (now() - back < 10_000) {
    if ((await servedCount(base, replica)) > served) return { replica, seenDown, backInMs: now() - back };
    await sleep(20);
  }
  return { replica, seenDown };
}

async function failover(b: Bench): Promise<FailoverFigures> {
  const p = b.plan.failover;
  await Promise.all(b.set.standbys.map((s) => s.setApplyDelay(0)));
  const base = b.replicated.urls.url;
  const f: FailoverFigures = { loadAvgAtStart: load1(), reads: readTally(), errors: 0, cycles: [] };
  const stop = new AbortController();
  const readers = runMix({
    connections: p.readers,
    durationMs: 120_000, // a bound: the cycles' end stops them
    signal: stop.signal,
    next: () => ({ kind: 'read', url: `${base}/api/users/${DEMO_USER_ID}` }),
    onOutcome: (o) => {
      count(f.reads, o);
      if (o.status !== 200) f.errors++;
    },
  });
  try {
    for (let c = 0; c < p.cycles; c++) f.cycles.push(await stopAndStart(b, c % b.set.standbys.length));
    await sleep(500);
  } finally {
    stop.abort();
    await readers;
  }
  b.log(
    `standby stopped under reads: ${JSON.stringify(f.reads.answers)} from ${JSON.stringify(f.reads.servedBy)}; ` +
      f.cycles
        .map(
          (c) =>
            `${c.replica} ${c.seenDown ? 'seen down' : 'NOT seen down'}, back ${c.backInMs?.toFixed(0) ?? 'never (10 s)'} ms after it accepted connections`,
        )
        .join('; '),
  );
  return f;
}

// ---------------------------------------------------------------------------------------------
// Set-up, targets and the run

interface Bench {
  plan: Plan;
  set: ReplicaSet;
  primaryUrl: string;
  replicaUrls: string[];
  replicated: TargetProcess;
  log: (line: string) => void;
}

function launchGateway(primaryUrl: string, replicaUrls: string[] | undefined): Promise<TargetProcess> {
  return launchTarget('gateway', {
    databaseUrl: primaryUrl,
    applicationName: replicaUrls ? 'poolgate-bench-replicas' : 'poolgate-bench-primary-only',
    poolMax: POOL_MAX,
    env: replicaUrls ? { DATABASE_REPLICA_URLS: replicaUrls.join(',') } : {},
    appModule: new URL('./mixed-app.ts', import.meta.url).href,
  });
}

/** The schema, the demo data and the aggregate's table on the primary, replayed by both standbys; the aggregate's plan there. */
async function prepareData(set: ReplicaSet, url: string, rows: number): Promise<string[]> {
  await prepareSchema(url);
  for (const sql of AGGREGATE_TABLE_SQL(rows)) await queryOnce(url, sql);
  const lsn = await primaryLsn(url);
  await Promise.all(set.standbys.map((s) => s.caughtUpTo(lsn, 30_000)));
  const plan = await queryOnce<{ 'QUERY PLAN': string }>(url, `EXPLAIN (COSTS OFF) ${AGGREGATE_SQL}`, [0]);
  return plan.map((r) => r['QUERY PLAN']);
}

/** Until the gateway's /stats has every replica up (its reads start the looks). */
async function replicasUp(url: string, timeoutMs = 20_000): Promise<void> {
  const t = now();
  while (now() - t < timeoutMs) {
    await fetch(`${url}/api/users/${DEMO_USER_ID}`).then((r) => r.arrayBuffer());
    const replicas = (await gatewayStats(url))?.replicas?.replicas;
    if (replicas?.length && replicas.every((r) => r.up)) return;
    await sleep(100);
  }
  throw new Error(`the gateway did not see its replicas up within ${timeoutMs} ms`);
}

export interface ReplicaTarget {
  target: string;
  measured: string;
  met: boolean;
}

function evaluate(plan: Plan, steps: LagStep[], t: TokenlessFigures, tp: ThroughputRoute[], f: FailoverFigures): ReplicaTarget[] {
  const pairs = steps.reduce((n, s) => n + s.pairs, 0);
  const violations = steps.reduce((n, s) => n + s.tokenReads.violations + s.laterReads.violations, 0);
  const laterReads = steps.reduce((n, s) => n + sum(s.laterReads.answers), 0);
  const tokenErrors = steps.reduce((n, s) => n + sum(s.tokenReads.answers, (k) => !/^(200|404)$/.test(k)), 0);
  return [
    {
      target: `read-your-writes: 0 violations over ${plan.pairs.toLocaleString('en')} write → read pairs (delays ${plan.applyDelaysMs.join(' / ')} ms, ${plan.pairClients} clients)`,
      measured: `${violations} violations in ${pairs} pairs and ${laterReads} later token reads; ${tokenErrors} token reads not answered 200/404`,
      met: violations === 0 && tokenErrors === 0 && pairs >= plan.pairs,
    },
    {
      target: `token-less reads at ${t.applyDelayMs} ms lag: ≥ 80% on replicas`,
      measured: `${(t.replicaShare * 100).toFixed(1)}% (${onReplicas(t.reads.servedBy)} of ${sum(t.reads.servedBy)})`,
      met: t.replicaShare >= 0.8,
    },
    ...tp.map((r) => ({
      target: `read throughput, ${r.route}: primary + 2 replicas ≥ 1.8× the primary alone`,
      measured: `${r.ratio.toFixed(2)}× (${r.sides.map((s) => `${s.side} ${s.rps.toFixed(0)} req/s`).join(', ')}; ${r.clients} clients)`,
      met: r.ratio >= 1.8,
    })),
    {
      target: 'a standby stopped under reads: 0 errors',
      measured: `${f.errors} of ${sum(f.reads.answers)} reads (${JSON.stringify(f.reads.answers)})`,
      met: f.errors === 0,
    },
    {
      target: 'a standby stopped: serves again within 2 s of accepting connections',
      measured: f.cycles.map((c) => `${c.replica} ${c.backInMs === undefined ? 'never (10 s)' : `${c.backInMs.toFixed(0)} ms`}`).join(', '),
      met: f.cycles.length > 0 && f.cycles.every((c) => c.backInMs !== undefined && c.backInMs <= 2_000),
    },
  ];
}

export interface ReplicasResult extends RunStamp {
  machine: BenchResults['machine'] & { loadAvg: { start: number[]; end: number[] } };
  plan: Plan;
  servers: string;
  readYourWrites: LagStep[];
  tokenless: TokenlessFigures;
  throughput: ThroughputRoute[];
  /** The CPU-bound read: its EXPLAIN on the primary (the standbys have the same table and settings), and its median time alone on each server. */
  aggregate: { plan: string[]; soloMs: Record<string, number> };
  failover: FailoverFigures;
  targets: ReplicaTarget[];
}

const USAGE = `usage: npm run bench:replicas [-- --quick]
A private primary with two streaming standbys behind the Node gateway: read-your-writes at 0 / 1 / 5 s of
apply delay (10,000 pairs), token-less reads at 1 s, read throughput against the primary alone, a standby
stopped under reads. About 3 minutes (--quick: about 1). Writes bench/results/<date>-replicas.json.`;

async function runParts(b: Bench) {
  console.log(`replicas: read-your-writes (${b.plan.pairs} pairs, ${b.plan.pairClients} clients)`);
  const steps: LagStep[] = [];
  const perStep = Math.ceil(b.plan.pairs / b.plan.applyDelaysMs.length);
  for (const ms of b.plan.applyDelaysMs) steps.push(await lagStep(b, ms, perStep));
  console.log('replicas: token-less reads under writes');
  const t = await tokenless(b);
  console.log(`replicas: read throughput (${b.plan.throughput.clients} clients, ${b.plan.throughput.rounds} rounds per side)`);
  const tp = await throughput(b);
  console.log('replicas: a standby stopped under reads');
  const f = await failover(b);
  return { steps, t, tp, f };
}

async function main(): Promise<number> {
  const mode = quickOrExit('replicas', USAGE);
  if (typeof mode === 'number') return mode;
  if (!privatePostgresAvailable) {
    console.error('replicas: needs private clusters (/usr/lib/postgresql/15/bin, run as root or postgres)');
    return 2;
  }
  const plan = mode === 'quick' ? QUICK : FULL;
  const startedAt = new Date();
  const loadAvgStart = os.loadavg();
  const log = (line: string) => console.log(`  ${line}`);
  const cleanups: (() => Promise<unknown>)[] = [];
  // Ctrl-C must not leave three postmasters behind.
  let cleaning: Promise<unknown> | undefined;
  const cleanUp = () => (cleaning ??= cleanups.reduceRight((p, c) => p.then(c).catch(() => {}), Promise.resolve() as Promise<unknown>));
  const onSignal = () => void cleanUp().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const set = await startReplicaSet({ standbys: 2 });
    cleanups.push(() => set.destroy());
    const db = await privateTestDatabase(set.primary, DB_NAME);
    cleanups.push(() => db.drop());
    const aggregatePlan = await prepareData(set, db.url, plan.throughput.aggregateRows);
    log(`the aggregate's plan: ${aggregatePlan.map((l) => l.trim()).join(' / ')}`);
    const replicaUrls = set.standbys.map((s) => s.url(DB_NAME));
    const replicated = await launchGateway(db.url, replicaUrls);
    cleanups.push(() => replicated.stop());
    await replicasUp(replicated.urls.url);
    const { steps, t, tp, f } = await runParts({ plan, set, primaryUrl: db.url, replicaUrls, replicated, log });
    const targets = evaluate(plan, steps, t, tp.routes, f);
    for (const x of targets) console.log(`  ${x.met ? 'met   ' : 'MISSED'} ${x.target}: ${x.measured}`);
    const version = (await queryOnce<{ v: string }>(db.url, "SELECT current_setting('server_version') AS v"))[0]!.v.split(' ')[0]!;
    const result: ReplicasResult = {
      ...runStamp(mode, startedAt),
      machine: { ...machine(version, undefined), loadAvg: { start: loadAvgStart, end: os.loadavg() } },
      plan,
      servers:
        'a private PostgreSQL primary and 2 streaming standbys (pg_basebackup -R -X stream, a physical slot each; trust auth, fsync off, hot_standby_feedback on), loopback',
      readYourWrites: steps,
      tokenless: t,
      throughput: tp.routes,
      aggregate: { plan: aggregatePlan, soloMs: tp.aggregateSoloMs },
      failover: f,
      targets,
    };
    const dir = fileURLToPath(new URL('./results/', import.meta.url));
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${localDate(startedAt)}-replicas${mode === 'quick' ? '-quick' : ''}.json`);
    writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
    console.log(
      `replicas: wrote ${file} (${result.durationSec.toFixed(0)} s; load average ${loadAvgStart[0]!.toFixed(1)} → ${load1().toFixed(1)})`,
    );
    return 0;
  } finally {
    await cleanUp();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

runIfMain(import.meta.url, main);
