/**
 * The bench's results as data (BenchResults), the derived figures (ratios against the baselines
 * of the same run, the five targets met or missed), and their rendering as Markdown and JSON for
 * bench/results/. Pure functions of the data: nothing here measures anything.
 */
import type { PoolStats } from '../src/db/types.js';
import type { BurstResult, Latency } from './load.js';
import type { GroupDelta, ProfileSummary } from './profile.js';

export type StepTarget =
  | 'connect'
  | 'ceiling'
  | 'pgbench'
  | 'gateway-read'
  | 'gateway-write'
  | 'gateway-summary'
  | 'edge-read-http'
  | 'edge-read-ws'
  | 'edge-write';

export const TARGET_INFO: Record<StepTarget, { label: string; what: string }> = {
  connect: { label: 'baseline: connect-per-request', what: 'bare Hono, new pg.Client per request, GET /api/users/:id' },
  ceiling: { label: 'baseline: ceiling', what: 'bare Hono on pg.Pool (max 20), no middleware, GET /api/users/:id' },
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

export interface StepResult {
  target: StepTarget;
  connections: number;
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
  ceiling: ProfileSummary;
  gateway: ProfileSummary;
  delta: GroupDelta[];
  files: string[];
  findings: string[];
}

export interface BenchResults {
  version: 1;
  mode: 'full' | 'quick';
  date: string;
  startedAt: string;
  finishedAt: string;
  durationSec: number;
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
  settings: {
    warmupMs: number;
    durationMs: number;
    pairRounds?: number;
    samplerIntervalMs: number;
    poolMax: number;
    concurrencies: Partial<Record<StepTarget, number[]>>;
  };
  steps: StepResult[];
  gatewayPool?: PoolStats;
  edgeNodePool?: PoolStats;
  scenarios: ScenarioResult[];
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
  { title: 'poolgate / ceiling (Node gateway read ÷ bare Hono + pg.Pool)', subject: 'gateway-read', baseline: 'ceiling', unit: 'ratio' },
  {
    title: 'poolgate / connect-per-request (Node gateway read ÷ new pg.Client per request)',
    subject: 'gateway-read',
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
    title: 'context: ceiling / pgbench -S (HTTP + node-postgres ÷ the database alone)',
    subject: 'ceiling',
    baseline: 'pgbench',
    unit: 'ratio',
  },
];

/** The five targets of issue 5, each met or missed with the measured figure. Never throws. */
export function evaluateTargets(r: BenchResults, poolMax: number): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const notMeasured = (id: string, goal: string, why: string) => checks.push({ id, goal, measured: why, status: 'not measured' });

  {
    const goal = 'Node gateway read ≥ 90% of the ceiling’s req/s at 64 connections';
    const g = stepOf(r, 'gateway-read', 64);
    const b = stepOf(r, 'ceiling', 64);
    if (g?.rps && b?.rps) {
      const ratio = g.rps / b.rps;
      const cpu =
        g.serverCpuUsPerRequest && b.serverCpuUsPerRequest
          ? `; by server CPU per request ${pct(b.serverCpuUsPerRequest / g.serverCpuUsPerRequest)}`
          : '';
      checks.push({
        id: 'read-vs-ceiling',
        goal,
        measured: `${pct(ratio)} (${rps(g.rps)} vs ${rps(b.rps)} req/s${cpu})`,
        status: ratio >= 0.9 ? 'met' : 'missed',
      });
    } else notMeasured('read-vs-ceiling', goal, 'a step at 64 connections is missing');
  }
  {
    const goal = 'p50 added latency < 0.3 ms at 1 connection (gateway p50 − ceiling p50)';
    const g = stepOf(r, 'gateway-read', 1);
    const b = stepOf(r, 'ceiling', 1);
    if (g?.latencyMs && b?.latencyMs) {
      const added = g.latencyMs.p50 - b.latencyMs.p50;
      checks.push({
        id: 'p50-added',
        goal,
        measured: `${added.toFixed(3)} ms (${g.latencyMs.p50.toFixed(3)} vs ${b.latencyMs.p50.toFixed(3)} ms)`,
        status: added < 0.3 ? 'met' : 'missed',
      });
    } else notMeasured('p50-added', goal, 'a step at 1 connection is missing');
  }
  {
    const goal = '≥ 30× connect-per-request req/s at 64 connections';
    const g = stepOf(r, 'gateway-read', 64);
    const b = stepOf(r, 'connect', 64);
    if (g?.rps && b?.rps) {
      const times = g.rps / b.rps;
      checks.push({
        id: 'vs-connect',
        goal,
        measured: `${times.toFixed(1)}× (${rps(g.rps)} vs ${rps(b.rps)} req/s)`,
        status: times >= 30 ? 'met' : 'missed',
      });
    } else notMeasured('vs-connect', goal, 'a step at 64 connections is missing (or was skipped for lack of Postgres connections)');
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
    '| target | conns | req/s | p50 ms | p95 ms | p99 ms | errors | peak PG conns (target / all) | server CPU µs/req | server syscalls/req |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const s of r.steps) {
    if (targets && !targets.includes(s.target)) continue;
    const label = TARGET_INFO[s.target].label;
    if (s.skipped) {
      lines.push(`| ${label} | ${s.connections} | skipped: ${s.skipped} | | | | | | | |`);
      continue;
    }
    const errs = s.errors ? `${s.errors}${s.firstError ? ` (${s.firstError.slice(0, 40)})` : ''}` : '0';
    lines.push(
      `| ${label} | ${s.connections} | ${rps(s.rps ?? 0)} | ${ms(s.latencyMs?.p50)} | ${ms(s.latencyMs?.p95)} | ${ms(s.latencyMs?.p99)} | ${errs} | ${s.pgPeak ?? '–'} / ${s.pgPeakAll ?? '–'} | ${num(s.serverCpuUsPerRequest)} | ${num(s.serverSyscallsPerRequest, 1)} |`,
    );
  }
  return lines.join('\n');
}

