/**
 * `npm run bench:cache` (6–10 minutes on two busy cores; `-- --quick` about 2; BENCH_PAIRS=<n> sets part 2's
 * count): issue 23, the read cache, measured through the edge. The worker bundle runs in real
 * workerd (miniflare), reads through the local Neon proxy from real PostgreSQL (a scratch database
 * on BENCH_DATABASE_URL / DATABASE_URL / 127.0.0.1:5432), and forwards writes, signed, to the Node
 * gateway in a process of its own (bench/targets.ts). Two such stacks, each on a database of its own:
 *
 *   cache on:  gateway (CACHE on) ◀─ edge A (the writer's isolate), edge B (the second reader's)
 *              and edge C (the writer's reads elsewhere): each a miniflare of its own (its own
 *              isolate and caches.default), CACHE_MAX_STALENESS_MS at its default (1 s)
 *   cache off: gateway (CACHE=off) ◀─ edge OFF (CACHE=off); its database's bump triggers are
 *              switched on or off per round (ALTER TABLE … ENABLE / DISABLE TRIGGER)
 *
 * Four parts:
 * 1. **Hit latency.** One request at a time, GET /api/users/:id on edge A served from the cache
 *    (Cache-Status `hit`), the same with `Cache-Control: no-cache` (loaded from the database: the
 *    miss) and the same on edge OFF (no cache at all), interleaved. The figure is the `total`
 *    entry of the answer's Server-Timing (the edge app's own time in workerd); the client's round
 *    trip is printed beside it. Then the hit rate under a read-mostly mix (1% writes through edge A;
 *    reads split between A and B, 80% of them on a tenth of the users).
 * 2. **The writer's reads.** Write → read pairs (default 10,000), 16 writers in parallel, each on a
 *    user of its own: PATCH /api/users/:id/preferences through edge A (forwarded), then GET
 *    /api/users/:id on edge A with the write's Poolgate-Consistency token. A read that does not
 *    show the value just written is stale. Every 4th pair reads on edge C with the token too: an
 *    isolate that forwarded no write, where only the token can tell its view is too old.
 * 3. **Staleness for everyone else.** Meanwhile one poller per writer's user reads it from edge B
 *    without a token every POLL_MS. For each write: the time from its answer reaching the writer
 *    (commit is before that: a lower bound on the true staleness) and from its send (commit is
 *    after that: an upper bound) to the first poll answer showing it or a later write. A poll
 *    answer arrives at most POLL_MS + one read after the moment B could first have shown it.
 * 4. **What a write costs.** PATCH through the edge in a closed loop, in rotating rounds: cache on
 *    (edge A); CACHE=off with the bump triggers in place; CACHE=off without them.
 *
 * Everything is the bench's own and goes at the end (and on Ctrl-C). Writes
 * bench/results/<date>-cache.json (`-quick` for `--quick`).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Miniflare } from 'miniflare';
import pg from 'pg';
import { buildWorker } from '../src/local/build.js';
import { startNeonProxy } from '../src/local/neon-proxy/index.js';
import { createMiniflare, workerdWorker } from '../src/local/workerd.js';
import { quickOrExit, runIfMain } from './cli.js';
import { createBenchDatabase, sourceDatabaseUrl, type BenchDatabase } from './database.js';
import { latencyOf, now, serverTotalMs, type Latency } from './load.js';
import { localDate, machine, runStamp, type BenchResults, type RunStamp } from './report.js';
import { launchTarget, type TargetProcess } from './targets.js';

const TOKEN_HEADER = 'poolgate-consistency';
const OPS_TOKEN = 'bench-cache-ops-token-0123456789';
const POOL_MAX = 10;
const REQUEST_TIMEOUT_MS = 15_000;
/** CACHE_MAX_STALENESS_MS's default, which edge B runs with: part 3's bound. */
const MAX_STALENESS_MS = 1_000;

interface Plan {
  /** The whole run's bound: parts stop early (and say so) once it has passed. */
  boundMs: number;
  hit: { users: number; samples: number };
  mix: { users: number; hotUsers: number; hotShare: number; clients: number; requests: number; writeShare: number };
  pairs: { count: number; writers: number; pollMs: number; boundMs: number };
  cost: { clients: number; rounds: number; segmentMs: number; warmupMs: number };
}

const FULL: Plan = {
  boundMs: 10 * 60_000,
  hit: { users: 50, samples: 1_000 },
  mix: { users: 100, hotUsers: 10, hotShare: 0.8, clients: 16, requests: 6_000, writeShare: 0.01 },
  pairs: { count: 10_000, writers: 16, pollMs: 25, boundMs: 7 * 60_000 },
  cost: { clients: 8, rounds: 3, segmentMs: 5_000, warmupMs: 1_000 },
};

const QUICK: Plan = {
  boundMs: 3 * 60_000,
  hit: { users: 20, samples: 300 },
  mix: { ...FULL.mix, requests: 1_500 },
  pairs: { ...FULL.pairs, count: 1_000, boundMs: 60_000 },
  cost: { ...FULL.cost, rounds: 2, segmentMs: 2_000, warmupMs: 500 },
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const load1 = () => os.loadavg()[0]!;
const tally = (into: Record<string, number>, key: string) => (into[key] = (into[key] ?? 0) + 1);
const sum = (t: Record<string, number>) => Object.values(t).reduce((a, b) => a + b, 0);
const fmt = (ms: number) => (Number.isFinite(ms) ? (ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0)) : '–');
const pct = (l: Latency) => `p50 ${fmt(l.p50)} / p99 ${fmt(l.p99)} ms`;
const pctMean = (l: Latency) => `p50 ${fmt(l.p50)} / p99 ${fmt(l.p99)} / mean ${l.mean.toFixed(2)} ms`;

/** mulberry32: the same mix every run. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------------------------------------
// One request, its answer read whole

interface Answer {
  status?: number;
  /** The client's round trip. */
  ms: number;
  /** When the answer had fully arrived (now()). */
  at: number;
  /** Server-Timing `total`: the edge app's own time. */
  serverMs?: number;
  /** What Cache-Status says the cache did: hit, stale, miss, invalidated, request, bypass (none: no header). */
  cache: string;
  token?: string;
  body?: { preferences?: { weeklyGoal?: number | null } };
  error?: string;
}

