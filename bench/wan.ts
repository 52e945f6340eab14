/**
 * The WAN model of the edge: `npx tsx bench/wan.ts [--quick]` (under a minute; quick under 30 s).
 * On loopback the edge's figures measure the local proxy hop; in production what costs is
 * distance. This puts distance back with latency proxies (bench/latency-proxy.ts) on the three
 * hops that have it, and counts the round trips each route makes on each:
 *
 *   client ──▶ workerd (miniflare): the worker bundle (buildWorker) + a bare neon() worker
 *                 │ edge→DB (default 15 ms each way)      ──▶ local Neon proxy ──▶ PostgreSQL
 *                 │ edge→Node (default 10 ms each way)    ──▶ Node gateway (startGateway)
 *                                                              │ Node→DB (1 ms) ──▶ PostgreSQL
 *
 * The client → edge hop stays loopback (it is the same for every design); so does the Neon proxy
 * → PostgreSQL hop (Neon's proxy sits beside the compute). Every proxy also charges a new
 * connection one round trip for its TCP handshake (`handshakeRoundTrips`; TLS would add more).
 * Requests go one at a time, each route after warm-ups; round trips per request are the proxies'
 * counters over a route's requests ÷ requests (a request's own, plus whatever it leaves running
 * after its response, e.g. a WebSocket's close). One more request per route is traced: each of
 * its round trips, named from the bytes the client sent (HTTP line, Postgres message types).
 *
 * The database is PostgreSQL named by BENCH_DATABASE_URL or DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/test); the run works only in poolgate_wan_<pid>, created
 * there and dropped at the end. Writes bench/results/<date>-wan.md and .json (--quick:
 * <date>-wan-quick.*). `runWanBench` and `renderWanMarkdown` are for bench/run.ts.
 */
import { runIfMain } from './cli.js';
import { dropStaleDatabases } from './stale.js';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import type { Miniflare } from 'miniflare';
import pg from 'pg';
import { fitness } from '../src/fitness/app.js';
import { DEMO_USER_ID, DEMO_WORKOUT_ID } from '../src/fitness/seed.js';
import { buildWorker, edge as edgeBuildOptions } from '../src/local/build.js';
import { startNeonProxy } from '../src/local/neon-proxy/index.js';
import { createMiniflare, workerdWorker } from '../src/local/workerd.js';
import { startGateway } from '../src/runtime/node.js';
import { startLatencyProxy, type LatencyProxy, type LatencyProxyStats } from './latency-proxy.js';
import { latencyOf, type Latency } from './load.js';
import type { RunStamp } from './report.js';

// ---------------------------------------------------------------------------------------------
// Options and results

export interface WanOptions {
  /** Fewer requests per route (under 30 s in all). */
  quick?: boolean;
  /** Where to create the scratch database (an admin URL); default BENCH_DATABASE_URL, DATABASE_URL, local test. */
  sourceUrl?: string;
  /** One-way delays in ms; defaults 15, 10 and 1. */
  edgeToDbMs?: number;
  edgeToNodeMs?: number;
  nodeToDbMs?: number;
  /** Round trips a new connection pays on every hop (1: TCP; 2: TCP + TLS 1.3); default 1. */
  handshakeRoundTrips?: number;
  /** Measured requests per route (default 30, quick 10) and unmeasured ones before (5, quick 2). */
  requests?: number;
  warmups?: number;
  /** Progress lines; default none. */
  log?: (line: string) => void;
  /** Stops the run between requests (it then cleans up and rejects). */
  signal?: AbortSignal;
}

export type HopId = 'edgeDb' | 'edgeNode' | 'nodeDb';

export const HOPS: Record<HopId, { label: string; what: string }> = {
  edgeDb: { label: 'edge→DB', what: 'workerd → the Neon endpoint (local Neon proxy, beside PostgreSQL)' },
  edgeNode: { label: 'edge→Node', what: 'workerd → the Node function (gateway), signed forwards' },
  nodeDb: { label: 'Node→DB', what: 'the Node gateway’s pg Pool → PostgreSQL' },
};
const HOP_IDS = Object.keys(HOPS) as HopId[];

export interface HopFigures {
  /** Round trips per request (direction changes on the hop's connections). */
  roundTrips: number;
  /** New connections per request. */
  connections: number;
}

export interface TraceStep {
  hop: HopId;
  connection: number;
  /** ms from the start of the traced request to the burst's arrival at the proxy. */
  atMs: number;
  /** What the client sent, e.g. "POST /sql", "WebSocket upgrade", "P/B/D/E/S SELECT 1 FROM users …". */
  what: string;
  upBytes: number;
  downBytes: number;
  /** Before the response reached the client (else: work the request left running). */
  beforeResponse: boolean;
  /** The first burst of a connection opened by this request (it also paid the handshake). */
  newConnection: boolean;
}

export interface WanRouteResult {
  id: string;
  label: string;
  method: string;
  path: string;
  /** How the edge serves it, e.g. "Neon HTTP, 1 query". */
  how: string;
  requests: number;
  errors: number;
  statuses: Record<string, number>;
  latencyMs: Latency & { min: number };
  /** Per request, on each hop. */
  hops: Record<HopId, HopFigures>;
  /** Forwarded routes: the Node side's own total (its Server-Timing `total`), p50. */
  nodeTotalP50Ms?: number;
  /** p50 of every Server-Timing entry the edge answered with (total, db, forward, node-total, …). */
  serverTimingP50Ms: Record<string, number>;
  /** The Server-Timing `db` desc the edge reported (last response). */
  dbDesc?: string;
  /** One extra request, every round trip named. */
  trace: TraceStep[];
  /** What distance alone costs the traced request: its round trips and handshakes before the response × their RTT. */
  distanceMs: number;
  /** The same route with every delay at 0, after the WAN pass: the local floor (runtimes, proxies, Postgres, loopback). */
  loopback?: { requests: number; p50Ms: number; p99Ms: number };
}

export interface WanTarget {
  id: string;
  target: string;
  measured: string;
  status: 'met' | 'missed' | 'not measured';
}

export interface WanResult extends RunStamp {
  model: {
    oneWayMs: Record<HopId, number>;
    rttMs: Record<HopId, number>;
    handshakeRoundTrips: number;
    requestsPerRoute: number;
    warmupsPerRoute: number;
  };
  machine: {
    cpus: number;
    cpuModel: string;
    node: string;
    postgres: string;
    workerd: string;
    /** os.loadavg() at the start and at the end: above the core count, the figures include waiting for a CPU. */
    loadAvg: { start: number[]; end: number[] };
  };
  routes: WanRouteResult[];
  /** Each proxy's counters over the whole run, with how late its releases were. */
  proxies: Record<HopId, LatencyProxyStats>;
  targets: WanTarget[];
  notes: string[];
}

// ---------------------------------------------------------------------------------------------
// The routes

const WRITER_USER_ID = '00000000-0000-4000-8000-0000000000c1';
const BARE_HOST = 'bare.local';