export function ratioTable(r: BenchResults, pair: (typeof RATIO_PAIRS)[number]): string {
  const rows = ratioRows(r, pair.subject, pair.baseline);
  if (rows.length === 0) return '_no concurrency where both ran_';
  const a = TARGET_INFO[pair.subject].label;
  const b = TARGET_INFO[pair.baseline].label;
  const lines = [
    `| conns | ${a} req/s | ${b} req/s | ratio | p50 ms (${a} / ${b}) | p50 added ms | server CPU µs/req (${a} / ${b}) |`,
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const row of rows) {
    const ratio = pair.unit === 'times' ? `${row.ratio.toFixed(1)}×` : row.ratio.toFixed(3);
    lines.push(
      `| ${row.connections} | ${rps(row.subject.rps!)} | ${rps(row.baseline.rps!)} | ${ratio} | ${ms(row.subject.latencyMs?.p50)} / ${ms(row.baseline.latencyMs?.p50)} | ` +
        `${row.p50AddedMs >= 0 ? '+' : ''}${row.p50AddedMs.toFixed(3)} | ${num(row.subject.serverCpuUsPerRequest)} / ${num(row.baseline.serverCpuUsPerRequest)} |`,
    );
  }
  return lines.join('\n');
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
  out.push(`Step profiled: ${p.step}. Both servers sampled by the V8 profiler (node:inspector, 250 µs) over the measured window only.`);
  out.push('');
  out.push('| | ceiling | Node gateway |', '| --- | ---: | ---: |');
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
  out.push('Extra CPU per request, gateway − ceiling, by where it was spent (top 12):');
  out.push('');
  out.push('| where | ceiling µs/req | gateway µs/req | extra µs/req |', '| --- | ---: | ---: | ---: |');
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
  out.push(
    `Database: scratch database \`${r.database.name}\` on ${r.database.server} (created for this run, dropped after; max_connections ${r.database.maxConnections}). ` +
      `Load: autocannon 9 as a library in the parent process; every server in a child process of its own. ` +
      `Each step: ${r.settings.warmupMs / 1000} s warm-up (not counted), then ${r.settings.durationMs / 1000} s measured; ceiling and gateway reads alternate in ${r.settings.pairRounds ?? 1} rounds per concurrency (each with its own warm-up, measured time split), merged per target; ` +
      `from 256 connections on, half the rounds, a warm-up of at least 1.5 s and at least 2 s measured per round. ` +
      `The load generator shares the ${r.machine.cpus} cores with the servers and Postgres: read the ratios (measured in this run), not the absolute figures.`,
  );
  out.push('');
  out.push('## Targets');
  out.push('');
  out.push(targetsTable(r));
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