/** `poolgate; hit; ttl=12` → hit, `ttl=-3` → stale, `fwd=stale` → invalidated, `fwd=miss` → miss, … */
export function cacheResult(header: string | null): string {
  if (!header) return 'none';
  const m = /^poolgate; (?:hit; ttl=(-?)\d+|fwd=(\w+))/.exec(header);
  if (!m) return 'other';
  if (m[2] === undefined) return m[1] ? 'stale' : 'hit';
  return m[2] === 'stale' ? 'invalidated' : m[2];
}

async function call(url: string, init: { method?: string; headers?: Record<string, string>; json?: unknown } = {}): Promise<Answer> {
  const t0 = now();
  try {
    const res = await fetch(url, {
      method: init.method ?? 'GET',
      headers: { ...(init.json === undefined ? {} : { 'content-type': 'application/json' }), ...init.headers },
      ...(init.json === undefined ? {} : { body: JSON.stringify(init.json) }),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    const text = await res.text();
    const at = now();
    let body: Answer['body'];
    try {
      body = JSON.parse(text) as Answer['body'];
    } catch {
      body = undefined;
    }
    const serverMs = serverTotalMs(res.headers.get('server-timing'));
    return {
      status: res.status,
      ms: at - t0,
      at,
      ...(serverMs === undefined ? {} : { serverMs }),
      cache: cacheResult(res.headers.get('cache-status')),
      token: res.headers.get(TOKEN_HEADER) ?? undefined,
      body,
      ...(res.ok ? {} : { error: text.slice(0, 300) }),
    };
  } catch (err) {
    const at = now();
    return { ms: at - t0, at, cache: 'none', error: (err as Error).message };
  }
}

/** `200`, `500 internal`, `no answer: …`: the status and, for an error, its `error.code`. */
function answerKey(a: Answer): string {
  if (a.status === undefined) return `no answer: ${a.error ?? '?'}`;
  if (a.status < 400) return String(a.status);
  const code = /"code":"([^"]+)"/.exec(a.error ?? '')?.[1];
  return code ? `${a.status} ${code}` : String(a.status);
}
const patch = (edge: string, user: string, weeklyGoal: number) =>
  call(`${edge}/api/users/${user}/preferences`, { method: 'PATCH', json: { weeklyGoal } });

// ---------------------------------------------------------------------------------------------
// The topology

interface Stack {
  db: BenchDatabase;
  admin: pg.Pool;
  gateway: TargetProcess;
  proxyUrl: string;
  forwardSecret: string;
}

interface Bench {
  plan: Plan;
  deadline: number;
  on: Stack;
  off: Stack;
  /** Edge A (the writer's), B (the second reader's), C (the writer's reads elsewhere), OFF (CACHE=off on the other stack). */
  edges: { a: string; b: string; c: string; off: string };
  users: { hit: string[]; mix: string[]; pairs: string[]; cost: string[] };
  workerdLogs: string[];
  log(line: string): void;
}

type Cleanups = (() => Promise<unknown>)[];

async function startStack(
  sourceUrl: string,
  side: 'on' | 'off',
  cleanups: Cleanups,
  logs: string[],
): Promise<Omit<Stack, 'proxyUrl'> & { proxy: () => Promise<string> }> {
  const db = await createBenchDatabase(sourceUrl, { prefix: `poolgate_cache_${side}_` });
  cleanups.push(() => db.drop());
  const forwardSecret = randomBytes(32).toString('base64url');
  // The gateway migrates the database as it starts: the fitness schema and the bump triggers.
  const gateway = await launchTarget('gateway', {
    databaseUrl: db.url,
    applicationName: `poolgate-bench-cache-${side}`,
    poolMax: POOL_MAX,
    env: { FORWARD_SECRET: forwardSecret, OPS_TOKEN, CACHE: side === 'on' ? 'on' : 'off' },
  });
  cleanups.push(() => gateway.stop());
  const admin = new pg.Pool({ connectionString: db.url, max: 2, application_name: 'poolgate-bench-cache-admin' });
  admin.on('error', () => {});
  cleanups.push(() => admin.end());
  return {
    db,
    admin,
    gateway,
    forwardSecret,
    proxy: async () => {
      const proxy = await startNeonProxy({ databaseUrls: [db.url], port: 0, host: '127.0.0.1', log: (line) => logs.push(line) });
      cleanups.push(() => proxy.close());
      return proxy.url;
    },
  };
}

async function startEdge(name: string, bundlePath: string, bindings: Record<string, string>, cleanups: Cleanups, logs: string[]) {
  // ownsSignals: miniflare's own Ctrl-C handler would exit at once, before the databases are dropped.
  const mf: Miniflare = createMiniflare(
    {
      host: '127.0.0.1',
      port: 0,
      handleStructuredLogs: ({ message }) => void logs.push(`[${name}] ${message}`),
      workers: [workerdWorker(name, bundlePath, bindings)],
    },
    { ownsSignals: true },
  );
  cleanups.push(() => mf.dispose());
  return (await mf.ready).origin.replace(/\/$/, '');
}

const edgeEnv = (s: Stack, cache: boolean): Record<string, string> => ({
  DATABASE_URL: s.db.url,
  NEON_PROXY_URL: s.proxyUrl,
  NODE_FUNCTION_URL: s.gateway.urls.url,
  FORWARD_SECRET: s.forwardSecret,
  OPS_TOKEN,
  CACHE: cache ? 'on' : 'off',
});

/** Users with preferences (weekly goal 0), inserted with pg on both databases. */
async function insertUsers(stacks: Stack[], ids: string[]): Promise<void> {
  for (const s of stacks) {
    await s.admin.query(
      `INSERT INTO users (id, email, name) SELECT id, id::text || '@bench.poolgate.dev', 'Cache Bench' FROM unnest($1::uuid[]) AS id`,
      [ids],
    );
    await s.admin.query(`INSERT INTO user_preferences (user_id, units, weekly_goal) SELECT id, 'metric', 0 FROM unnest($1::uuid[]) AS id`, [
      ids,
    ]);
  }
}

/** The bump triggers of the cache-off stack's database on or off (the gateway installed them as it migrated). */
async function setTriggers(s: Stack, enabled: boolean): Promise<number> {
  const { rows } = await s.admin.query<{ tbl: string; name: string }>(
    `SELECT tgrelid::regclass::text AS tbl, tgname AS name FROM pg_trigger WHERE tgname IN ('poolgate_cache', 'poolgate_cache_truncate')`,
  );
  for (const r of rows) await s.admin.query(`ALTER TABLE ${r.tbl} ${enabled ? 'ENABLE' : 'DISABLE'} TRIGGER ${r.name}`);
  return rows.length;
}