interface WanRoute {
  id: string;
  label: string;
  method: 'GET' | 'POST' | 'PATCH';
  path: string;
  /** How it is served, when the Server-Timing `db` entry cannot say (the bare worker has none). */
  how?: string;
  /** Measured only where the build has it (a 404 on every warm-up: skipped, with a note). */
  optional?: boolean;
  /** The request body for the i-th request. */
  body?: (i: number) => string;
  /** Served by the bare neon() worker (Host: bare.local). */
  bare?: boolean;
  status: number;
}

const ROUTES: WanRoute[] = [
  {
    id: 'edge-read',
    label: 'GET /api/users/:id',
    method: 'GET',
    path: `/api/users/${DEMO_USER_ID}`,
    status: 200,
  },
  {
    id: 'bare-neon',
    label: 'bare neon() — same SQL',
    method: 'GET',
    path: `/users/${DEMO_USER_ID}`,
    how: 'a worker of its own: neon(DATABASE_URL) → repo.getUser',
    bare: true,
    status: 200,
  },
  {
    id: 'edge-batch',
    label: 'GET /api/workouts/:id',
    method: 'GET',
    path: `/api/workouts/${DEMO_WORKOUT_ID}`,
    status: 200,
  },
  {
    id: 'edge-list',
    label: 'GET /api/users/:id/workouts',
    method: 'GET',
    path: `/api/users/${DEMO_USER_ID}/workouts`,
    status: 200,
  },
  {
    id: 'edge-summary',
    label: 'GET /api/users/:id/summary',
    method: 'GET',
    path: `/api/users/${DEMO_USER_ID}/summary`,
    status: 200,
  },
  {
    id: 'edge-session',
    label: 'GET /api/users/:id/workouts/latest',
    method: 'GET',
    path: `/api/users/${DEMO_USER_ID}/workouts/latest`,
    optional: true,
    status: 200,
  },
  {
    id: 'fwd-patch',
    label: 'PATCH /api/users/:id/preferences',
    method: 'PATCH',
    path: `/api/users/${WRITER_USER_ID}/preferences`,
    body: (i) => JSON.stringify({ units: i % 2 ? 'metric' : 'imperial', weeklyGoal: i % 7 }),
    status: 200,
  },
  {
    id: 'fwd-post',
    label: 'POST /api/workouts',
    method: 'POST',
    path: '/api/workouts',
    body: () =>
      JSON.stringify({
        userId: WRITER_USER_ID,
        kind: 'run',
        startedAt: '2026-01-08T07:00:00Z',
        durationSeconds: 1800,
        sets: [{ exercise: 'squat', reps: 5, weightKg: 100 }],
      }),
    status: 201,
  },
];

/**
 * The bare comparison: the same driver, the same local-proxy settings and the very same SQL as
 * the edge read (repo.getUser through a query-only Db), with none of poolgate around it.
 */
const BARE_WORKER = `
import { neon, neonConfig } from '@neondatabase/serverless';
import { useLocalNeonProxy } from './src/db/connectors/neon.js';
import { getUser } from './src/fitness/repo.js';

let sql;
const unused = () => Promise.reject(new Error('the bare worker only runs one-shot queries'));

export default {
  async fetch(request, env) {
    if (!sql) {
      useLocalNeonProxy(neonConfig, env.NEON_PROXY_URL);
      sql = neon(env.DATABASE_URL, { fullResults: true });
    }
    const id = new URL(request.url).pathname.split('/').pop();
    const db = {
      kind: 'neon-http',
      async query(text, params) {
        const r = await sql.query(text, params ?? [], { fullResults: true });
        return { rows: r.rows, rowCount: r.rowCount ?? null };
      },
      readBatch: unused,
      transaction: unused,
    };
    try {
      return Response.json(await getUser(db, id));
    } catch (err) {
      return Response.json({ error: String(err && err.message) }, { status: err && err.status ? err.status : 500 });
    }
  },
};
`;

// ---------------------------------------------------------------------------------------------
// Helpers

const now = () => performance.now();
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const root = fileURLToPath(new URL('../', import.meta.url));
const DEFAULT_URL = 'postgres://postgres@127.0.0.1:5432/test';

/** A failure the run explains in one line (no stack): the database unreachable or unsuitable. */
class WanError extends Error {
  override name = 'WanError';
}

interface Answer {
  status: number;
  ms: number;
  serverTiming: string;
  body: string;
}

