/**
 * The bench's results as data (BenchResults), the derived figures (ratios against the baselines
 * of the same run, the targets met or missed), and their rendering as Markdown and JSON for
 * bench/results/. Every figure carries the server it was measured on, and so its auth and TLS.
 * Pure functions of the data (beside the run's stamp: its dates and the machine): nothing here measures anything.
 */
import os from 'node:os';
import type { PoolStats } from '../src/db/types.js';
import type { BurstResult, Latency } from './load.js';
import type { GroupDelta, ProfileSummary } from './profile.js';

export type StepTarget =
  | 'connect'
  | 'gateway-read-vs-connect'
  | 'ceiling'
  | 'ceiling-prepared'
  | 'ceiling-pipelined'
  | 'pgbench'
  | 'gateway-read'
  | 'gateway-write'
  | 'gateway-summary'
  | 'edge-read-http'
  | 'edge-read-ws'
  | 'edge-write';

export const TARGET_INFO: Record<StepTarget, { label: string; what: string }> = {
  connect: {
    label: 'baseline: connect-per-request',
    what: 'bare Hono, a new pg.Client per request (connect, one query, end), GET /api/users/:id, on the private SCRAM + TLS server',
  },
  'gateway-read-vs-connect': {
    label: 'Node gateway read (connect’s server)',
    what: 'the Node gateway’s GET /api/users/:id on the same server as connect-per-request, its pool connecting once, in alternating rounds with it',
  },
  ceiling: {
    label: 'baseline: ceiling, plain',
    what: 'bare Hono on pg.Pool (max 20), no middleware, unnamed statements (Parse + Bind + Execute every time), GET /api/users/:id',
  },
  'ceiling-prepared': {
    label: 'baseline: ceiling, prepared',
    what: 'the same route and pool on named prepared statements ({ name, text, values }: parsed once per connection, then Bind + Execute)',
  },
  'ceiling-pipelined': {
    label: 'baseline: ceiling, pipelined',
    what: 'the same route on a few pg.Clients opened with node-postgres 8.23’s `pipeline: true` and named statements, each query written at once to the connection with the fewest in flight',
  },
  pgbench: { label: 'baseline: pgbench -S', what: 'pgbench select-only, extended protocol, one connection per client' },
  'gateway-read': { label: 'Node gateway read', what: 'GET /api/users/:id on the pg Pool' },
  'gateway-write': { label: 'Node gateway write', what: 'POST /api/workouts (BEGIN, 2 INSERTs, COMMIT)' },
  'gateway-summary': { label: 'Node gateway summary', what: 'GET /api/users/:id/summary (read-only transaction, 3 queries)' },
  'edge-read-http': { label: 'edge read, Neon HTTP', what: 'workerd → neon() over HTTP → local Neon proxy, GET /api/users/:id' },
  'edge-read-ws': {
    label: 'edge read, Neon WebSocket',
    what: 'workerd → per-request WebSocket Pool → local proxy, GET /api/users/:id/summary',
  },
  'edge-write': { label: 'edge write, forwarded', what: 'workerd → signed forward → Node gateway, POST /api/workouts' },
};

export type ServerKey = 'shared' | 'private';

export interface ServerInfo {
  /** host:port */
  server: string;
  /** The scratch database the bench worked in. */
  database: string;
  postgres: string;
  maxConnections: number;
  /** How the bench's connections authenticate, in full (method, TLS version and cipher). */
  auth: string;
  /** The same in a few words, for the tables ("trust, no TLS", "SCRAM, TLS"). */
  authShort: string;
  /** The private instance: what differs from the shared server. */
  differences?: string[];
}

export interface StepResult {
  target: StepTarget;
  connections: number;
  /** The server the step ran on (shared unless said otherwise), and so its auth and TLS. */
  server?: ServerKey;
  /** Why the step did not run (then no figures). */
  skipped?: string;
  windowMs?: number;
  ok?: number;
  rps?: number;
  latencyMs?: Latency;
  non2xx?: number;
  socketErrors?: number;
  errors?: number;
  statusCounts?: Record<string, number>;
  firstError?: string;
  /** Peak Postgres connections held by this target (by application_name), sampled every ~50 ms. */
  pgPeak?: number;
  /** Peak of all connections to the bench database during the step (other idle targets included). */
  pgPeakAll?: number;
  pgByApp?: Record<string, number>;
  /** CPU of the server's process tree over the measured window, per 2xx response. */
  serverCpuUsPerRequest?: number;
  /** The same CPU as a share of one core over the window (1 = one core fully busy). */
  serverCpuCores?: number;
  /** read- and write-like system calls of the server's process tree per 2xx response. */
  serverSyscallsPerRequest?: number;
  /** pgbench's own tps for the whole run, warm-up included. */
  reportedTps?: number;
}