// ---------------------------------------------------------------------------------------------
// Part 1: hit latency and hit rate

interface Timed {
  /** Server-Timing total (the edge's own time). */
  server: Latency;
  client: Latency;
  count: number;
}

const timedOf = (server: number[], client: number[]): Timed => ({
  server: latencyOf(Float64Array.from(server)),
  client: latencyOf(Float64Array.from(client)),
  count: client.length,
});

export interface HitFigures {
  loadAvgAtStart: number;
  /** Edge A, answered from the cache (Cache-Status hit). */
  hit: Timed;
  /** Edge A with Cache-Control: no-cache (loaded from the database, then stored). */
  noCache: Timed;
  /** Edge OFF (CACHE=off): the route without any cache. */
  cacheOff: Timed;
  /** Edge A's GET /health (no I/O): the client → workerd hop and the app's own per-request work. */
  floor: Timed;
  /**
   * hit ÷ no-cache and hit ÷ CACHE=off, on the server-side means: workerd's clock ticks in whole
   * milliseconds here, so a sub-millisecond p50 reads 0, while the mean of many whole-ms
   * differences estimates the true mean (each request starts at a random phase of the tick).
   */
  ratioNoCache: number;
  ratioCacheOff: number;
  /** Whether every server figure was a whole number of ms (the clock's resolution). */
  wholeMsClock: boolean;
  /** What Cache-Status said for the requests meant as hits (all should be `hit`), and the answers of every kind. */
  hitAttempts: Record<string, number>;
  answers: Record<string, number>;
  wallMs: number;
}

async function hitLatency(b: Bench): Promise<HitFigures> {
  const { edges, users } = b;
  const t0 = now();
  const loadAvgAtStart = load1();
  for (const u of users.hit) await call(`${edges.a}/api/users/${u}`); // fills
  const kinds = ['hit', 'noCache', 'cacheOff', 'floor'] as const;
  const s = Object.fromEntries(kinds.map((k) => [k, { server: [] as number[], client: [] as number[] }])) as Record<
    (typeof kinds)[number],
    { server: number[]; client: number[] }
  >;
  const hitAttempts: Record<string, number> = {};
  const answers: Record<string, number> = {};
  const keep = (kind: (typeof kinds)[number], a: Answer, ok = a.status === 200) => {
    tally(answers, `${kind} ${answerKey(a)}`);
    if (!ok || a.serverMs === undefined) return;
    s[kind].server.push(a.serverMs);
    s[kind].client.push(a.ms);
  };
  let next = now() + 5_000;
  for (let i = 0; s.hit.client.length < b.plan.hit.samples && now() < b.deadline; i++) {
    const u = users.hit[i % users.hit.length]!;
    const h = await call(`${edges.a}/api/users/${u}`);
    tally(hitAttempts, h.cache);
    keep('hit', h, h.status === 200 && h.cache === 'hit');
    keep('noCache', await call(`${edges.a}/api/users/${u}`, { headers: { 'cache-control': 'no-cache' } }));
    keep('cacheOff', await call(`${edges.off}/api/users/${u}`));
    keep('floor', await call(`${edges.a}/health`));
    if (now() > next) {
      next += 5_000;
      b.log(`hit latency: ${s.hit.client.length} / ${b.plan.hit.samples} hits (load ${load1().toFixed(1)})`);
    }
  }
  const t = Object.fromEntries(kinds.map((k) => [k, timedOf(s[k].server, s[k].client)])) as Record<(typeof kinds)[number], Timed>;
  return {
    loadAvgAtStart,
    ...t,
    ratioNoCache: t.hit.server.mean / t.noCache.server.mean,
    ratioCacheOff: t.hit.server.mean / t.cacheOff.server.mean,
    wholeMsClock: kinds.every((k) => s[k].server.every(Number.isInteger)),
    hitAttempts,
    answers,
    wallMs: now() - t0,
  };
}

export interface MixFigures {
  loadAvgAtStart: number;
  plan: Plan['mix'];
  reads: number;
  writes: number;
  /** Per edge, what Cache-Status said of the reads. */
  readsByEdge: Record<'a' | 'b', Record<string, number>>;
  /** (hit + stale) ÷ reads, per edge and over both. */
  hitRate: { a: number; b: number; all: number };
  answers: Record<string, number>;
  wallMs: number;
}

async function readMostly(b: Bench): Promise<MixFigures> {
  const p = b.plan.mix;
  const users = b.users.mix;
  const t0 = now();
  const loadAvgAtStart = load1();
  const readsByEdge: MixFigures['readsByEdge'] = { a: {}, b: {} };
  const answers: Record<string, number> = {};
  let sent = 0;
  let writes = 0;
  await Promise.all(
    Array.from({ length: p.clients }, async (_, client) => {
      const rnd = random(1000 + client);
      const side = client % 2 === 0 ? 'a' : 'b';
      while (sent < p.requests && now() < b.deadline) {
        sent++;
        if (rnd() < p.writeShare) {
          const u = users[Math.floor(rnd() * users.length)]!;
          const w = await patch(b.edges.a, u, Math.floor(rnd() * 101));
          writes++;
          tally(answers, `PATCH ${answerKey(w)}`);
          continue;
        }
        const u = rnd() < p.hotShare ? users[Math.floor(rnd() * p.hotUsers)]! : users[Math.floor(rnd() * users.length)]!;
        const r = await call(`${b.edges[side]}/api/users/${u}`);
        tally(answers, `GET ${answerKey(r)}`);
        if (r.status === 200) tally(readsByEdge[side], r.cache);
      }
    }),
  );
  const rate = (t: Record<string, number>) => ((t.hit ?? 0) + (t.stale ?? 0)) / Math.max(1, sum(t));
  const all: Record<string, number> = {};
  for (const t of Object.values(readsByEdge)) for (const [k, v] of Object.entries(t)) all[k] = (all[k] ?? 0) + v;
  return {
    loadAvgAtStart,
    plan: p,
    reads: sum(all),
    writes,
    readsByEdge,
    hitRate: { a: rate(readsByEdge.a), b: rate(readsByEdge.b), all: rate(all) },
    answers,
    wallMs: now() - t0,
  };
}

// ---------------------------------------------------------------------------------------------
// Parts 2 and 3: the writer's reads with its token on edge A; everyone else's on edge B