/** One request over a keep-alive agent (one socket), body read; bounded. */
function send(agent: http.Agent, origin: string, route: WanRoute, i: number): Promise<Answer> {
  const body = route.body?.(i);
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (route.bare) headers.host = BARE_HOST;
  const started = now();
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${origin}${route.path}`,
      { method: route.method, headers, agent, signal: AbortSignal.timeout(20_000) },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            ms: now() - started,
            serverTiming: String(res.headers['server-timing'] ?? ''),
            body: Buffer.concat(chunks).toString('utf8'),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** `dur` of a Server-Timing entry, e.g. node-total. */
/** Every `name;…dur=N` entry of a Server-Timing header. */
const timingsOf = (header: string): [string, number][] =>
  [...header.matchAll(/(?:^|,)\s*([\w-]+)(?:;[^,]*?)?;dur=([\d.]+)/g)].map((m) => [m[1]!, Number(m[2])]);
const dbDescOf = (header: string) => /(?:^|,\s*)db;[^,]*desc="([^"]*)"/.exec(header)?.[1];

const snapshot = (proxies: Record<HopId, LatencyProxy>) =>
  Object.fromEntries(HOP_IDS.map((h) => [h, proxies[h].stats()])) as Record<HopId, LatencyProxyStats>;

const localDate = (d = new Date()) =>
  `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;

// ---------------------------------------------------------------------------------------------
// Naming a client burst (for the traces)

const sqlHead = (text: string, width = 48) => {
  const s = text.replace(/\s+/g, ' ').trim();
  return s.length > width ? `${s.slice(0, width - 1)}…` : s;
};

/**
 * Frontend Postgres messages → "startup", "Q BEGIN", "P/B/D/E/S SELECT …", "X". `prepared` is the
 * connection's named statements (Parse name → SQL), so a Bind of one prepared earlier is named too.
 */
function describePg(buf: Buffer, prepared: Map<string, string>): string {
  const types: string[] = [];
  const texts: string[] = [];
  let at = 0;
  while (at + 5 <= buf.length) {
    if (buf[at] === 0) {
      // A message without a type byte: startup, SSLRequest or CancelRequest (int32 length, int32 code).
      const len = buf.readInt32BE(at);
      const code = at + 8 <= buf.length ? buf.readInt32BE(at + 4) : 0;
      types.push(code === 80877103 ? 'SSLRequest' : code === 80877102 ? 'CancelRequest' : 'startup');
      at += Math.max(len, 8);
      continue;
    }
    const type = String.fromCharCode(buf[at]!);
    const len = buf.readInt32BE(at + 1);
    if (!/[A-Za-z]/.test(type) || len < 4) break;
    types.push(type);
    const payload = buf.subarray(at + 5, Math.min(buf.length, at + 1 + len));
    if (type === 'Q') texts.push(payload.toString('utf8').replace(/\0.*$/s, ''));
    if (type === 'P') {
      const [name, query] = payload.toString('utf8').split('\0');
      if (name && query !== undefined) prepared.set(name, query);
      if (query !== undefined) texts.push(query);
    }
    if (type === 'B') {
      // A Bind of a statement parsed in this burst is already named; one prepared earlier is named here.
      const name = payload.toString('utf8').split('\0')[1] ?? '';
      const known = prepared.get(name);
      if (types.at(-2) !== 'P' && known !== undefined) texts.push(known);
    }
    at += 1 + len;
  }
  if (!types.length) return `${buf.length} B`;
  const collapsed = types.filter((t, i) => t !== types[i - 1]).join('/');
  const width = texts.length > 1 ? 32 : 48;
  return texts.length ? `${collapsed} ${texts.map((t) => sqlHead(t, width)).join(' · ')}` : collapsed;
}

/** Client WebSocket frames (masked) → their unmasked payloads, as far as `buf` goes; undefined if not frames. */
function unmaskFrames(buf: Buffer): { payload: Buffer; close: boolean } | undefined {
  const parts: Buffer[] = [];
  let close = false;
  let at = 0;
  while (at + 2 <= buf.length) {
    const opcode = buf[at]! & 0x0f;
    const masked = (buf[at + 1]! & 0x80) !== 0;
    if (!masked || ![0, 1, 2, 8, 9, 10].includes(opcode)) return parts.length ? { payload: Buffer.concat(parts), close } : undefined;
    let len = buf[at + 1]! & 0x7f;
    let p = at + 2;
    if (len === 126) {
      len = buf.readUInt16BE(p);
      p += 2;
    } else if (len === 127) {
      len = Number(buf.readBigUInt64BE(p));
      p += 8;
    }
    const mask = buf.subarray(p, p + 4);
    p += 4;
    const data = Buffer.from(buf.subarray(p, Math.min(buf.length, p + len)));
    for (let i = 0; i < data.length; i++) data[i]! ^= mask[i % 4]!;
    if (opcode === 8) close = true;
    else if (opcode <= 2) parts.push(data);
    at = p + len;
  }
  return { payload: Buffer.concat(parts), close };
}

function describeBurst(hop: HopId, head: Buffer, prepared: Map<string, string>): string {
  const line = /^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (\S+) HTTP\/1\.[01]\r\n/.exec(head.toString('latin1', 0, 200));
  if (line) {
    if (/\r\nupgrade: websocket\r\n/i.test(head.toString('latin1'))) return 'WebSocket upgrade';
    const path = line[2]!.replace(/[0-9a-f]{8}-[0-9a-f-]{27}/gi, ':id');
    if (path !== '/sql') return `${line[1]} ${path}`;
    const body = head.toString('utf8');
    const batch = /"queries":\[/.test(body);
    const first = /"query":"((?:[^"\\]|\\.)*)/.exec(body)?.[1];
    return `POST /sql${batch ? ' (batch)' : ''}${first ? ` ${sqlHead(first.replace(/\\n/g, ' '))}` : ''}`;
  }
  if (hop === 'edgeDb') {
    const frames = unmaskFrames(head);
    if (frames) {
      const pgText = frames.payload.length ? describePg(frames.payload, prepared) : '';
      return [pgText, frames.close ? 'WebSocket close' : ''].filter(Boolean).join(' + ') || 'WebSocket control frame';
    }
  }
  return describePg(head, prepared);
}

// ---------------------------------------------------------------------------------------------
// The topology

interface Topology {
  origin: string;
  proxies: Record<HopId, LatencyProxy>;
  postgres: string;
  workerd: string;
  logs: string[];
}

/** Starts everything, registering each part's stop with `stops` as it goes. */
async function startTopology(
  sourceUrl: string,
  model: WanResult['model'],
  stops: (() => Promise<unknown>)[],
  log: (line: string) => void,
  signal: AbortSignal | undefined,
): Promise<Topology> {
  const logs: string[] = [];
  const dir = await mkdtemp(join(os.tmpdir(), 'poolgate-wan-'));
  stops.push(() => rm(dir, { recursive: true, force: true }));
  log('building the worker bundle and the bare neon() worker…');
  const workerPath = await buildWorker(join(dir, 'worker.js'));
  const barePath = join(dir, 'bare-neon.js');
  await build({
    ...edgeBuildOptions,
    stdin: { contents: BARE_WORKER, resolveDir: root, sourcefile: 'bare-neon.ts', loader: 'ts' },
    outfile: barePath,
  });
  signal?.throwIfAborted();

  const db = await createScratchDatabase(sourceUrl);
  stops.push(() => db.drop());
  signal?.throwIfAborted();
  log(`database ${db.name} on ${new URL(sourceUrl).host} (PostgreSQL ${db.postgres})`);

  const proxy = (target: { host: string; port: number }, oneWayMs: number) =>
    startLatencyProxy({
      target,
      upDelayMs: oneWayMs,
      handshakeRoundTrips: model.handshakeRoundTrips,
      traceExchanges: 2_000,
      traceHeadBytes: 2048,
    }).then((p) => {
      stops.push(() => p.close());
      return p;
    });

  const pgUrl = new URL(db.url);
  const nodeDb = await proxy({ host: pgUrl.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(pgUrl.port || 5432) }, model.oneWayMs.nodeDb);
  const forwardSecret = randomBytes(32).toString('base64url');
  const gateway = await startGateway(
    fitness,
    {
      DATABASE_URL: nodeDb.urlFor(db.url),
      PORT: '0',
      HOST: '127.0.0.1',
      POOL_MAX: '5',
      POOL_MIN: '1',
      SEED: 'true',
      LOG_LEVEL: 'info',
      SHUTDOWN_TIMEOUT_MS: '3000',
      FORWARD_SECRET: forwardSecret,
      APPLICATION_NAME: 'poolgate-wan-node',
    },
    { log: (line) => logs.push(line) },
  );
  stops.push(() => gateway.close());
  signal?.throwIfAborted();
  await db.admin(`INSERT INTO users (id, email, name) VALUES ($1, 'wan-writer@poolgate.dev', 'WAN Writer') ON CONFLICT DO NOTHING`, [
    WRITER_USER_ID,
  ]);
  await db.admin(`INSERT INTO user_preferences (user_id, units) VALUES ($1, 'metric') ON CONFLICT DO NOTHING`, [WRITER_USER_ID]);

  const neonProxy = await startNeonProxy({ databaseUrls: [db.url], port: 0, host: '127.0.0.1', log: (line) => logs.push(line) });
  stops.push(() => neonProxy.close());
  const edgeDb = await proxy({ host: neonProxy.host, port: neonProxy.port }, model.oneWayMs.edgeDb);
  const edgeNode = await proxy({ host: '127.0.0.1', port: gateway.port }, model.oneWayMs.edgeNode);

  const bindings = {
    DATABASE_URL: db.url,
    NEON_PROXY_URL: edgeDb.url,
    NODE_FUNCTION_URL: edgeNode.url,
    FORWARD_SECRET: forwardSecret,
  };
  const bare = workerdWorker('bare-neon', barePath, bindings);
  log('starting workerd…');
  // ownsSignals: miniflare's own Ctrl-C handler would exit at once, before the database is dropped.
  const mf: Miniflare = createMiniflare(
    {
      host: '127.0.0.1',
      port: 0,
      handleStructuredLogs: ({ message }) => void logs.push(message),
      workers: [
        workerdWorker('edge', workerPath, bindings),
        { ...bare, config: { ...bare.config, triggers: [{ type: 'fetch', pattern: `${BARE_HOST}/*` }] } },
      ],
    },
    { ownsSignals: true },
  );
  stops.push(() => mf.dispose());
  const origin = (await mf.ready).origin;
  signal?.throwIfAborted();
  const workerd = (JSON.parse(readFileSync(join(root, 'node_modules/miniflare/package.json'), 'utf8')) as { version: string }).version;
  return { origin, proxies: { edgeDb, edgeNode, nodeDb }, postgres: db.postgres, workerd: `miniflare ${workerd}`, logs };
}