export interface ScenarioResult {
  id: string;
  name: string;
  guideClaim: string;
  /** The guide's figure in ms, when it gave one. */
  guideMs?: number;
  how: string;
  runs: BurstResult[];
  firstMs: number;
  medianMs: number;
  errors: number;
  pgPeak: number;
  pgPoolMax?: number;
  skipped?: string;
}

export type TargetStatus = 'met' | 'missed' | 'not measured';

export interface TargetCheck {
  id: string;
  goal: string;
  measured: string;
  status: TargetStatus;
}

export interface ProfileReport {
  step: string;
  /** What the gateway was profiled against (the `ceiling` figures); "ceiling" in older results. */
  baselineLabel?: string;
  ceiling: ProfileSummary;
  gateway: ProfileSummary;
  delta: GroupDelta[];
  files: string[];
  findings: string[];
}

/** A later phase's part of the report (the WAN model): its own Markdown, and its data for the .json. */
export interface PhaseSection {
  name?: string;
  title: string;
  markdown: string;
  data?: unknown;
}

/** When and how a bench report was made (the main bench and the WAN model alike). */
export interface RunStamp {
  version: 1;
  mode: 'full' | 'quick';
  date: string;
  startedAt: string;
  finishedAt: string;
  durationSec: number;
}

/** The stamp of a run that started at `startedAt` and ends now. */
export function runStamp(mode: RunStamp['mode'], startedAt: Date): RunStamp {
  const finished = new Date();
  return {
    version: 1,
    mode,
    date: localDate(startedAt),
    startedAt: startedAt.toISOString(),
    finishedAt: finished.toISOString(),
    durationSec: (finished.getTime() - startedAt.getTime()) / 1000,
  };
}