interface Write {
  /** The write's number for its user (1, 2, …); its value is index % 101 (weeklyGoal is 0–100). */
  index: number;
  sentAt: number;
  ackAt: number;
}

interface Poll {
  sentAt: number;
  at: number;
  value: number;
}

export interface PairFigures {
  loadAvgAtStart: number;
  loadAvgAtEnd: number;
  pairs: number;
  writers: number;
  wallMs: number;
  /** Stopped by the part's time bound before its count. */
  bounded: boolean;
  writes: Record<string, number>;
  writesWithoutToken: number;
  /** The writer's read with its token on edge A: answers, Cache-Status, and reads that showed another value than the one just written. */
  tokenReads: TokenReads;
  /** The same on edge C (every CROSS_EVERY-th pair). */
  crossReads: TokenReads;
  /** Edge A's own figures: the writer's read answered from the cache vs loaded. */
  pairLatency: { patch: Timed; tokenRead: Timed };
  second: {
    pollMs: number;
    polls: number;
    /** The time between one poll answer and the next of the same user: the resolution actually had (a poll waits for the one before). */
    pollGap: Latency;
    answers: Record<string, number>;
    cache: Record<string, number>;
    /** Writes seen by the poller (or overtaken by a later write it saw), and those never seen. */
    seen: number;
    unseen: number;
    /** From the write's answer reaching its writer (commit is before it: a lower bound on the true staleness). */
    fromAck: Latency;
    /** From the write's send (commit is after it: an upper bound). */
    fromSend: Latency;
    /** Writes seen later than MAX_STALENESS_MS after their answer / their send. */
    overBoundFromAck: number;
    overBoundFromSend: number;
    /** Writes the poller showed before the writer had its answer (staleness from the answer below 0). */
    seenBeforeAck: number;
    /**
     * Per poll answer that did not show a write already answered when the poll was sent: the time
     * from that answer to the poll's send. A lower bound on how old the served data was (the
     * write committed before its answer; the poll was served after its send), free of the poll's
     * own time in the queue: over MAX_STALENESS_MS it is a broken bound, not a slow poll.
     */
    behind: { polls: number; lag: Latency; overBound: number; examples: string[] };
  };
}

/** The write a poll's value stands for: the latest of `user`'s writes sent before the answer came whose value it is (0: the initial goal). */
function writeIndexOf(writes: Write[], poll: Poll): number {
  // Writes of one user are sequential: binary search the last one sent before the poll's answer.
  let lo = 0;
  let hi = writes.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (writes[mid]!.sentAt <= poll.at) lo = mid + 1;
    else hi = mid;
  }
  // Writes 1 … lo were sent before the answer arrived: the latest of them with this value.
  const k = lo - ((((lo - poll.value) % 101) + 101) % 101);
  return Math.max(0, k);
}

/** Of the writer's pairs, every this many also read on edge C (another isolate) with the token. */
const CROSS_EVERY = 4;

interface TokenReads {
  answers: Record<string, number>;
  cache: Record<string, number>;
  /** 200s that did not show the value just written. */
  stale: number;
  staleExamples: string[];
}

const tokenTally = (): TokenReads => ({ answers: {}, cache: {}, stale: 0, staleExamples: [] });

function check(t: TokenReads, r: Answer, what: string, value: number): void {
  tally(t.answers, answerKey(r));
  tally(t.cache, r.cache);
  if (r.status !== 200) return;
  const got = r.body?.preferences?.weeklyGoal;
  if (got === value) return;
  t.stale++;
  if (t.staleExamples.length < 10) t.staleExamples.push(`${what}: read ${String(got)}, Cache-Status ${r.cache}`);
}