interface ScratchDatabase {
  name: string;
  url: string;
  postgres: string;
  admin(sql: string, params?: unknown[]): Promise<unknown>;
  drop(): Promise<void>;
}

/** poolgate_wan_<pid> on the server of `sourceUrl`, created fresh; refuses the embedded PGlite. */
async function createScratchDatabase(sourceUrl: string): Promise<ScratchDatabase> {
  const admin = new pg.Client({ connectionString: sourceUrl, application_name: 'poolgate-wan-admin', connectionTimeoutMillis: 5_000 });
  admin.on('error', () => {});
  try {
    await admin.connect();
  } catch (err) {
    throw new WanError(`cannot reach PostgreSQL at ${new URL(sourceUrl).host} (${(err as Error).message}); set BENCH_DATABASE_URL`, {
      cause: err,
    });
  }
  const name = `poolgate_wan_${process.pid}`;
  let postgres: string;
  try {
    const version = (await admin.query<{ v: string }>('SELECT version() AS v')).rows[0]!.v;
    if (/PGlite|emscripten|wasm32/i.test(version))
      throw new WanError('refusing the embedded PGlite: point BENCH_DATABASE_URL at a real PostgreSQL');
    postgres = (await admin.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v.split(' ')[0]!;
    await dropStaleDatabases(admin, new URL(sourceUrl), 'poolgate_wan_');
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${name}`);
  } catch (err) {
    await admin.end().catch(() => {});
    throw err;
  }
  const url = new URL(sourceUrl);
  url.pathname = `/${name}`;
  const pool = new pg.Pool({ connectionString: url.toString(), max: 1, application_name: 'poolgate-wan-admin' });
  pool.on('error', () => {});
  let dropping: Promise<void> | undefined;
  return {
    name,
    url: url.toString(),
    postgres,
    admin: (sql, params) => pool.query(sql, params),
    drop: () =>
      (dropping ??= (async () => {
        await pool.end().catch(() => {});
        try {
          await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        } finally {
          await admin.end().catch(() => {});
        }
      })()),
  };
}

// ---------------------------------------------------------------------------------------------
// Measuring

interface Tally {
  samples: number[];
  statuses: Record<string, number>;
  errors: number;
  timings: Record<string, number[]>;
  dbDesc?: string;
  firstError?: string;
  trips: Record<HopId, { roundTrips: number; connections: number }>;
}

const emptyTally = (): Tally => ({
  samples: [],
  statuses: {},
  errors: 0,
  timings: {},
  trips: {
    edgeDb: { roundTrips: 0, connections: 0 },
    edgeNode: { roundTrips: 0, connections: 0 },
    nodeDb: { roundTrips: 0, connections: 0 },
  },
});

function addTrips(t: Tally, before: Record<HopId, LatencyProxyStats>, after: Record<HopId, LatencyProxyStats>): void {
  for (const h of HOP_IDS) {
    t.trips[h].roundTrips += after[h].roundTripCount - before[h].roundTripCount;
    t.trips[h].connections += after[h].connectionCount - before[h].connectionCount;
  }
}

/**
 * The routes of one phase, interleaved request by request (A B A B…), so drift on a shared
 * machine lands on each alike. What the proxies count from the start of one request to the start
 * of the next belongs to the first: its own trips and what it left running after its response.
 */
async function measurePhase(
  topo: Topology,
  agent: http.Agent,
  phase: WanRoute[],
  plan: { requests: number; warmups: number; settleMs: number },
  signal: AbortSignal | undefined,
): Promise<{ tallies: Map<string, Tally>; absent: WanRoute[] }> {
  const warmupStatuses = new Map(phase.map((r) => [r.id, [] as number[]]));
  for (let i = 0; i < Math.max(1, plan.warmups); i++) {
    for (const r of phase) {
      signal?.throwIfAborted();
      const a = await send(agent, topo.origin, r, i).catch(() => undefined);
      warmupStatuses.get(r.id)!.push(a?.status ?? 0);
    }
  }
  const absent = phase.filter((r) => r.optional && warmupStatuses.get(r.id)!.every((status) => status === 404));
  const routes = phase.filter((r) => !absent.includes(r));
  const tallies = new Map(routes.map((r) => [r.id, emptyTally()]));
  await sleep(plan.settleMs);
  let before = snapshot(topo.proxies);
  let last: Tally | undefined;
  for (let i = 0; i < plan.requests; i++) {
    for (const r of routes) {
      signal?.throwIfAborted();
      const at = snapshot(topo.proxies);
      if (last) addTrips(last, before, at);
      before = at;
      const t = tallies.get(r.id)!;
      last = t;
      try {
        const a = await send(agent, topo.origin, r, plan.warmups + i);
        t.samples.push(a.ms);
        t.statuses[a.status] = (t.statuses[a.status] ?? 0) + 1;
        if (a.status !== r.status) {
          t.errors++;
          t.firstError ??= `${a.status} ${a.body.slice(0, 200)}`;
        }
        for (const [name, ms] of timingsOf(a.serverTiming)) (t.timings[name] ??= []).push(ms);
        t.dbDesc = dbDescOf(a.serverTiming) ?? t.dbDesc;
      } catch (err) {
        t.errors++;
        t.firstError ??= (err as Error).message;
      }
    }
  }
  await sleep(plan.settleMs);
  if (last) addTrips(last, before, snapshot(topo.proxies));
  return { tallies, absent };
}

/** One more request of `route`, alone, with every round trip it causes on each hop. */
async function traceOne(topo: Topology, agent: http.Agent, route: WanRoute, i: number, settleMs: number): Promise<TraceStep[]> {
  await sleep(settleMs);
  const connectionsBefore = snapshot(topo.proxies);
  const t0 = now();
  const a = await send(agent, topo.origin, route, i).catch(() => undefined);
  const tEnd = t0 + (a?.ms ?? Infinity);
  await sleep(settleMs);
  const steps: TraceStep[] = [];
  for (const hop of HOP_IDS) {
    const seen = new Set<number>();
    // Every exchange kept is read in order, so statements prepared before this request are known by name.
    const prepared = new Map<number, Map<string, string>>();
    for (const e of topo.proxies[hop].exchanges()) {
      if (!prepared.has(e.connection)) prepared.set(e.connection, new Map());
      const what = describeBurst(hop, e.head, prepared.get(e.connection)!);
      if (e.atMs < t0) continue;
      const fresh = e.connection > connectionsBefore[hop].connectionCount && !seen.has(e.connection);
      seen.add(e.connection);
      if (!e.roundTrip && !fresh) continue;
      steps.push({
        hop,
        connection: e.connection,
        atMs: e.atMs - t0,
        what: e.roundTrip ? what : `${what} (no answer)`,
        upBytes: e.upBytes,
        downBytes: e.downBytes,
        beforeResponse: e.atMs < tEnd,
        newConnection: fresh,
      });
    }
  }
  return steps.sort((x, y) => x.atMs - y.atMs);
}

/** Distance alone, for a traced request: round trips and handshakes before the response × their RTT. */
function distanceOf(trace: TraceStep[], model: WanResult['model']): number {
  let ms = 0;
  for (const s of trace) {
    if (!s.beforeResponse) continue;
    const rtt = model.rttMs[s.hop];
    if (s.newConnection) ms += model.handshakeRoundTrips * rtt;
    if (!s.what.endsWith('(no answer)')) ms += rtt;
  }
  return ms;
}

/** The Server-Timing `db` desc in words: "neon-http 2q" → "edge: Neon HTTP, 2 queries in one request". */
function servedBy(desc: string | undefined): string {
  const m = /^(neon-http|neon-ws|forwarded|pg-pool) (\d+)q$/.exec(desc ?? '');
  if (!m) return desc ?? '–';
  const n = Number(m[2]);
  if (m[1] === 'forwarded') return 'forwarded to the Node function';
  if (m[1] === 'neon-ws') return `edge: Neon WebSocket session of the request, ${n} queries`;
  if (m[1] === 'neon-http') return n === 1 ? 'edge: Neon HTTP, one query' : `edge: Neon HTTP read batch, ${n} queries`;
  return `${m[1]}, ${n} queries`;
}

function routeResult(route: WanRoute, t: Tally, requests: number, trace: TraceStep[], model: WanResult['model']): WanRouteResult {
  const lat = latencyOf(Float64Array.from(t.samples));
  const per = (n: number) => n / Math.max(1, requests);
  const timingP50 = Object.fromEntries(Object.entries(t.timings).map(([name, v]) => [name, latencyOf(Float64Array.from(v)).p50]));
  const nodeP50 = timingP50['node-total'];
  return {
    id: route.id,
    label: route.label,
    method: route.method,
    path: route.path,
    how: route.how ?? servedBy(t.dbDesc),
    requests,
    errors: t.errors,
    statuses: t.statuses,
    latencyMs: { ...lat, min: t.samples.length ? Math.min(...t.samples) : NaN },
    hops: Object.fromEntries(
      HOP_IDS.map((h) => [h, { roundTrips: per(t.trips[h].roundTrips), connections: per(t.trips[h].connections) }]),
    ) as Record<HopId, HopFigures>,
    ...(nodeP50 !== undefined ? { nodeTotalP50Ms: nodeP50 } : {}),
    serverTimingP50Ms: timingP50,
    ...(t.dbDesc ? { dbDesc: t.dbDesc } : {}),
    trace,
    distanceMs: distanceOf(trace, model),
  };
}

// ---------------------------------------------------------------------------------------------
// Targets

const f1 = (n: number | undefined) => (n === undefined || Number.isNaN(n) ? '–' : n.toFixed(1));

export function evaluateWanTargets(r: Pick<WanResult, 'routes' | 'model'>): WanTarget[] {
  const route = (id: string) => r.routes.find((x) => x.id === id && x.errors < x.requests);
  const rtt = r.model.rttMs;
  const targets: WanTarget[] = [];
  const check = (id: string, target: string, value: number | undefined, budget: number | undefined, how: string) =>
    targets.push({
      id,
      target,
      measured: value === undefined || budget === undefined ? 'not measured' : `${how} (budget ${f1(budget)} ms)`,
      status: value === undefined || budget === undefined ? 'not measured' : value <= budget ? 'met' : 'missed',
    });
  const read = route('edge-read');
  const bare = route('bare-neon');
  check(
    'read-rtt',
    `edge one-shot read p50 ≤ one edge→DB RTT + 3 ms`,
    read?.latencyMs.p50,
    rtt.edgeDb + 3,
    `p50 ${f1(read?.latencyMs.p50)} ms, ${f1(read?.hops.edgeDb.roundTrips)} edge→DB round trips/request`,
  );
  check(
    'read-bare',
    'edge one-shot read p50 ≤ bare neon() p50 + 2 ms',
    read?.latencyMs.p50,
    bare ? bare.latencyMs.p50 + 2 : undefined,
    `p50 ${f1(read?.latencyMs.p50)} ms vs bare ${f1(bare?.latencyMs.p50)} ms (${read && bare ? `${read.latencyMs.p50 - bare.latencyMs.p50 >= 0 ? '+' : ''}${(read.latencyMs.p50 - bare.latencyMs.p50).toFixed(1)}` : '–'} ms)`,
  );
  for (const id of ['fwd-patch', 'fwd-post']) {
    const w = route(id);
    check(
      `write-${id}`,
      `forwarded write (${w?.label ?? id}) p50 ≤ one edge→Node RTT + the Node-side time (p50) + 2 ms`,
      w?.latencyMs.p50,
      w?.nodeTotalP50Ms !== undefined ? rtt.edgeNode + w.nodeTotalP50Ms + 2 : undefined,
      `p50 ${f1(w?.latencyMs.p50)} ms; Node side ${f1(w?.nodeTotalP50Ms)} ms, ${f1(w?.hops.edgeNode.roundTrips)} forward round trips/request`,
    );
  }
  // The issue's WebSocket read was the summary (8 round trips); a read that still needs a session is measured too.
  for (const [id, what] of [
    ['edge-summary', 'the WebSocket read of the issue'],
    ['edge-session', 'the interactive read (a session at the edge)'],
  ] as const) {
    const x = route(id);
    if (!x && !r.routes.some((y) => y.id === id) && id === 'edge-session') continue; // not in this build
    check(
      `session-${id}`,
      `${what}, ${x?.label ?? id}: p50 ≤ 2 edge→DB RTTs + 5 ms`,
      x?.latencyMs.p50,
      2 * rtt.edgeDb + 5,
      `p50 ${f1(x?.latencyMs.p50)} ms, ${f1(x?.hops.edgeDb.roundTrips)} edge→DB round trips/request (${x?.how ?? '–'})`,
    );
  }
  return targets;
}

// ---------------------------------------------------------------------------------------------
// The run

/**
 * Starts the WAN topology on a scratch database, measures every route, stops everything.
 * @example
 * const result = await runWanBench({ quick: true, log: console.log });
 * writeFileSync('wan.md', renderWanMarkdown(result));
 */
export async function runWanBench(options: WanOptions = {}): Promise<WanResult> {
  const started = new Date();
  const t0 = now();
  const loadAvgStart = os.loadavg();
  const log = options.log ?? (() => {});
  const quick = options.quick ?? false;
  const oneWayMs: Record<HopId, number> = {
    edgeDb: options.edgeToDbMs ?? 15,
    edgeNode: options.edgeToNodeMs ?? 10,
    nodeDb: options.nodeToDbMs ?? 1,
  };
  const model: WanResult['model'] = {
    oneWayMs,
    rttMs: { edgeDb: 2 * oneWayMs.edgeDb, edgeNode: 2 * oneWayMs.edgeNode, nodeDb: 2 * oneWayMs.nodeDb },
    handshakeRoundTrips: options.handshakeRoundTrips ?? 1,
    requestsPerRoute: options.requests ?? (quick ? 10 : 30),
    warmupsPerRoute: options.warmups ?? (quick ? 2 : 5),
  };
  // Long enough for what a response leaves running (a session's COMMIT and close: two round trips) to finish.
  const settleMs = 2 * Math.max(...Object.values(model.rttMs)) + 60;
  const sourceUrl = options.sourceUrl ?? process.env.BENCH_DATABASE_URL ?? process.env.DATABASE_URL ?? DEFAULT_URL;
  const stops: (() => Promise<unknown>)[] = [];
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const topo = await startTopology(sourceUrl, model, stops, log, options.signal);
    const notes: string[] = [];
    const routes: WanRouteResult[] = [];
    // The edge read and the bare neon() call interleaved (their difference is a target); the rest one by one.
    const phases: WanRoute[][] = [
      ROUTES.filter((r) => r.id === 'edge-read' || r.id === 'bare-neon'),
      ...ROUTES.filter((r) => r.id !== 'edge-read' && r.id !== 'bare-neon').map((r) => [r]),
    ];
    let i = 0;
    for (const phase of phases) {
      const { tallies, absent } = await measurePhase(
        topo,
        agent,
        phase,
        { requests: model.requestsPerRoute, warmups: model.warmupsPerRoute, settleMs },
        options.signal,
      );
      for (const r of absent) notes.push(`${r.label} answered 404 on every warm-up: not in this build, not measured.`);
      for (const r of phase.filter((x) => !absent.includes(x))) {
        options.signal?.throwIfAborted();
        const trace = await traceOne(topo, agent, r, 1_000 + i++, settleMs);
        const res = routeResult(r, tallies.get(r.id)!, model.requestsPerRoute, trace, model);
        routes.push(res);
        const t = tallies.get(r.id)!;
        if (t.firstError) notes.push(`${r.label}: ${t.errors} of ${model.requestsPerRoute} requests failed; first: ${t.firstError}`);
        log(
          `${r.label.padEnd(34)} p50 ${f1(res.latencyMs.p50).padStart(6)} ms  p99 ${f1(res.latencyMs.p99).padStart(6)} ms  ` +
            HOP_IDS.map((h) => `${HOPS[h].label} ${res.hops[h].roundTrips.toFixed(2)}`).join('  ') +
            (res.errors ? `  errors ${res.errors}` : ''),
        );
      }
    }
    const proxies = snapshot(topo.proxies);
    await measureLoopback(topo, agent, phases, routes, model, options.signal, log);
    const edgeRead = routes.find((r) => r.id === 'edge-read');
    const bare = routes.find((r) => r.id === 'bare-neon');
    // The comparison is like for like only if both answer the same.
    const answerOf = (id: string) =>
      send(
        agent,
        topo.origin,
        ROUTES.find((r) => r.id === id)!,
        0,
      ).catch(() => undefined);
    const edgeBody = await answerOf('edge-read');
    const bareBody = await answerOf('bare-neon');
    if (edgeBody && bareBody && edgeBody.body !== bareBody.body) {
      notes.push('The bare neon() worker answered differently from GET /api/users/:id: the comparison is not like for like.');
    }
    addNotes(notes, routes, proxies, model, edgeRead, bare);
    const load = Math.max(loadAvgStart[0]!, os.loadavg()[0]!);
    if (load > os.availableParallelism()) {
      notes.push(
        `The machine was busy (1-minute load average up to ${load.toFixed(1)} on ${os.availableParallelism()} cores): ` +
          'part of every figure above its distance is waiting for a CPU; the round-trip counts do not depend on it.',
      );
    }
    const gatewayErrors = topo.logs.filter((l) => /error|fail/i.test(l)).slice(0, 3);
    for (const l of gatewayErrors) notes.push(`log: ${l.slice(0, 300)}`);
    const cpus = os.cpus();
    const partial = { routes, model };
    return {
      version: 1,
      mode: quick ? 'quick' : 'full',
      date: localDate(started),
      startedAt: started.toISOString(),
      finishedAt: new Date().toISOString(),
      durationSec: (now() - t0) / 1000,
      model,
      machine: {
        cpus: os.availableParallelism?.() ?? cpus.length,
        cpuModel: cpus[0]?.model.trim() ?? 'unknown CPU',
        node: process.version,
        postgres: topo.postgres,
        workerd: topo.workerd,
        loadAvg: { start: loadAvgStart, end: os.loadavg() },
      },
      routes,
      proxies,
      targets: evaluateWanTargets(partial),
      notes,
    };
  } finally {
    agent.destroy();
    for (const stop of stops.splice(0).reverse()) await stop().catch(() => {});
  }
}

/**
 * Every route again with all delays at 0: what the same path costs on loopback, so "WAN p50 −
 * loopback p50" is what distance added, to be read against what its round trips predict.
 */
async function measureLoopback(
  topo: Topology,
  agent: http.Agent,
  phases: WanRoute[][],
  routes: WanRouteResult[],
  model: WanResult['model'],
  signal: AbortSignal | undefined,
  log: (line: string) => void,
): Promise<void> {
  for (const p of Object.values(topo.proxies)) p.setDelays(0);
  const requests = Math.max(5, Math.round(model.requestsPerRoute / 3));
  log(`the same routes with every delay at 0 (the local floor), ${requests} requests each…`);
  for (const phase of phases) {
    const measured = phase.filter((r) => routes.some((x) => x.id === r.id));
    if (!measured.length) continue;
    const { tallies } = await measurePhase(topo, agent, measured, { requests, warmups: 2, settleMs: 50 }, signal);
    for (const [id, t] of tallies) {
      const lat = latencyOf(Float64Array.from(t.samples));
      routes.find((x) => x.id === id)!.loopback = { requests: t.samples.length, p50Ms: lat.p50, p99Ms: lat.p99 };
    }
  }
}

/** Observations drawn from this run's own figures. */
function addNotes(
  notes: string[],
  routes: WanRouteResult[],
  proxies: Record<HopId, LatencyProxyStats>,
  model: WanResult['model'],
  edgeRead: WanRouteResult | undefined,
  bare: WanRouteResult | undefined,
): void {
  const late = HOP_IDS.map(
    (h) => `${HOPS[h].label} mean ${proxies[h].lateMeanMs.toFixed(2)} ms, worst ${proxies[h].lateMaxMs.toFixed(1)} ms`,
  );
  notes.push(
    `The model’s own error: a chunk is released this much after its modelled time (${late.join('; ')}). ` +
      'Every figure includes workerd, the Neon proxy, the gateway and the client sharing the 2 cores, on loopback.',
  );
  if (edgeRead?.loopback && bare?.loopback) {
    const added = edgeRead.latencyMs.p50 - edgeRead.loopback.p50Ms;
    notes.push(
      `On loopback (every delay 0) the edge read’s p50 is ${edgeRead.loopback.p50Ms.toFixed(1)} ms and the bare neon() call’s ${bare.loopback.p50Ms.toFixed(1)} ms: ` +
        `“one edge→DB RTT + 3 ms” holds only where the local path takes under 3 ms. Distance added ${added.toFixed(1)} ms to the edge read ` +
        `for its ${edgeRead.hops.edgeDb.roundTrips.toFixed(2)} round trip(s) of ${model.rttMs.edgeDb} ms.`,
    );
  }
  if (edgeRead && bare) {
    const gap = edgeRead.latencyMs.p50 - bare.latencyMs.p50;
    notes.push(
      `poolgate’s own cost on the edge read: ${gap >= 0 ? '+' : ''}${gap.toFixed(1)} ms at p50 over a bare neon() call running the same SQL through the same proxy path ` +
        `(${edgeRead.hops.edgeDb.roundTrips.toFixed(2)} vs ${bare.hops.edgeDb.roundTrips.toFixed(2)} edge→DB round trips/request).`,
    );
  }
  for (const r of routes) {
    const before = r.trace.filter((s) => s.beforeResponse && !s.what.endsWith('(no answer)'));
    const after = r.trace.filter((s) => !s.beforeResponse && !s.what.endsWith('(no answer)'));
    const conns = r.trace.filter((s) => s.newConnection);
    if (conns.length === 0 && after.length === 0) continue;
    notes.push(
      `${r.label} (traced request): ${before.length} round trip(s) before the response, ${after.length} after it; ` +
        `${conns.length} new connection(s) (${conns.map((c) => HOPS[c.hop].label).join(', ') || 'none'}), each charged ${model.handshakeRoundTrips} handshake round trip(s).`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Rendering

const mark = { met: '✅ met', missed: '❌ missed', 'not measured': '– not measured' } as const;

/**
 * The result as Markdown. `headingLevel` is the level of its title (1 for a file of its own; 2 to
 * embed it as a section of another report).
 */
export function renderWanMarkdown(r: WanResult, { headingLevel = 1 }: { headingLevel?: number } = {}): string {
  const m = r.model;
  const h1 = '#'.repeat(headingLevel);
  const h2 = `${h1}#`;
  const h3 = `${h2}#`;
  const lines: string[] = [];
  const load = (l: number[]) => l.map((x) => x.toFixed(1)).join(' ');
  lines.push(`${h1} poolgate WAN model — ${r.date}${r.mode === 'quick' ? ' (quick)' : ''}`, '');
  lines.push(
    `${r.machine.cpus} cores ${r.machine.cpuModel}, Node ${r.machine.node}, PostgreSQL ${r.machine.postgres}, ${r.machine.workerd}; ` +
      `load average ${load(r.machine.loadAvg.start)} at the start, ${load(r.machine.loadAvg.end)} at the end. ` +
      `${m.requestsPerRoute} sequential requests per route after ${m.warmupsPerRoute} warm-ups; ${r.durationSec.toFixed(0)} s.`,
    '',
  );
  lines.push(`${h2} The model`, '');
  lines.push('| hop | one-way | RTT | what |', '| --- | ---: | ---: | --- |');
  for (const h of HOP_IDS) lines.push(`| ${HOPS[h].label} | ${m.oneWayMs[h]} ms | ${m.rttMs[h]} ms | ${HOPS[h].what} |`);
  lines.push(
    '',
    `Each hop is a TCP proxy that holds every chunk for the one-way delay of its direction, in order, and charges a new connection ` +
      `${m.handshakeRoundTrips} round trip(s) of handshake. The client → workerd hop and the Neon proxy → PostgreSQL hop stay on loopback. ` +
      'A round trip is a client burst answered by a server burst on one connection (direction changes), counted by the proxies.',
    '',
  );
  lines.push(`${h2} Per route`, '');
  lines.push(
    '| route | served by | p50 ms | p99 ms | edge→DB RTT/req | edge→Node RTT/req | Node→DB RTT/req | new conns/req (edge→DB, edge→Node, Node→DB) | distance ms | loopback p50 ms | p50 − loopback p50 ms | errors |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |',
  );
  for (const x of r.routes) {
    lines.push(
      `| ${x.label} | ${x.how}${x.dbDesc ? ` (${x.dbDesc})` : ''} | ${f1(x.latencyMs.p50)} | ${f1(x.latencyMs.p99)} | ` +
        `${x.hops.edgeDb.roundTrips.toFixed(2)} | ${x.hops.edgeNode.roundTrips.toFixed(2)} | ${x.hops.nodeDb.roundTrips.toFixed(2)} | ` +
        `${HOP_IDS.map((h) => x.hops[h].connections.toFixed(2)).join(', ')} | ${f1(x.distanceMs)} | ${f1(x.loopback?.p50Ms)} | ${f1(x.loopback ? x.latencyMs.p50 - x.loopback.p50Ms : undefined)} | ${x.errors} |`,
    );
  }
  lines.push(
    '',
    '“distance”: what the round trips and handshakes of the route’s traced request cost before its response, at the model’s RTTs — ' +
      'the floor for that route under this model. “loopback p50”: the same route with every delay at 0, after the WAN pass — the local ' +
      'floor (runtimes, proxies, Postgres, the shared cores). Where “p50 − loopback p50” matches “distance”, distance costs the route ' +
      'its round trips and nothing more. ' +
      'Round trips per request count everything between one request’s start and the next’s, including what a response leaves running (a WebSocket’s close).',
    '',
  );
  lines.push(
    `${h2} Where the time goes (Server-Timing p50s)`,
    '',
    'Each figure is the p50 of its own series, so they add up only roughly. “edge total” is the edge app’s own time; ' +
      '“client − edge total” is the client and miniflare’s entry worker (loopback). For forwarded writes, “forward − RTT − Node” ' +
      'is what the forward costs beyond its round trip and the Node app’s own total: the Node HTTP server, workerd’s fetch, the proxy.',
    '',
    '| route | client p50 | edge total | client − edge total | edge DB time | forward | Node total | forward − RTT − Node | Node DB time |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const x of r.routes) {
    const t = x.serverTimingP50Ms;
    const total = t.total;
    if (total === undefined) continue; // the bare worker sends no Server-Timing
    const fwdRest =
      t.forward !== undefined && t['node-total'] !== undefined
        ? t.forward - m.rttMs.edgeNode * x.hops.edgeNode.roundTrips - t['node-total']
        : undefined;
    lines.push(
      `| ${x.label} | ${f1(x.latencyMs.p50)} | ${f1(total)} | ${f1(x.latencyMs.p50 - total)} | ${f1(t.db)} | ${f1(t.forward)} | ${f1(t['node-total'])} | ${f1(fwdRest)} | ${f1(t['node-db'])} |`,
    );
  }
  lines.push('');
  lines.push(`${h2} Targets`, '', '| target | measured | |', '| --- | --- | --- |');
  for (const t of r.targets) lines.push(`| ${t.target} | ${t.measured} | ${mark[t.status]} |`);
  lines.push('', `${h2} Where the round trips go (one traced request per route)`, '');
  for (const x of r.routes) {
    lines.push(`${h3} ${x.label} — p50 ${f1(x.latencyMs.p50)} ms`, '');
    if (!x.trace.length) {
      lines.push('No round trips seen.', '');
      continue;
    }
    lines.push('| at ms | hop | conn | client sent | ↑ B | ↓ B | |', '| ---: | --- | ---: | --- | ---: | ---: | --- |');
    for (const s of x.trace) {
      const flags = [s.newConnection ? 'new connection' : '', s.beforeResponse ? '' : 'after the response'].filter(Boolean).join(', ');
      lines.push(
        `| ${s.atMs.toFixed(1)} | ${HOPS[s.hop].label} | ${s.connection} | ${s.what.replace(/\|/g, '\\|')} | ${s.upBytes} | ${s.downBytes} | ${flags} |`,
      );
    }
    lines.push('');
  }
  lines.push(`${h2} Proxies over the whole run`, '');
  lines.push(
    '| hop | connections | round trips | bytes ↑ | bytes ↓ | release late, mean / worst ms |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const h of HOP_IDS) {
    const p = r.proxies[h];
    lines.push(
      `| ${HOPS[h].label} | ${p.connectionCount} | ${p.roundTripCount} | ${p.bytesUp} | ${p.bytesDown} | ${p.lateMeanMs.toFixed(2)} / ${p.lateMaxMs.toFixed(1)} |`,
    );
  }
  if (r.notes.length) {
    lines.push('', `${h2} Notes`, '');
    for (const n of r.notes) lines.push(`- ${n}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Writes `<dir>/<date>-wan.md` and `.json` (quick: `-wan-quick`); returns their common base path. */
export function writeWanResults(r: WanResult, dir = fileURLToPath(new URL('./results/', import.meta.url))): string {
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `${r.date}-wan${r.mode === 'quick' ? '-quick' : ''}`);
  writeFileSync(`${base}.md`, renderWanMarkdown(r));
  writeFileSync(`${base}.json`, `${JSON.stringify(r, null, 2)}\n`);
  return base;
}

// ---------------------------------------------------------------------------------------------
// CLI

const USAGE = `usage: npx tsx bench/wan.ts [--quick] [--requests N] [--warmups N]
                           [--edge-db-ms 15] [--edge-node-ms 10] [--node-db-ms 1] [--handshake 1]

  --quick          10 requests per route after 2 warm-ups (default 30 after 5), under 30 s
  --edge-db-ms     one-way delay workerd → Neon endpoint
  --edge-node-ms   one-way delay workerd → Node function
  --node-db-ms     one-way delay Node → PostgreSQL
  --handshake      round trips a new connection pays (1: TCP, 2: TCP + TLS 1.3)

Database: BENCH_DATABASE_URL, else DATABASE_URL, else ${DEFAULT_URL}; works in poolgate_wan_<pid>,
created there and dropped at the end. Writes bench/results/<date>-wan.md and .json (quick: -wan-quick).`;

async function main(): Promise<number> {
  let values;
  try {
    values = parseArgs({
      options: {
        quick: { type: 'boolean' },
        requests: { type: 'string' },
        warmups: { type: 'string' },
        'edge-db-ms': { type: 'string' },
        'edge-node-ms': { type: 'string' },
        'node-db-ms': { type: 'string' },
        handshake: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    console.error(`wan: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const num = (name: 'requests' | 'warmups' | 'edge-db-ms' | 'edge-node-ms' | 'node-db-ms' | 'handshake', min: number) => {
    const raw = values[name];
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (
      !Number.isFinite(n) ||
      n < min ||
      (name !== 'edge-db-ms' && name !== 'edge-node-ms' && name !== 'node-db-ms' && !Number.isInteger(n))
    ) {
      throw new Error(`--${name} must be ${name.endsWith('-ms') ? 'a number' : 'an integer'} ≥ ${min}, got "${raw}"`);
    }
    return n;
  };
  let options: WanOptions;
  try {
    options = {
      quick: values.quick ?? false,
      requests: num('requests', 1),
      warmups: num('warmups', 0),
      edgeToDbMs: num('edge-db-ms', 0),
      edgeToNodeMs: num('edge-node-ms', 0),
      nodeToDbMs: num('node-db-ms', 0),
      handshakeRoundTrips: num('handshake', 0),
    };
  } catch (err) {
    console.error(`wan: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const controller = new AbortController();
  const onSignal = () => {
    console.log('wan: stopping (cleaning up; the scratch database is dropped)…');
    controller.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const result = await runWanBench({ ...options, log: (line) => console.log(`  ${line}`), signal: controller.signal });
    const base = writeWanResults(result);
    console.log('');
    for (const t of result.targets) console.log(`${mark[t.status].padEnd(16)} ${t.target}: ${t.measured}`);
    console.log(`\nwan: wrote ${base}.md and .json in ${result.durationSec.toFixed(0)} s`);
    return 0;
  } catch (err) {
    const why = controller.signal.aborted ? 'stopped' : err instanceof WanError ? err.message : ((err as Error).stack ?? String(err));
    console.error(`wan: failed: ${why}`);
    return controller.signal.aborted ? 130 : 1;
  }
}

runIfMain(import.meta.url, main);