/** The machine a run measured on (its results' `machine`). */
export function machine(postgres: string, pgbench: string | undefined): BenchResults['machine'] {
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

/** A results file's date: the machine's local date (YYYY-MM-DD). */
export const localDate = (d = new Date()): string =>
  `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;

export interface BenchResults extends RunStamp {
  machine: {
    cpus: number;
    cpuModel: string;
    memGb: number;
    os: string;
    node: string;
    postgres: string;
    pgbench?: string;
    /** os.loadavg() at the start and at the end: other work on the machine shows here. */
    loadAvg?: { start: number[]; end: number[] };
  };
  database: { server: string; name: string; maxConnections: number };
  /** The servers figures were measured on; `private` is missing when it did not start. */
  servers?: { shared: ServerInfo; private?: ServerInfo };
  /** Why the private SCRAM + TLS instance did not start (connect-per-request then ran on the shared one). */
  privateFailure?: string;
  settings: {
    warmupMs: number;
    durationMs: number;
    pairRounds?: number;
    /** From 256 connections on: at least this warm-up and measured time per round. */
    bigWarmupMs?: number;
    bigSegmentMs?: number;
    samplerIntervalMs: number;
    poolMax: number;
    pipelineClients?: number;
    /** Rounds, and measured time per round, of connect-per-request and the gateway beside it. */
    connectRounds?: number;
    connectSegmentMs?: number;
    concurrencies: Partial<Record<StepTarget, number[]>>;
  };
  steps: StepResult[];
  gatewayPool?: PoolStats;
  edgeNodePool?: PoolStats;
  scenarios: ScenarioResult[];
  /** Sections of the phases run after the loopback ones (bench/run.ts LATER_PHASES). */
  sections?: PhaseSection[];
  targets: TargetCheck[];
  profile?: ProfileReport | { skipped: string };
  notes: string[];
}

// ---------------------------------------------------------------------------------------------
// Derived figures

const stepOf = (r: BenchResults, target: StepTarget, c: number) =>
  r.steps.find((s) => s.target === target && s.connections === c && !s.skipped);

export interface RatioRow {
  connections: number;
  subject: StepResult;
  baseline: StepResult;
  ratio: number;
  p50AddedMs: number;
}

/** subject/baseline req/s at every concurrency both ran. */
export function ratioRows(r: BenchResults, subject: StepTarget, baseline: StepTarget): RatioRow[] {
  const rows: RatioRow[] = [];
  for (const s of r.steps) {
    if (s.target !== subject || s.skipped) continue;
    const b = stepOf(r, baseline, s.connections);
    if (!b || !b.rps || s.rps === undefined) continue;
    rows.push({
      connections: s.connections,
      subject: s,
      baseline: b,
      ratio: s.rps / b.rps,
      p50AddedMs: (s.latencyMs?.p50 ?? NaN) - (b.latencyMs?.p50 ?? NaN),
    });
  }
  return rows;
}

export const RATIO_PAIRS: { title: string; subject: StepTarget; baseline: StepTarget; unit: 'ratio' | 'times' }[] = [
  {
    title: 'poolgate / plain ceiling (Node gateway read ÷ bare Hono + pg.Pool, unnamed statements)',
    subject: 'gateway-read',
    baseline: 'ceiling',
    unit: 'ratio',
  },
  {
    title: 'poolgate / prepared ceiling (Node gateway read ÷ bare Hono + pg.Pool, named prepared statements)',
    subject: 'gateway-read',
    baseline: 'ceiling-prepared',
    unit: 'ratio',
  },
  {
    title: 'poolgate / pipelined ceiling (Node gateway read ÷ bare Hono on pipelined pg.Clients)',
    subject: 'gateway-read',
    baseline: 'ceiling-pipelined',
    unit: 'ratio',
  },
  {
    title: 'context: prepared ceiling / plain ceiling (what named statements alone give the bare route)',
    subject: 'ceiling-prepared',
    baseline: 'ceiling',
    unit: 'ratio',
  },
  {
    title: 'poolgate / connect-per-request (Node gateway read ÷ new pg.Client per request, both on the same server)',
    subject: 'gateway-read-vs-connect',
    baseline: 'connect',
    unit: 'times',
  },
  {
    title: 'edge / Node, read (Neon HTTP in workerd ÷ Node gateway, GET /api/users/:id)',
    subject: 'edge-read-http',
    baseline: 'gateway-read',
    unit: 'ratio',
  },
  {
    title: 'edge / Node, interactive read (Neon WebSocket in workerd ÷ Node gateway, /summary)',
    subject: 'edge-read-ws',
    baseline: 'gateway-summary',
    unit: 'ratio',
  },
  {
    title: 'edge / Node, write (forwarded from workerd ÷ Node gateway direct, POST /api/workouts)',
    subject: 'edge-write',
    baseline: 'gateway-write',
    unit: 'ratio',
  },
  {
    title: 'context: plain ceiling / pgbench -S (HTTP + node-postgres ÷ the database alone)',
    subject: 'ceiling',
    baseline: 'pgbench',
    unit: 'ratio',
  },
];

/** The concurrencies issue 13's throughput targets name, and the one with its own bound. */
export const READ_TARGET_CONNECTIONS = [8, 64, 256];

/** The server a step ran on, as the report names it: "shared (trust, no TLS)". */
export function serverLabel(r: BenchResults, s: StepResult): string {
  const key = s.server ?? 'shared';
  const info = r.servers?.[key];
  return info ? `${key} (${info.authShort})` : key;
}

/**
 * One throughput target over several concurrencies: met when every concurrency that ran meets
 * it, "not measured" when none ran (a quick pass runs fewer; the figure says which were missing).
 */
function ratioTarget(r: BenchResults, id: string, goal: string, baseline: StepTarget, min: number, levels: readonly number[]): TargetCheck {
  const parts: string[] = [];
  const absent: number[] = [];
  let ok = true;
  let any = false;
  for (const c of levels) {
    const g = stepOf(r, 'gateway-read', c);
    const b = stepOf(r, baseline, c);
    if (!g?.rps || !b?.rps) {
      absent.push(c);
      continue;
    }
    any = true;
    const ratio = g.rps / b.rps;
    if (ratio < min) ok = false;
    parts.push(`${c}: ${ratio.toFixed(2)}× (${rps(g.rps)} vs ${rps(b.rps)} req/s)`);
  }
  if (!any) return { id, goal, measured: `no step at ${levels.join(', ')} connections`, status: 'not measured' };
  const missing = absent.length ? `; ${absent.join(', ')}: not in this pass` : '';
  return { id, goal, measured: `${parts.join('; ')}${missing}`, status: ok ? 'met' : 'missed' };
}

/** The targets of issues 5 and 13, each met or missed with the measured figures. Never throws. */
export function evaluateTargets(r: BenchResults, poolMax: number): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const notMeasured = (id: string, goal: string, why: string) => checks.push({ id, goal, measured: why, status: 'not measured' });
  const levels = READ_TARGET_CONNECTIONS.join(', ');

  checks.push(
    ratioTarget(
      r,
      'read-vs-plain',
      `Node gateway read ≥ 1.25× the plain ceiling’s req/s at ${levels} connections`,
      'ceiling',
      1.25,
      READ_TARGET_CONNECTIONS,
    ),
  );
  checks.push(
    ratioTarget(
      r,
      'read-vs-prepared',
      `Node gateway read ≥ 0.90× the prepared ceiling’s req/s at ${levels} connections`,
      'ceiling-prepared',
      0.9,
      READ_TARGET_CONNECTIONS,
    ),
  );
  {
    const goal = 'Node gateway read ≥ 0.95× both ceilings’ req/s at 1 connection';
    const g = stepOf(r, 'gateway-read', 1);
    const bases = (['ceiling', 'ceiling-prepared'] as const).map((t) => ({ t, s: stepOf(r, t, 1) }));
    if (g?.rps && bases.every((b) => b.s?.rps)) {
      const ratios = bases.map((b) => ({ name: b.t === 'ceiling' ? 'plain' : 'prepared', ratio: g.rps! / b.s!.rps!, rps: b.s!.rps! }));
      checks.push({
        id: 'read-c1',
        goal,
        measured: `${ratios.map((x) => `${x.ratio.toFixed(2)}× ${x.name} (${rps(x.rps)} req/s)`).join(', ')}; gateway ${rps(g.rps)} req/s, p50 ${ms(g.latencyMs?.p50)} ms`,
        status: ratios.every((x) => x.ratio >= 0.95) ? 'met' : 'missed',
      });
    } else notMeasured('read-c1', goal, 'a step at 1 connection is missing');
  }
  {
    const p99Levels = [1, ...READ_TARGET_CONNECTIONS];
    const goal = `Node gateway read p99 ≤ the bare route’s (the lower of the plain and prepared ceilings’) at ${p99Levels.join(', ')} connections`;
    const parts: string[] = [];
    const absent: number[] = [];
    let ok = true;
    for (const c of p99Levels) {
      const g = stepOf(r, 'gateway-read', c)?.latencyMs?.p99;
      const plain = stepOf(r, 'ceiling', c)?.latencyMs?.p99;
      const prepared = stepOf(r, 'ceiling-prepared', c)?.latencyMs?.p99;
      if (g === undefined || plain === undefined || prepared === undefined) {
        absent.push(c);
        continue;
      }
      if (g > Math.min(plain, prepared)) ok = false;
      parts.push(`${c}: ${ms(g)} vs ${ms(plain)} / ${ms(prepared)} ms`);
    }
    if (parts.length === 0) notMeasured('p99', goal, `no step at ${p99Levels.join(', ')} connections`);
    else
      checks.push({
        id: 'p99',
        goal,
        measured: `gateway vs plain / prepared: ${parts.join('; ')}${absent.length ? `; ${absent.join(', ')}: not in this pass` : ''}`,
        status: ok ? 'met' : 'missed',
      });
  }
  {
    const goal = 'Connect-per-request ratio reported under SCRAM + TLS (gateway and connect-per-request on the same server)';
    const rows = ratioRows(r, 'gateway-read-vs-connect', 'connect');
    const onPrivate = rows.filter((row) => row.subject.server === 'private' && row.baseline.server === 'private');
    const auth = r.servers?.private?.auth;
    if (onPrivate.length) {
      checks.push({
        id: 'connect-scram-tls',
        goal,
        measured: `${onPrivate.map((row) => `${row.connections}: ${row.ratio.toFixed(1)}× (${rps(row.subject.rps!)} vs ${rps(row.baseline.rps!)} req/s)`).join('; ')}; ${auth ?? 'SCRAM + TLS'}`,
        status: 'met',
      });
    } else if (rows.length) {
      checks.push({
        id: 'connect-scram-tls',
        goal,
        measured: `measured on the shared server only (${r.servers?.shared.auth ?? 'its auth'}): the private instance did not start${r.privateFailure ? ` (${r.privateFailure})` : ''}`,
        status: 'missed',
      });
    } else notMeasured('connect-scram-tls', goal, 'no connect-per-request step ran');
  }
  {
    const goal = '≥ 30× connect-per-request req/s at 64 connections, both under SCRAM + TLS';
    const g = stepOf(r, 'gateway-read-vs-connect', 64);
    const b = stepOf(r, 'connect', 64);
    if (g?.rps && b?.rps && g.server === 'private' && b.server === 'private') {
      const times = g.rps / b.rps;
      checks.push({
        id: 'vs-connect',
        goal,
        measured: `${times.toFixed(1)}× (${rps(g.rps)} vs ${rps(b.rps)} req/s)`,
        status: times >= 30 ? 'met' : 'missed',
      });
    } else
      notMeasured(
        'vs-connect',
        goal,
        g?.rps && b?.rps
          ? `ran on the shared server (${r.servers?.shared.authShort ?? 'its auth'}) only: ${(g.rps / b.rps).toFixed(1)}×`
          : 'a step at 64 connections is missing (or was skipped for lack of Postgres connections)',
      );
  }
  {
    const goal = `1000 concurrent connections, pool max ${poolMax}: zero errors and ≤ ${poolMax} pool connections in Postgres`;
    const g = stepOf(r, 'gateway-read', 1000);
    if (g && g.errors !== undefined && g.pgPeak !== undefined) {
      const ok = g.errors === 0 && g.pgPeak <= poolMax;
      checks.push({
        id: 'c1000',
        goal,
        measured: `${g.errors} errors, peak ${g.pgPeak} pool connections (${rps(g.rps ?? 0)} req/s)`,
        status: ok ? 'met' : 'missed',
      });
    } else notMeasured('c1000', goal, 'no step at 1000 connections');
  }
  {
    const goal = 'pool reuse rate ≥ 0.99 over the run (gateway /stats pool.reuseRate)';
    const p = r.gatewayPool;
    if (p) {
      checks.push({
        id: 'reuse',
        goal,
        measured: `${p.reuseRate.toFixed(5)} (${p.acquisitionCount} acquisitions, ${p.openedCount} connections opened)`,
        status: p.reuseRate >= 0.99 ? 'met' : 'missed',
      });
    } else notMeasured('reuse', goal, 'the gateway’s /stats was not read');
  }
  {
    const limitSec = r.mode === 'quick' ? 60 : 360;
    checks.push({
      id: 'run-time',
      goal: r.mode === 'quick' ? '`--quick` under a minute' : 'the full run under ~6 minutes',
      measured: `${Math.round(r.durationSec)} s from the bench process’s start to its report`,
      status: r.durationSec < limitSec ? 'met' : 'missed',
    });
  }
  return checks;
}

// ---------------------------------------------------------------------------------------------
// Formatting

const rps = (x: number) => Math.round(x).toLocaleString('en-US');
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const ms = (x: number | undefined) =>
  x === undefined || Number.isNaN(x) ? '–' : x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : Math.round(x).toString();
const num = (x: number | undefined, digits = 0) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(digits));
const mark = (s: TargetStatus) => (s === 'met' ? '✅ met' : s === 'missed' ? '❌ missed' : '– not measured');

export function machineLine(r: BenchResults): string {
  const m = r.machine;
  const load = m.loadAvg ? `; load average ${m.loadAvg.start[0]!.toFixed(1)} at start, ${m.loadAvg.end[0]!.toFixed(1)} at end` : '';
  return `${m.cpus} cores (${m.cpuModel}), ${m.memGb} GB, ${m.os}; Node ${m.node}; PostgreSQL ${m.postgres}; loopback only; ${r.date}${load}`;
}

/** The per-step table: one row per (target, connections). */
export function resultsTable(r: BenchResults, targets?: StepTarget[]): string {
  const lines = [
    '| target | server (auth) | conns | req/s | p50 ms | p95 ms | p99 ms | errors | peak PG conns (target / all) | server CPU µs/req | server syscalls/req |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const s of r.steps) {
    if (targets && !targets.includes(s.target)) continue;
    const label = TARGET_INFO[s.target].label;
    if (s.skipped) {
      lines.push(`| ${label} | ${serverLabel(r, s)} | ${s.connections} | skipped: ${s.skipped} | | | | | | | |`);
      continue;
    }
    const errs = s.errors ? `${s.errors}${s.firstError ? ` (${s.firstError.slice(0, 40)})` : ''}` : '0';
    lines.push(
      `| ${label} | ${serverLabel(r, s)} | ${s.connections} | ${rps(s.rps ?? 0)} | ${ms(s.latencyMs?.p50)} | ${ms(s.latencyMs?.p95)} | ${ms(s.latencyMs?.p99)} | ${errs} | ${s.pgPeak ?? '–'} / ${s.pgPeakAll ?? '–'} | ${num(s.serverCpuUsPerRequest)} | ${num(s.serverSyscallsPerRequest, 1)} |`,
    );
  }
  return lines.join('\n');
}

export function ratioTable(r: BenchResults, pair: (typeof RATIO_PAIRS)[number]): string {
  const rows = ratioRows(r, pair.subject, pair.baseline);
  if (rows.length === 0) return '_no concurrency where both ran_';
  const a = TARGET_INFO[pair.subject].label;
  const b = TARGET_INFO[pair.baseline].label;
  const servers = [...new Set(rows.flatMap((row) => [`${a}: ${serverLabel(r, row.subject)}`, `${b}: ${serverLabel(r, row.baseline)}`]))];
  const lines = [
    `Measured on: ${servers.join('; ')}.`,
    '',
    `| conns | ${a} req/s | ${b} req/s | ratio | p50 ms (${a} / ${b}) | p50 added ms | p99 ms (${a} / ${b}) | server CPU µs/req (${a} / ${b}) |`,
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const row of rows) {
    const ratio = pair.unit === 'times' ? `${row.ratio.toFixed(1)}×` : row.ratio.toFixed(3);
    lines.push(
      `| ${row.connections} | ${rps(row.subject.rps!)} | ${rps(row.baseline.rps!)} | ${ratio} | ${ms(row.subject.latencyMs?.p50)} / ${ms(row.baseline.latencyMs?.p50)} | ` +
        `${row.p50AddedMs >= 0 ? '+' : ''}${row.p50AddedMs.toFixed(3)} | ${ms(row.subject.latencyMs?.p99)} / ${ms(row.baseline.latencyMs?.p99)} | ` +
        `${num(row.subject.serverCpuUsPerRequest)} / ${num(row.baseline.serverCpuUsPerRequest)} |`,
    );
  }
  return lines.join('\n');
}

/**
 * The Node read against every bare ceiling at each concurrency: the figures issue 13's targets
 * are about, in one table.
 */
export function readVsCeilingsTable(r: BenchResults): string {
  const levels = [...new Set(r.steps.filter((s) => s.target === 'gateway-read' && !s.skipped).map((s) => s.connections))].sort(
    (a, b) => a - b,
  );
  if (levels.length === 0) return '_the Node gateway read did not run_';
  const piped = r.steps.some((s) => s.target === 'ceiling-pipelined' && !s.skipped);
  const ratio = (g: StepResult | undefined, b: StepResult | undefined) => (g?.rps && b?.rps ? (g.rps / b.rps).toFixed(2) : '–');
  const head = [
    'conns',
    'gateway req/s',
    'plain ceiling req/s',
    'prepared ceiling req/s',
    ...(piped ? ['pipelined ceiling req/s'] : []),
    'gateway ÷ plain',
    'gateway ÷ prepared',
    ...(piped ? ['gateway ÷ pipelined'] : []),
    'p50 ms gateway / plain / prepared',
    'p99 ms gateway / plain / prepared',
    'errors (gateway)',
  ];
  const lines = [`| ${head.join(' | ')} |`, `| ${head.map(() => '---:').join(' | ')} |`];
  for (const c of levels) {
    const g = stepOf(r, 'gateway-read', c);
    const plain = stepOf(r, 'ceiling', c);
    const prepared = stepOf(r, 'ceiling-prepared', c);
    const pipe = stepOf(r, 'ceiling-pipelined', c);
    const q = (s: StepResult | undefined) => (s?.rps ? rps(s.rps) : '–');
    lines.push(
      `| ${[
        c,
        q(g),
        q(plain),
        q(prepared),
        ...(piped ? [q(pipe)] : []),
        ratio(g, plain),
        ratio(g, prepared),
        ...(piped ? [ratio(g, pipe)] : []),
        `${ms(g?.latencyMs?.p50)} / ${ms(plain?.latencyMs?.p50)} / ${ms(prepared?.latencyMs?.p50)}`,
        `${ms(g?.latencyMs?.p99)} / ${ms(plain?.latencyMs?.p99)} / ${ms(prepared?.latencyMs?.p99)}`,
        g?.errors ?? '–',
      ].join(' | ')} |`,
    );
  }
  return lines.join('\n');
}

/** Which server each figure was measured on, and how the bench's connections authenticated there. */
export function serversSection(r: BenchResults): string[] {
  const out: string[] = [];
  const used = (key: ServerKey) => [
    ...new Set(r.steps.filter((s) => (s.server ?? 'shared') === key && !s.skipped).map((s) => TARGET_INFO[s.target].label)),
  ];
  out.push('| server | where | auth and TLS of the bench’s connections | figures measured there |', '| --- | --- | --- | --- |');
  for (const key of ['shared', 'private'] as const) {
    const info = r.servers?.[key];
    if (!info) continue;
    out.push(
      `| ${key} | ${info.server}, PostgreSQL ${info.postgres}, max_connections ${info.maxConnections} | ${info.auth} | ${used(key).join('; ') || '–'} |`,
    );
  }
  out.push('');
  const priv = r.servers?.private;
  if (priv) {
    out.push(
      `The private instance is the bench’s own (bench/private-postgres.ts): \`initdb -A scram-sha-256\` with a random password, a self-signed RSA 2048 certificate made with ` +
        `\`openssl req -x509\`, \`ssl = on\`, started on a free loopback port and deleted at the end. Its other settings are copied from the shared server; it differs in: ${(priv.differences ?? []).join('; ')}. ` +
        'Connect-per-request runs there because its figure is the cost of opening a connection, which the shared server’s trust auth without TLS makes unrealistically cheap. ' +
        'The gateway is measured beside it on the same server, in alternating rounds: its pool opens the same SCRAM + TLS connections, but once, and every query then also pays TLS. ' +
        'So gateway ÷ connect-per-request compares pooling with connecting under one auth and one TLS setup, and nothing else differs.',
    );
  } else if (r.privateFailure) {
    out.push(
      `**The private SCRAM + TLS instance could not start** (${r.privateFailure}): connect-per-request and the gateway beside it ran on the shared server, whose auth is ${r.servers?.shared.auth ?? 'unknown'}. ` +
        'A trusted connection without TLS is far cheaper than a real deployment’s, so that ratio understates pooling.',
    );
  }
  return out;
}