async function writeReadPairs(b: Bench): Promise<PairFigures> {
  const p = b.plan.pairs;
  const users = b.users.pairs;
  const loadAvgAtStart = load1();
  const t0 = now();
  const stopAt = Math.min(b.deadline, t0 + p.boundMs);
  const writes = new Map<string, Write[]>(users.map((u) => [u, []]));
  const polls = new Map<string, Poll[]>(users.map((u) => [u, []]));
  const f = {
    writes: {} as Record<string, number>,
    writesWithoutToken: 0,
    own: tokenTally(),
    cross: tokenTally(),
    patchServer: [] as number[],
    patchClient: [] as number[],
    readServer: [] as number[],
    readClient: [] as number[],
    pollAnswers: {} as Record<string, number>,
    pollCache: {} as Record<string, number>,
  };
  let started = 0;
  let done = 0;
  let writing = true;

  const pollers = users.map(async (u) => {
    const seen = polls.get(u)!;
    // After the writers stop, a few more polls: twice the bound, so the last writes are seen too.
    for (let endAt = Infinity; now() < endAt;) {
      if (!writing && endAt === Infinity) endAt = now() + 2 * MAX_STALENESS_MS;
      const sentAt = now();
      const r = await call(`${b.edges.b}/api/users/${u}`);
      tally(f.pollAnswers, answerKey(r));
      tally(f.pollCache, r.cache);
      const value = r.body?.preferences?.weeklyGoal;
      if (r.status === 200 && typeof value === 'number') seen.push({ sentAt, at: r.at, value });
      const wait = p.pollMs - (now() - sentAt);
      if (wait > 0) await sleep(wait);
    }
  });

  let nextReport = now() + 5_000;
  const writers = users.map(async (u) => {
    const mine = writes.get(u)!;
    while (started < p.count && now() < stopAt) {
      started++;
      const index = mine.length + 1;
      const value = index % 101;
      const sentAt = now();
      const w = await patch(b.edges.a, u, value);
      tally(f.writes, answerKey(w));
      if (w.status !== 200) {
        // A write that failed may still have committed: its value may show later, so the numbering goes on.
        mine.push({ index, sentAt, ackAt: w.at });
        done++;
        continue;
      }
      mine.push({ index, sentAt, ackAt: w.at });
      if (w.serverMs !== undefined) {
        f.patchServer.push(w.serverMs);
        f.patchClient.push(w.ms);
      }
      if (!w.token) f.writesWithoutToken++;
      const headers: Record<string, string> = w.token ? { [TOKEN_HEADER]: w.token } : {};
      const r = await call(`${b.edges.a}/api/users/${u}`, { headers });
      if (r.status === 200 && r.serverMs !== undefined) {
        f.readServer.push(r.serverMs);
        f.readClient.push(r.ms);
      }
      check(f.own, r, `user ${u} write ${index} (goal ${value}, token ${w.token})`, value);
      // Every CROSS_EVERY-th pair the writer also reads on edge C, an isolate that forwarded no write:
      // there only the token can tell the view is too old.
      if (index % CROSS_EVERY === 0)
        check(f.cross, await call(`${b.edges.c}/api/users/${u}`, { headers }), `user ${u} write ${index} on C`, value);
      done++;
      if (now() > nextReport) {
        nextReport += 5_000;
        const s = (now() - t0) / 1000;
        b.log(
          `pairs: ${done} / ${p.count} in ${s.toFixed(0)} s (${(done / s).toFixed(0)}/s), stale ${f.own.stale} (C ${f.cross.stale}), ` +
            `writes ${JSON.stringify(f.writes)}, token reads ${JSON.stringify(f.own.answers)} / C ${JSON.stringify(f.cross.answers)}, load ${load1().toFixed(1)}`,
        );
      }
    }
  });
  await Promise.all(writers);
  const wallMs = now() - t0;
  writing = false;
  await Promise.all(pollers);

  // Staleness per write: the first poll answer (in arrival order) that shows it or a later one.
  const fromAck: number[] = [];
  const fromSend: number[] = [];
  let unseen = 0;
  for (const u of users) {
    const ws = writes.get(u)!;
    const ps = polls.get(u)!;
    const indices = ps.map((poll) => writeIndexOf(ws, poll));
    // Polls arrive in order; `reach` is the latest write shown by polls 0 … j.
    let j = -1;
    let reach = 0;
    for (const w of ws) {
      while (reach < w.index && j + 1 < ps.length) reach = Math.max(reach, indices[++j]!);
      if (reach < w.index) {
        unseen++;
        continue;
      }
      const at = ps[j]!.at;
      fromAck.push(at - w.ackAt);
      fromSend.push(at - w.sentAt);
    }
  }
  const lags: number[] = [];
  const lagExamples: string[] = [];
  for (const u of users) {
    const ws = writes.get(u)!;
    for (const poll of polls.get(u)!) {
      const shown = writeIndexOf(ws, poll);
      const missed = ws[shown]; // write shown + 1 (indices start at 1)
      if (!missed || missed.ackAt >= poll.sentAt) continue;
      const lag = poll.sentAt - missed.ackAt;
      lags.push(lag);
      if (lag > MAX_STALENESS_MS && lagExamples.length < 10)
        lagExamples.push(
          `user ${u}: poll sent ${fmt(lag)} ms after write ${missed.index} was answered showed write ${shown}, answered ${fmt(poll.at - poll.sentAt)} ms later`,
        );
    }
  }
  const polled = [...polls.values()].reduce((n, ps) => n + ps.length, 0);
  const gaps = [...polls.values()].flatMap((ps) => ps.slice(1).map((poll, i) => poll.at - ps[i]!.at));
  return {
    loadAvgAtStart,
    loadAvgAtEnd: load1(),
    pairs: done,
    writers: users.length,
    wallMs,
    bounded: done < p.count,
    writes: f.writes,
    writesWithoutToken: f.writesWithoutToken,
    tokenReads: f.own,
    crossReads: f.cross,
    pairLatency: { patch: timedOf(f.patchServer, f.patchClient), tokenRead: timedOf(f.readServer, f.readClient) },
    second: {
      pollMs: p.pollMs,
      polls: polled,
      pollGap: latencyOf(Float64Array.from(gaps)),
      answers: f.pollAnswers,
      cache: f.pollCache,
      seen: fromAck.length,
      unseen,
      fromAck: latencyOf(Float64Array.from(fromAck)),
      fromSend: latencyOf(Float64Array.from(fromSend)),
      overBoundFromAck: fromAck.filter((ms) => ms > MAX_STALENESS_MS).length,
      overBoundFromSend: fromSend.filter((ms) => ms > MAX_STALENESS_MS).length,
      seenBeforeAck: fromAck.filter((ms) => ms < 0).length,
      behind: {
        polls: lags.length,
        lag: latencyOf(Float64Array.from(lags)),
        overBound: lags.filter((ms) => ms > MAX_STALENESS_MS).length,
        examples: lagExamples,
      },
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Part 4: what a write costs

type CostSide = 'cache on' | 'CACHE=off, triggers' | 'CACHE=off, no triggers';
const COST_SIDES: CostSide[] = ['cache on', 'CACHE=off, triggers', 'CACHE=off, no triggers'];

export interface CostSideFigures {
  side: CostSide;
  writes: number;
  measuredMs: number;
  rps: number;
  /** Edge total (its forward included) and the client's round trip. */
  latency: Timed;
  answers: Record<string, number>;
  roundRps: number[];
}

export interface CostFigures {
  loadAvgAtStart: number;
  clients: number;
  rounds: number;
  segmentMs: number;
  sides: CostSideFigures[];
  /** cache on ÷ CACHE=off without triggers: throughput, and p50 at the edge (server). */
  rpsRatio: number;
  p50Ratio: number;
  /** The triggers alone: CACHE=off with ÷ without them. */
  triggersRpsRatio: number;
  triggersP50Ratio: number;
}

async function writeCost(b: Bench): Promise<CostFigures> {
  const p = b.plan.cost;
  const loadAvgAtStart = load1();
  const acc = new Map<CostSide, { server: number[]; client: number[]; answers: Record<string, number>; ms: number; roundRps: number[] }>(
    COST_SIDES.map((s) => [s, { server: [], client: [], answers: {}, ms: 0, roundRps: [] }]),
  );
  const goal = new Map<string, number>();
  // One round at least, whatever the run's bound: without it there is no figure.
  for (let round = 0; round < p.rounds && (round === 0 || now() < b.deadline); round++) {
    for (let i = 0; i < COST_SIDES.length; i++) {
      const side = COST_SIDES[(i + round) % COST_SIDES.length]!;
      if (side !== 'cache on') await setTriggers(b.off, side === 'CACHE=off, triggers');
      const edge = side === 'cache on' ? b.edges.a : b.edges.off;
      const a = acc.get(side)!;
      const start = now();
      const measureFrom = start + p.warmupMs;
      const end = measureFrom + p.segmentMs;
      let measured = 0;
      await Promise.all(
        b.users.cost.slice(0, p.clients).map(async (u) => {
          while (now() < end) {
            const value = ((goal.get(u) ?? 0) + 1) % 101;
            goal.set(u, value);
            const w = await patch(edge, u, value);
            if (w.at - w.ms < measureFrom || w.at > end) continue; // sent in the warm-up or answered after the window
            tally(a.answers, answerKey(w));
            if (w.status === 200) {
              measured++;
              a.client.push(w.ms);
              if (w.serverMs !== undefined) a.server.push(w.serverMs);
            }
          }
        }),
      );
      a.ms += p.segmentMs;
      a.roundRps.push(measured / (p.segmentMs / 1000));
      b.log(
        `write cost, round ${round + 1}: ${side} ${(measured / (p.segmentMs / 1000)).toFixed(0)} writes/s (load ${load1().toFixed(1)})`,
      );
    }
  }
  await setTriggers(b.off, true);
  const sides = COST_SIDES.map((side): CostSideFigures => {
    const a = acc.get(side)!;
    return {
      side,
      writes: a.client.length,
      measuredMs: a.ms,
      rps: a.client.length / (a.ms / 1000),
      latency: timedOf(a.server, a.client),
      answers: a.answers,
      roundRps: a.roundRps,
    };
  });
  const [on, offT, offN] = sides as [CostSideFigures, CostSideFigures, CostSideFigures];
  return {
    loadAvgAtStart,
    clients: p.clients,
    rounds: p.rounds,
    segmentMs: p.segmentMs,
    sides,
    rpsRatio: on.rps / offN.rps,
    p50Ratio: on.latency.server.p50 / offN.latency.server.p50,
    triggersRpsRatio: offT.rps / offN.rps,
    triggersP50Ratio: offT.latency.server.p50 / offN.latency.server.p50,
  };
}

// ---------------------------------------------------------------------------------------------
// Targets, report, the run

export interface CacheTarget {
  target: string;
  measured: string;
  status: 'met' | 'missed' | 'reported';
}

function evaluate(plan: Plan, h: HitFigures, m: MixFigures, p: PairFigures, c: CostFigures): CacheTarget[] {
  const writeErrors = sum(p.writes) - (p.writes['200'] ?? 0);
  const readErrors =
    sum(p.tokenReads.answers) - (p.tokenReads.answers['200'] ?? 0) + sum(p.crossReads.answers) - (p.crossReads.answers['200'] ?? 0);
  const stale = p.tokenReads.stale + p.crossReads.stale;
  const pollErrors = sum(p.second.answers) - (p.second.answers['200'] ?? 0);
  const on = c.sides[0]!;
  const offN = c.sides[2]!;
  return [
    {
      target: 'edge cache hit, server side (Server-Timing total in workerd): p50 ≤ 5 ms',
      measured:
        `hit ${pctMean(h.hit.server)} (${h.hit.count}); no-cache ${pctMean(h.noCache.server)}; CACHE=off ${pctMean(h.cacheOff.server)}; ` +
        `hit ÷ no-cache ${h.ratioNoCache.toFixed(2)}, hit ÷ CACHE=off ${h.ratioCacheOff.toFixed(2)} (means)${h.wholeMsClock ? '; workerd clock in whole ms' : ''}`,
      status: h.hit.count > 0 && h.hit.server.p50 <= 5 ? 'met' : 'missed',
    },
    {
      target: `hit rate, read-mostly mix (${(plan.mix.writeShare * 100).toFixed(0)}% writes via A, ${plan.mix.users} users, ${plan.mix.hotShare * 100}% of reads on ${plan.mix.hotUsers})`,
      measured: `${(m.hitRate.all * 100).toFixed(1)}% of ${m.reads} reads (edge A ${(m.hitRate.a * 100).toFixed(1)}%, edge B ${(m.hitRate.b * 100).toFixed(1)}%), ${m.writes} writes`,
      status: 'reported',
    },
    {
      target: `the writer's read with its token: 0 stale over ${plan.pairs.count.toLocaleString('en')} write → read pairs`,
      measured:
        `${p.tokenReads.stale} stale in ${p.pairs} pairs on edge A, ${p.crossReads.stale} in ${sum(p.crossReads.answers)} token reads on edge C; ` +
        `${writeErrors} writes and ${readErrors} reads not answered 200; ${p.writesWithoutToken} writes without a token`,
      status:
        stale === 0 && writeErrors === 0 && readErrors === 0 && p.writesWithoutToken === 0 && p.pairs >= plan.pairs.count
          ? 'met'
          : 'missed',
    },
    {
      target: `a second isolate without the token sees each write within ${MAX_STALENESS_MS} ms (p99)`,
      measured:
        `from the write's answer ${pct(p.second.fromAck)}, max ${fmt(p.second.fromAck.max)} ms; from its send ${pct(p.second.fromSend)}, max ${fmt(p.second.fromSend.max)} ms; ` +
        `over ${MAX_STALENESS_MS} ms: ${p.second.overBoundFromAck} / ${p.second.overBoundFromSend}; polls sent over ${MAX_STALENESS_MS} ms after a write they did not show was answered: ${p.second.behind.overBound}; unseen ${p.second.unseen}; ${pollErrors} polls not answered 200 (poll every ${p.second.pollMs} ms; answers ${fmt(p.second.pollGap.p50)} ms apart at p50)`,
      status:
        p.second.seen > 0 &&
        p.second.fromAck.p99 <= MAX_STALENESS_MS &&
        p.second.behind.overBound === 0 &&
        p.second.unseen === 0 &&
        pollErrors === 0
          ? 'met'
          : 'missed',
    },
    {
      target: 'the write cost of the cache (PATCH through the edge, cache on vs CACHE=off without triggers)',
      measured:
        `${on.rps.toFixed(0)} vs ${offN.rps.toFixed(0)} writes/s (${c.rpsRatio.toFixed(2)}×), edge p50 ${fmt(on.latency.server.p50)} vs ${fmt(offN.latency.server.p50)} ms (${c.p50Ratio.toFixed(2)}×); ` +
        `triggers alone ${c.triggersRpsRatio.toFixed(2)}× throughput, ${c.triggersP50Ratio.toFixed(2)}× p50`,
      status: 'reported',
    },
  ];
}

export interface CacheResult extends RunStamp {
  machine: BenchResults['machine'] & { loadAvg: { start: number[]; end: number[] } };
  plan: Plan;
  topology: string;
  hitLatency: HitFigures;
  readMostly: MixFigures;
  pairs: PairFigures;
  writeCost: CostFigures;
  targets: CacheTarget[];
  notes: string[];
}

const USAGE = `usage: npm run bench:cache [-- --quick]
Issue 23's read cache through the edge (workerd → local Neon proxy → PostgreSQL; writes forwarded to a
Node gateway): hit latency and hit rate, ${FULL.pairs.count.toLocaleString('en')} write → read pairs with the writer's token,
staleness seen by a second isolate, the write cost of the triggers. 6–10 minutes (--quick: about 2).
BENCH_PAIRS=<n> sets the number of pairs. Writes bench/results/<date>-cache.json.`;

/** The edges' 5xx log lines, one per kind (the request id and the numbers in it left out), with how often each came. */
function distinctFailures(logs: string[]): string[] {
  const kinds = new Map<string, number>();
  for (const line of logs) {
    if (!/→ 5\d\d/.test(line)) continue;
    const kind = line.replace(/request \S+/, 'request …').replace(/[0-9a-f]{8}-[0-9a-f-]{27}/g, '…');
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  return [...kinds].map(([kind, n]) => `${n} × ${kind}`);
}

function planFor(mode: 'full' | 'quick'): Plan {
  const plan = structuredClone(mode === 'quick' ? QUICK : FULL);
  const pairs = process.env.BENCH_PAIRS?.trim();
  if (pairs) {
    const n = Number(pairs);
    if (!Number.isInteger(n) || n < 1 || n > 1_000_000)
      throw new Error(`BENCH_PAIRS must be a whole number from 1 to 1,000,000, got "${pairs}"`);
    plan.pairs.count = n;
  }
  return plan;
}

function printSummary(h: HitFigures, m: MixFigures, p: PairFigures, c: CostFigures): void {
  const row = (label: string, t: Timed) =>
    `    ${label.padEnd(22)} server ${pctMean(t.server).padEnd(36)} client ${pctMean(t.client)}  (${t.count})`;
  console.log('cache: 1. GET /api/users/:id on the edge, one at a time');
  console.log(row('hit (edge A)', h.hit));
  console.log(row('no-cache (edge A)', h.noCache));
  console.log(row('CACHE=off (edge OFF)', h.cacheOff));
  console.log(row('/health (edge A)', h.floor));
  console.log(
    `    hit ÷ no-cache (server means) ${h.ratioNoCache.toFixed(2)}; hit ÷ CACHE=off ${h.ratioCacheOff.toFixed(2)}; ` +
      `client p50 hit − /health ${fmt(h.hit.client.p50 - h.floor.client.p50)} ms, CACHE=off − /health ${fmt(h.cacheOff.client.p50 - h.floor.client.p50)} ms; ` +
      `${h.wholeMsClock ? 'workerd’s clock ticked in whole ms' : 'sub-ms server figures'}; hit attempts ${JSON.stringify(h.hitAttempts)}`,
  );
  console.log(
    `  read-mostly mix: ${m.reads} reads, ${m.writes} writes: hit rate ${(m.hitRate.all * 100).toFixed(1)}% ` +
      `(A ${(m.hitRate.a * 100).toFixed(1)}% ${JSON.stringify(m.readsByEdge.a)}; B ${(m.hitRate.b * 100).toFixed(1)}% ${JSON.stringify(m.readsByEdge.b)})`,
  );
  console.log(
    `cache: 2. ${p.pairs} write → read pairs, ${p.writers} writers, ${(p.wallMs / 1000).toFixed(1)} s${p.bounded ? ' (stopped by the time bound)' : ''}`,
  );
  console.log(
    `    writes ${JSON.stringify(p.writes)}; token reads ${JSON.stringify(p.tokenReads.answers)}, Cache-Status ${JSON.stringify(p.tokenReads.cache)}`,
  );
  console.log(
    `    stale token reads: ${p.tokenReads.stale}${p.tokenReads.staleExamples.length ? `: ${p.tokenReads.staleExamples.join('; ')}` : ''}`,
  );
  console.log(
    `    on edge C (every ${CROSS_EVERY}th pair, an isolate that forwarded no write): ${JSON.stringify(p.crossReads.answers)}, Cache-Status ${JSON.stringify(p.crossReads.cache)}; ` +
      `stale ${p.crossReads.stale}${p.crossReads.staleExamples.length ? `: ${p.crossReads.staleExamples.join('; ')}` : ''}`,
  );
  console.log(row('PATCH (edge A)', p.pairLatency.patch));
  console.log(row('token read (edge A)', p.pairLatency.tokenRead));
  console.log(
    `cache: 3. second isolate (edge B), ${p.second.polls} polls every ${p.second.pollMs} ms, Cache-Status ${JSON.stringify(p.second.cache)}`,
  );
  console.log(`    time between a user's poll answers (the resolution): ${pct(p.second.pollGap)}, max ${fmt(p.second.pollGap.max)} ms`);
  console.log(
    `    staleness from the write's answer: ${pct(p.second.fromAck)}, max ${fmt(p.second.fromAck.max)} ms (${p.second.seenBeforeAck} seen before the answer)`,
  );
  console.log(`    staleness from the write's send:   ${pct(p.second.fromSend)}, max ${fmt(p.second.fromSend.max)} ms`);
  const bh = p.second.behind;
  console.log(
    `    polls behind a write answered before they were sent: ${bh.polls} of ${p.second.polls}; by ${pct(bh.lag)}, max ${fmt(bh.lag.max)} ms; over ${MAX_STALENESS_MS} ms: ${bh.overBound}` +
      (bh.examples.length ? `\n      ${bh.examples.join('\n      ')}` : ''),
  );
  console.log(
    `    writes seen ${p.second.seen}, unseen ${p.second.unseen}; over ${MAX_STALENESS_MS} ms: ${p.second.overBoundFromAck} (from answer) / ${p.second.overBoundFromSend} (from send)`,
  );
  console.log(`cache: 4. PATCH through the edge, ${c.clients} clients, ${c.rounds} rounds × ${c.segmentMs / 1000} s per side`);
  for (const s of c.sides)
    console.log(
      `    ${s.side.padEnd(24)} ${s.rps.toFixed(0).padStart(5)} writes/s (rounds ${s.roundRps.map((r) => r.toFixed(0)).join(' / ')}); edge ${pct(s.latency.server)}; client ${pct(s.latency.client)}; ${JSON.stringify(s.answers)}`,
    );
  console.log(
    `    cache on ÷ CACHE=off without triggers: ${c.rpsRatio.toFixed(2)}× writes/s, ${c.p50Ratio.toFixed(2)}× edge p50; triggers alone: ${c.triggersRpsRatio.toFixed(2)}×, ${c.triggersP50Ratio.toFixed(2)}×`,
  );
}

async function main(): Promise<number> {
  const mode = quickOrExit('cache', USAGE);
  if (typeof mode === 'number') return mode;
  const plan = planFor(mode);
  const startedAt = new Date();
  const t0 = now();
  const loadAvgStart = os.loadavg();
  const log = (line: string) => console.log(`  ${line}`);
  const logs: string[] = [];
  const cleanups: Cleanups = [];
  let cleaning: Promise<unknown> | undefined;
  const cleanUp = () => (cleaning ??= cleanups.reduceRight((p, c) => p.then(c).catch(() => {}), Promise.resolve() as Promise<unknown>));
  const onSignal = () => void cleanUp().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  console.log(
    `cache: load average ${loadAvgStart.map((l) => l.toFixed(2)).join(' ')}; ${plan.pairs.count} pairs; bound ${plan.boundMs / 60_000} min`,
  );
  try {
    const dir = await mkdtemp(join(os.tmpdir(), 'poolgate-bench-cache-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    log('building the worker bundle…');
    const bundlePath = await buildWorker(join(dir, 'worker.js'));
    const source = sourceDatabaseUrl();
    log('two scratch databases, two gateways (cache on, CACHE=off)…');
    const [onParts, offParts] = await Promise.all([startStack(source, 'on', cleanups, logs), startStack(source, 'off', cleanups, logs)]);
    const on: Stack = { ...onParts, proxyUrl: await onParts.proxy() };
    const off: Stack = { ...offParts, proxyUrl: await offParts.proxy() };
    const users = {
      hit: Array.from({ length: plan.hit.users }, () => randomUUID()),
      mix: Array.from({ length: plan.mix.users }, () => randomUUID()),
      pairs: Array.from({ length: plan.pairs.writers }, () => randomUUID()),
      cost: Array.from({ length: plan.cost.clients }, () => randomUUID()),
    };
    await insertUsers([on, off], Object.values(users).flat());
    log('four workerd instances (edges A, B and C on the cache-on stack, OFF)…');
    const [a, bEdge, cEdge, offEdge] = await Promise.all([
      startEdge('edge-a', bundlePath, edgeEnv(on, true), cleanups, logs),
      startEdge('edge-b', bundlePath, edgeEnv(on, true), cleanups, logs),
      startEdge('edge-c', bundlePath, edgeEnv(on, true), cleanups, logs),
      startEdge('edge-off', bundlePath, edgeEnv(off, false), cleanups, logs),
    ]);
    const bench: Bench = {
      plan,
      deadline: t0 + plan.boundMs,
      on,
      off,
      edges: { a, b: bEdge, c: cEdge, off: offEdge },
      users,
      workerdLogs: logs,
      log,
    };
    // Warm each isolate (the app is built on its first request) and check the wiring.
    for (const edge of [a, bEdge, cEdge, offEdge]) {
      const r = await call(`${edge}/api/users/${users.hit[0]}`);
      if (r.status !== 200)
        throw new Error(`the edge at ${edge} answered ${answerKey(r)}: ${r.error ?? ''}\n${logs.slice(-20).join('\n')}`);
    }
    log(`ready in ${((now() - t0) / 1000).toFixed(1)} s`);

    console.log(
      `cache: 1. hit latency (${plan.hit.samples} hits, interleaved with no-cache and CACHE=off reads; load ${load1().toFixed(2)})`,
    );
    const h = await hitLatency(bench);
    console.log(`cache: 1b. read-mostly mix (${plan.mix.requests} requests, ${plan.mix.clients} clients; load ${load1().toFixed(2)})`);
    const m = await readMostly(bench);
    console.log(
      `cache: 2 + 3. write → read pairs (${plan.pairs.count}, ${plan.pairs.writers} writers) with a poller on edge B; load ${load1().toFixed(2)}`,
    );
    const p = await writeReadPairs(bench);
    console.log(
      `cache: 4. write cost (${plan.cost.rounds} rounds × 3 sides × ${plan.cost.segmentMs / 1000} s; load ${load1().toFixed(2)})`,
    );
    const c = await writeCost(bench);

    printSummary(h, m, p, c);
    const failures = distinctFailures(logs);
    if (failures.length)
      console.log(`cache: the edges logged ${failures.length} kinds of 5xx:\n${failures.map((l) => `    ${l}`).join('\n')}`);
    const targets = evaluate(plan, h, m, p, c);
    for (const x of targets)
      console.log(`  ${x.status === 'met' ? 'met     ' : x.status === 'missed' ? 'MISSED  ' : 'reported'} ${x.target}: ${x.measured}`);
    const version = (await on.admin.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v.split(' ')[0]!;
    const result: CacheResult = {
      ...runStamp(mode, startedAt),
      machine: { ...machine(version, undefined), loadAvg: { start: loadAvgStart, end: os.loadavg() } },
      plan,
      topology:
        `workerd (miniflare, three instances: A and B on the cache-on stack, OFF on the CACHE=off one) → local Neon proxy → PostgreSQL ${version} ` +
        `(${on.db.server}, ${on.db.authShort}; scratch databases ${on.db.name}, ${off.db.name}); writes forwarded to a Node gateway each (POOL_MAX ${POOL_MAX}, a process of its own)`,
      hitLatency: h,
      readMostly: m,
      pairs: p,
      writeCost: c,
      targets,
      notes: [
        'Server figures are the Server-Timing total the edge app writes in workerd (its own time, not the client → workerd hop).',
        "Staleness: from the write's answer is a lower bound on the time since its commit, from its send an upper bound; a poll shows a value at most one poll interval plus one read after B could first have shown it.",
        'Generations are per table: every PATCH outdates every cached /api/users/:id on each isolate once it reads its view again.',
      ],
    };
    const out = fileURLToPath(new URL('./results/', import.meta.url));
    mkdirSync(out, { recursive: true });
    const file = join(out, `${localDate(startedAt)}-cache${mode === 'quick' ? '-quick' : ''}.json`);
    writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
    console.log(
      `cache: wrote ${file} (${result.durationSec.toFixed(0)} s; load average ${loadAvgStart[0]!.toFixed(2)} → ${load1().toFixed(2)})`,
    );
    return targets.some((t) => t.status === 'missed') ? 1 : 0;
  } finally {
    await cleanUp();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

runIfMain(import.meta.url, main);