export function targetsTable(r: BenchResults): string {
  const lines = ['| target | measured | |', '| --- | --- | --- |'];
  for (const t of r.targets) lines.push(`| ${t.goal} | ${t.measured} | ${mark(t.status)} |`);
  return lines.join('\n');
}

export function scenariosTable(r: BenchResults): string {
  const lines = [
    '| guide’s scenario | guide’s claim | what we ran | ours: first batch | ours: median of batches | errors | peak PG conns |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: |',
  ];
  for (const s of r.scenarios) {
    if (s.skipped) {
      lines.push(`| ${s.name} | ${s.guideClaim} | ${s.how} | skipped: ${s.skipped} | | | |`);
      continue;
    }
    lines.push(
      `| ${s.name} | ${s.guideClaim} | ${s.how} | ${ms(s.firstMs)} ms | ${ms(s.medianMs)} ms (${s.runs.length}) | ${s.errors} | ${s.pgPeak}${s.pgPoolMax ? ` (pool max ${s.pgPoolMax})` : ''} |`,
    );
  }
  return lines.join('\n');
}

function profileSection(r: BenchResults): string[] {
  const p = r.profile;
  if (!p) return ['No target was missed, so no profile was taken (`npm run bench -- --profile` forces one).'];
  if ('skipped' in p) return [`Profile not taken: ${p.skipped}`];
  const out: string[] = [];
  const base = p.baselineLabel ?? 'ceiling';
  out.push(`Step profiled: ${p.step}. Both servers sampled by the V8 profiler (node:inspector, 250 µs) over the measured window only.`);
  out.push('');
  out.push(`| | ${base} | Node gateway |`, '| --- | ---: | ---: |');
  out.push(`| requests in the window | ${p.ceiling.requests} | ${p.gateway.requests} |`);
  out.push(
    `| main-thread CPU busy | ${pct(p.ceiling.busyMs / (p.ceiling.busyMs + p.ceiling.idleMs))} | ${pct(p.gateway.busyMs / (p.gateway.busyMs + p.gateway.idleMs))} |`,
  );
  out.push(`| CPU µs per request | ${num(p.ceiling.busyUsPerRequest)} | ${num(p.gateway.busyUsPerRequest)} |`);
  out.push('');
  out.push('**What holds it back** (from the data):');
  out.push('');
  for (const f of p.findings) out.push(`- ${f}`);
  out.push('');
  out.push(`Extra CPU per request, gateway − ${base}, by where it was spent (top 12):`);
  out.push('');
  out.push(`| where | ${base} µs/req | gateway µs/req | extra µs/req |`, '| --- | ---: | ---: | ---: |');
  for (const d of p.delta.slice(0, 12))
    out.push(`| ${d.group} | ${num(d.baselineUs, 1)} | ${num(d.subjectUs, 1)} | ${d.extraUs >= 0 ? '+' : ''}${num(d.extraUs, 1)} |`);
  out.push('');
  out.push('Top self-time functions in the gateway:');
  out.push('');
  out.push('| function | where | group | self ms | share |', '| --- | --- | --- | ---: | ---: |');
  for (const f of p.gateway.top) out.push(`| \`${f.fn}\` | ${f.where} | ${f.group} | ${num(f.selfMs, 1)} | ${pct(f.share)} |`);
  out.push('');
  out.push(`Profiles: ${p.files.join(', ')} (open in Chrome DevTools → Performance, or speedscope).`);
  return out;
}

export function renderMarkdown(r: BenchResults): string {
  const out: string[] = [];
  out.push(`# poolgate benchmarks — ${r.date}${r.mode === 'quick' ? ' (quick pass)' : ''}`);
  out.push('');
  out.push(`Machine: ${machineLine(r)}. Run took ${Math.round(r.durationSec)} s.`);
  out.push('');
  const rounds = r.settings.pairRounds ?? 1;
  out.push(
    `Database: scratch database \`${r.database.name}\` on ${r.database.server} (created for this run, dropped after; max_connections ${r.database.maxConnections}). ` +
      `Load: autocannon 9 as a library in the parent process; every server in a child process of its own. ` +
      `Each step: ${r.settings.warmupMs / 1000} s warm-up (not counted), then ${r.settings.durationMs / 1000} s measured. ` +
      `The bare ceilings and the gateway read, measured side by side, alternate in ${rounds} rounds per concurrency, ` +
      `the order rotating each round (A B C, B C A, …), each round with its own warm-up and ${(r.settings.durationMs / rounds / 1000).toFixed(1)} s measured, merged per target; ` +
      `from 256 connections on, ${Math.max(1, Math.ceil(rounds / 2))} round(s), a warm-up of at least ${(r.settings.bigWarmupMs ?? 1500) / 1000} s and at least ${(r.settings.bigSegmentMs ?? 2000) / 1000} s measured per round. ` +
      (r.settings.connectRounds
        ? `Connect-per-request and the gateway beside it alternate likewise, ${r.settings.connectRounds} round(s) of a warm-up of at least ${(r.settings.bigWarmupMs ?? 1500) / 1000} s and ${(r.settings.connectSegmentMs ?? 0) / 1000} s measured each (its ratio is tens of times). `
        : '') +
      'Each stretch of load ends by draining: no new request after the window, each connection closed once its response is in (at most 3 s), so no server starts its next round with requests aborted under it. ' +
      `The load generator shares the ${r.machine.cpus} cores with the servers and Postgres: read the ratios (measured in this run), not the absolute figures.`,
  );
  out.push('');
  if (r.servers) {
    out.push('## Servers and auth');
    out.push('');
    out.push(...serversSection(r));
    out.push('');
  }
  out.push('## Targets');
  out.push('');
  out.push(targetsTable(r));
  out.push('');
  out.push('## Node gateway read against the bare ceilings');
  out.push('');
  out.push(
    `All on the ${r.servers ? `shared server (${r.servers.shared.authShort})` : 'shared server'}, measured in the same rotating rounds. ` +
      'Plain: the route’s statement as node-postgres sends an unnamed one (Parse, Bind, Execute each time). Prepared: a named statement, parsed once per connection. ' +
      (r.steps.some((s) => s.target === 'ceiling-pipelined' && !s.skipped)
        ? `Pipelined: named statements on ${r.settings.pipelineClients ?? 'a few'} connections with node-postgres’s \`pipeline: true\`, queries written behind each other without waiting for a connection. `
        : '') +
      'p99 over all the rounds’ responses.',
  );
  out.push('');
  out.push(readVsCeilingsTable(r));
  out.push('');
  out.push('## Ratios (each against its baseline from this run)');
  for (const pair of RATIO_PAIRS) {
    out.push('');
    out.push(`### ${pair.title}`);
    out.push('');
    out.push(ratioTable(r, pair));
  }
  out.push('');
  out.push('## The guide’s load-test scenarios, re-run');
  out.push('');
  out.push(
    'Wall time for the whole batch, all requests sent at once from the bench process (fetch over loopback). The guide’s figures were against a remote Neon database; ours are loopback, so only the shape (and exhaustion) compares.',
  );
  out.push('');
  out.push(scenariosTable(r));
  out.push('');
  for (const section of r.sections ?? []) {
    out.push(`## ${section.title}`);
    out.push('');
    out.push(section.markdown.trim());
    out.push('');
  }
  out.push('## All steps');
  out.push('');
  out.push(
    'req/s = 2xx responses in the measured window ÷ its length. Latencies are per response, client side (autocannon’s timer, exact percentiles over every 2xx). Errors = non-2xx + socket errors + timeouts. ' +
      'Peak PG conns = highest count in `pg_stat_activity` (sampled every ~50 ms) held by the target’s application_name, idle pooled connections included / by everything in the bench database (the other servers’ idle pools too). ' +
      'Server CPU = user+system CPU of the server’s process tree (workerd included for the edge) over the window ÷ 2xx responses; server syscalls = its read- and write-like system calls (/proc/<pid>/io) ÷ 2xx responses; for pgbench the server is Postgres, not counted.',
  );
  out.push('');
  out.push(resultsTable(r));
  out.push('');
  out.push('What each target is:');
  out.push('');
  for (const [id, t] of Object.entries(TARGET_INFO)) if (r.steps.some((s) => s.target === id)) out.push(`- **${t.label}**: ${t.what}.`);
  out.push('');
  if (r.gatewayPool) {
    const p = r.gatewayPool;
    out.push('## Node gateway pool over the run (`/stats`)');
    out.push('');
    out.push(
      `max ${p.max}; ${p.acquisitionCount} acquisitions; ${p.openedCount} connections opened, ${p.closedCount} closed; reuse rate ${p.reuseRate.toFixed(5)}; ` +
        `acquire timeouts ${p.acquireTimeoutCount}; queue rejections ${p.queueRejectedCount}; client errors ${p.errorCount}; retries ${p.retryCount}.`,
    );
    const l = p.pipeline;
    if (l)
      out.push(
        '',
        `Pipelined read lanes (besides the pool's ${p.max}): ${l.lanes} open; ${l.openedCount} opened, ${l.closedCount} closed; ` +
          `${l.cancelledCount} retired after a cancel; ${l.overflowCount} reads sent to the pool because every lane was stalled; ${l.queueRejectedCount ?? 0} refused by the lanes' full queue.`,
      );
    out.push('');
  }
  out.push('## Profile');
  out.push('');
  out.push(...profileSection(r));
  out.push('');
  if (r.notes.length) {
    out.push('## Notes');
    out.push('');
    for (const n of r.notes) out.push(`- ${n}`);
    out.push('');
  }
  out.push(
    `Generated by \`npm run bench${r.mode === 'quick' ? ' -- --quick' : ''}\` (bench/run.ts). Raw figures: the .json next to this file.`,
  );
  out.push('');
  return out.join('\n');
}

export function renderJson(r: BenchResults): string {
  const ratios = Object.fromEntries(
    RATIO_PAIRS.map((p) => [
      `${p.subject}/${p.baseline}`,
      ratioRows(r, p.subject, p.baseline).map((row) => ({ connections: row.connections, ratio: row.ratio, p50AddedMs: row.p50AddedMs })),
    ]),
  );
  return `${JSON.stringify({ ...r, ratios }, null, 2)}\n`;
}
