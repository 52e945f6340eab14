/**
 * `npm run bench:mixed` (about 1.5 minutes; `-- --quick`: about 40 s): issue 19's mixed latency.
 * 32 clients, each request a fast read (`GET /api/users/:id`, 90%) or a slow one (10%: a read
 * route of the bench's own, bench/mixed-app.ts, that waits 50–300 ms in `pg_sleep`). Two Node
 * gateways in processes of their own serve the same app on the same scratch database: one with its
 * defaults (pipelined read lanes), one with PG_PIPELINE_LANES=0 (every read on the pool). They are
 * loaded one at a time in alternating rounds (on/off, then off/on, …) so the machine's drift falls
 * on both; the fast reads' p50, p99 and throughput are reported per round and merged per side.
 * Then the same with REQUEST_TIMEOUT_MS=200 on both sides: how many fast reads time out.
 *
 * The database is PostgreSQL named by BENCH_DATABASE_URL or DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/test); the run works only in poolgate_mixed_<pid>, created
 * there and dropped at the end. Writes bench/results/<date>-mixed.md and .json (quick: -mixed-quick).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEMO_USER_ID } from '../src/fitness/seed.js';
import { quickOrExit, runIfMain } from './cli.js';
import { createBenchDatabase, prepareSchema, sourceDatabaseUrl } from './database.js';
import { latencyOf, runMix, type Latency, type MixRequest } from './load.js';
import { SLOW_PATH } from './mixed-app.js';
import { localDate, machine, runStamp, type BenchResults, type RunStamp } from './report.js';
import { launchTarget, type TargetProcess } from './targets.js';

const CLIENTS = 32;
const POOL_MAX = 20;
const SLOW_SHARE = 0.1;
const TIMEOUT_MS = 200;

const PLANS = {
  full: { rounds: 3, segmentMs: 5_000, warmupMs: 2_000 },
  quick: { rounds: 2, segmentMs: 2_000, warmupMs: 1_500 },
} as const;

type SideName = 'lanes' | 'no lanes';
const SIDES: readonly { name: SideName; env: Record<string, string> }[] = [
  { name: 'lanes', env: {} },
  { name: 'no lanes', env: { PG_PIPELINE_LANES: '0' } },
];

export interface Segment {
  side: SideName;
  round: number;
  windowMs: number;
  fastOk: number;
  /** Fast reads answered otherwise, by "status code" ("504 request_timeout", "no answer: …"). */
  fastOther: Record<string, number>;
  slow: Record<string, number>;
  fastRps: number;
  fastMs: Latency;
  /** Slow reads answered 200: how long the clients held on them (what bounds a closed loop's pace). */
  slowMs: Latency;
}

export interface SideFigures {
  side: SideName;
  fastOk: number;
  fastRps: number;
  fastMs: Latency;
  slowMs: Latency;
  fastOther: Record<string, number>;
  slow: Record<string, number>;
  /** /stats pool.pipeline over the measured rounds (counters as differences). */
  pipeline?: Record<string, number>;
}

export interface MixedTarget {
  target: string;
  measured: string;
  met: boolean;
}

export interface MixedResult extends RunStamp {
  machine: BenchResults['machine'] & { loadAvg: { start: number[]; end: number[] } };
  server: string;
  settings: { clients: number; slowShare: number; rounds: number; segmentMs: number; warmupMs: number; poolMax: number; timeoutMs: number };
  segments: Segment[];
  sides: SideFigures[];
  timeoutCase: { sides: SideFigures[] };
  targets: MixedTarget[];
  notes: string[];
}

// ---------------------------------------------------------------------------------------------
// Load

const tally = (into: Record<string, number>, key: string) => (into[key] = (into[key] ?? 0) + 1);

function nextRequest(url: string): MixRequest {
  if (Math.random() < SLOW_SHARE) return { kind: 'slow', url: `${url}${SLOW_PATH}?ms=${50 + Math.floor(Math.random() * 251)}` };
  return { kind: 'fast', url: `${url}/api/users/${DEMO_USER_ID}` };
}

async function segment(
  url: string,
  durationMs: number,
): Promise<Omit<Segment, 'side' | 'round'> & { samples: number[]; slowSamples: number[] }> {
  const samples: number[] = [];
  const slowSamples: number[] = [];
  const fastOther: Record<string, number> = {};
  const slow: Record<string, number> = {};
  const windowMs = await runMix({
    connections: CLIENTS,
    durationMs,
    next: () => nextRequest(url),
    onOutcome: (o) => {
      const key = o.status === undefined ? `no answer: ${o.error ?? '?'}` : `${o.status}${o.code ? ` ${o.code}` : ''}`;
      if (o.kind === 'slow') {
        tally(slow, key);
        if (o.status === 200) slowSamples.push(o.endMs - o.startMs);
      } else if (o.status === 200) samples.push(o.endMs - o.startMs);
      else tally(fastOther, key);
    },
  });
  return {
    windowMs,
    fastOk: samples.length,
    fastOther,
    slow,
    fastRps: (samples.length / windowMs) * 1000,
    fastMs: latencyOf(Float64Array.from(samples)),
    slowMs: latencyOf(Float64Array.from(slowSamples)),
    samples,
    slowSamples,
  };
}

async function pipelineOf(url: string): Promise<Record<string, number> | undefined> {
  try {
    const res = await fetch(`${url}/stats`, { signal: AbortSignal.timeout(5_000) });
    return ((await res.json()) as { pool?: { pipeline?: Record<string, number> } }).pool?.pipeline;
  } catch {
    return undefined;
  }
}

const COUNTERS = ['openedCount', 'closedCount', 'cancelledCount', 'overflowCount', 'slowToPoolCount', 'waitedBehindSlowCount'];
const pipelineDelta = (before?: Record<string, number>, after?: Record<string, number>): Record<string, number> | undefined =>
  after &&
  Object.fromEntries<number>([
    ['lanes', after.lanes ?? 0],
    ...COUNTERS.map((k): [string, number] => [k, (after[k] ?? 0) - (before?.[k] ?? 0)]),
  ]);

const merge = (into: Record<string, number>, from: Record<string, number>) => {
  for (const [k, n] of Object.entries(from)) into[k] = (into[k] ?? 0) + n;
};

/**
 * Both sides' gateways started, warmed (their lanes learn the slow route's time), then loaded in
 * alternating rounds. Returns every segment and each side merged.
 */
async function alternate(
  databaseUrl: string,
  plan: { rounds: number; segmentMs: number; warmupMs: number },
  extraEnv: Record<string, string>,
  log: (line: string) => void,
): Promise<{ segments: Segment[]; sides: SideFigures[] }> {
  const procs: TargetProcess[] = [];
  try {
    for (const side of SIDES) {
      procs.push(
        await launchTarget('gateway', {
          databaseUrl,
          applicationName: `poolgate-bench-mixed-${side.name.replace(' ', '-')}`,
          poolMax: POOL_MAX,
          env: { ...side.env, ...extraEnv },
          appModule: new URL('./mixed-app.ts', import.meta.url).href,
        }),
      );
    }
    for (const p of procs) await segment(p.urls.url, plan.warmupMs);
    const before = await Promise.all(procs.map((p) => pipelineOf(p.urls.url)));
    const segments: Segment[] = [];
    const samples: number[][] = SIDES.map(() => []);
    const slowSamples: number[][] = SIDES.map(() => []);
    for (let round = 0; round < plan.rounds; round++) {
      const order = round % 2 === 0 ? [0, 1] : [1, 0];
      for (const i of order) {
        const { samples: s, slowSamples: ss, ...seg } = await segment(procs[i]!.urls.url, plan.segmentMs);
        samples[i]!.push(...s);
        slowSamples[i]!.push(...ss);
        segments.push({ side: SIDES[i]!.name, round, ...seg });
        log(
          `round ${round + 1} ${SIDES[i]!.name.padEnd(8)} fast ${Math.round(seg.fastRps)} req/s  p50 ${seg.fastMs.p50.toFixed(2)} ms  ` +
            `p99 ${seg.fastMs.p99.toFixed(2)} ms  slow p50 ${seg.slowMs.p50.toFixed(0)} ms  other ${JSON.stringify(seg.fastOther)}  slow ${JSON.stringify(seg.slow)}`,
        );
      }
    }
    const after = await Promise.all(procs.map((p) => pipelineOf(p.urls.url)));
    const sides = SIDES.map((side, i): SideFigures => {
      const mine = segments.filter((s) => s.side === side.name);
      const windowMs = mine.reduce((n, s) => n + s.windowMs, 0);
      const fastOther: Record<string, number> = {};
      const slow: Record<string, number> = {};
      for (const s of mine) {
        merge(fastOther, s.fastOther);
        merge(slow, s.slow);
      }
      const pipeline = pipelineDelta(before[i], after[i]);
      return {
        side: side.name,
        fastOk: samples[i]!.length,
        fastRps: (samples[i]!.length / windowMs) * 1000,
        fastMs: latencyOf(Float64Array.from(samples[i]!)),
        slowMs: latencyOf(Float64Array.from(slowSamples[i]!)),
        fastOther,
        slow,
        ...(pipeline ? { pipeline } : {}),
      };
    });
    return { segments, sides };
  } finally {
    await Promise.allSettled(procs.map((p) => p.stop()));
  }
}

// ---------------------------------------------------------------------------------------------
// Targets and the report

const countOf = (r: Record<string, number>, prefix: string) =>
  Object.entries(r)
    .filter(([k]) => k.startsWith(prefix))
    .reduce((n, [, c]) => n + c, 0);

function evaluate(sides: SideFigures[], timeoutSides: SideFigures[]): MixedTarget[] {
  const [on, off] = sides as [SideFigures, SideFigures];
  const r = (a: number, b: number) => (a / b).toFixed(2);
  const [ton, toff] = timeoutSides as [SideFigures, SideFigures];
  return [
    {
      target: 'fast reads p50 with lanes ≤ without',
      measured: `${on.fastMs.p50.toFixed(2)} vs ${off.fastMs.p50.toFixed(2)} ms (× ${r(on.fastMs.p50, off.fastMs.p50)})`,
      met: on.fastMs.p50 <= off.fastMs.p50,
    },
    {
      target: 'fast reads p99 with lanes ≤ without',
      measured: `${on.fastMs.p99.toFixed(2)} vs ${off.fastMs.p99.toFixed(2)} ms (× ${r(on.fastMs.p99, off.fastMs.p99)})`,
      met: on.fastMs.p99 <= off.fastMs.p99,
    },
    {
      target: 'fast reads throughput with lanes ≥ without',
      measured: `${Math.round(on.fastRps)} vs ${Math.round(off.fastRps)} req/s (× ${r(on.fastRps, off.fastRps)})`,
      met: on.fastRps >= off.fastRps,
    },
    {
      target: `REQUEST_TIMEOUT_MS=${TIMEOUT_MS}: fast reads timed out, lanes ≤ no lanes`,
      measured: `${countOf(ton.fastOther, '504')} of ${ton.fastOk + countOf(ton.fastOther, '')} vs ${countOf(toff.fastOther, '504')} of ${toff.fastOk + countOf(toff.fastOther, '')}`,
      met: countOf(ton.fastOther, '504') <= countOf(toff.fastOther, '504'),
    },
  ];
}

const fmt = (x: number) => (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : Math.round(x).toString());
const tallyText = (t: Record<string, number>) =>
  Object.entries(t)
    .map(([k, n]) => `${k} × ${n}`)
    .join(', ') || '–';

function sideRows(sides: SideFigures[]): string[] {
  return [
    '| side | fast req/s | fast p50 ms | fast p95 ms | fast p99 ms | fast answers not 200 | slow reads | slow p50 / p99 ms |',
    '| --- | ---: | ---: | ---: | ---: | --- | --- | ---: |',
    ...sides.map(
      (s) =>
        `| ${s.side} | ${Math.round(s.fastRps)} | ${fmt(s.fastMs.p50)} | ${fmt(s.fastMs.p95)} | ${fmt(s.fastMs.p99)} | ${tallyText(s.fastOther)} | ${tallyText(s.slow)} | ${fmt(s.slowMs.p50)} / ${fmt(s.slowMs.p99)} |`,
    ),
  ];
}

export function renderMixedMarkdown(r: MixedResult): string {
  const m = r.machine;
  const st = r.settings;
  const lanes = r.sides.find((s) => s.side === 'lanes')?.pipeline;
  const lanesT = r.timeoutCase.sides.find((s) => s.side === 'lanes')?.pipeline;
  return [
    `# Mixed latency — ${r.date}${r.mode === 'quick' ? ' (quick)' : ''}`,
    '',
    `${m.cpus} cores (${m.cpuModel}); Node ${m.node}; PostgreSQL ${m.postgres} (${r.server}); load average ${m.loadAvg.start[0]!.toFixed(1)} at start, ` +
      `${m.loadAvg.end[0]!.toFixed(1)} at end. ${r.startedAt} → ${r.finishedAt} (${r.durationSec.toFixed(0)} s).`,
    '',
    `${st.clients} clients; ${st.slowShare * 100}% of requests a slow read (pg_sleep 50–300 ms), the rest \`GET /api/users/:id\`. ` +
      `Gateway POOL_MAX ${st.poolMax}: "lanes" = its defaults, "no lanes" = PG_PIPELINE_LANES=0. ${st.rounds} alternating rounds of ` +
      `${st.segmentMs / 1000} s per side after ${st.warmupMs / 1000} s of warm-up each. Latency is the client's, fast reads answered 200 only.`,
    '',
    '## Targets',
    '',
    '| target | measured | |',
    '| --- | --- | --- |',
    ...r.targets.map((t) => `| ${t.target} | ${t.measured} | ${t.met ? '✅' : '❌'} |`),
    '',
    '## Each side, rounds merged',
    '',
    ...sideRows(r.sides),
    '',
    `Lane counters over the rounds (lanes side, /stats pool.pipeline): ${lanes ? tallyText(lanes).replaceAll(' × ', ' ') : '–'}.`,
    '',
    '## Each round',
    '',
    '| round | side | fast req/s | p50 ms | p99 ms | fast not 200 | slow reads | slow p50 ms |',
    '| ---: | --- | ---: | ---: | ---: | --- | --- | ---: |',
    ...r.segments.map(
      (s) =>
        `| ${s.round + 1} | ${s.side} | ${Math.round(s.fastRps)} | ${fmt(s.fastMs.p50)} | ${fmt(s.fastMs.p99)} | ${tallyText(s.fastOther)} | ${tallyText(s.slow)} | ${fmt(s.slowMs.p50)} |`,
    ),
    '',
    `## REQUEST_TIMEOUT_MS=${st.timeoutMs}`,
    '',
    'Slow reads past the deadline are expected to time out; fast ones should not.',
    '',
    ...sideRows(r.timeoutCase.sides),
    '',
    `Lane counters (lanes side): ${lanesT ? tallyText(lanesT).replaceAll(' × ', ' ') : '–'}.`,
    '',
    ...(r.notes.length ? ['## Notes', '', ...r.notes.map((n) => `- ${n}`), ''] : []),
    `Generated by \`npm run bench:mixed${r.mode === 'quick' ? ' -- --quick' : ''}\` (bench/mixed.ts). Raw figures: the .json next to this file.`,
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// CLI

const USAGE = `usage: npm run bench:mixed [-- --quick]

  --quick   2 rounds of 2 s per side (default: 3 rounds of 5 s)

Database: BENCH_DATABASE_URL, else DATABASE_URL, else postgres://postgres@127.0.0.1:5432/test; works in
poolgate_mixed_<pid>, dropped at the end. Writes bench/results/<date>-mixed.md and .json (quick: -mixed-quick).`;

async function main(): Promise<number> {
  const mode = quickOrExit('mixed', USAGE);
  if (typeof mode === 'number') return mode;
  const plan = PLANS[mode];
  const startedAt = new Date();
  const loadAvgStart = os.loadavg();
  const log = (line: string) => console.log(`  ${line}`);
  const db = await createBenchDatabase(sourceDatabaseUrl(), { prefix: 'poolgate_mixed_' });
  const stopping = () => void db.drop().finally(() => process.exit(130));
  process.once('SIGINT', stopping);
  process.once('SIGTERM', stopping);
  try {
    await prepareSchema(db.url);
    console.log(`mixed: ${plan.rounds} rounds × ${plan.segmentMs / 1000} s per side`);
    const main = await alternate(db.url, plan, {}, log);
    console.log(`mixed: REQUEST_TIMEOUT_MS=${TIMEOUT_MS}, 1 round`);
    const timeoutCase = await alternate(db.url, { ...plan, rounds: 1 }, { REQUEST_TIMEOUT_MS: String(TIMEOUT_MS) }, log);
    const targets = evaluate(main.sides, timeoutCase.sides);
    const result: MixedResult = {
      ...runStamp(mode, startedAt),
      machine: { ...machine(db.postgres, undefined), loadAvg: { start: loadAvgStart, end: os.loadavg() } },
      server: `${db.server}, ${db.authShort}`,
      settings: { clients: CLIENTS, slowShare: SLOW_SHARE, poolMax: POOL_MAX, timeoutMs: TIMEOUT_MS, ...plan },
      segments: main.segments,
      sides: main.sides,
      timeoutCase: { sides: timeoutCase.sides },
      targets,
      notes: [],
    };
    for (const t of targets) log(`${t.met ? '✅' : '❌'} ${t.target}: ${t.measured}`);
    const dir = fileURLToPath(new URL('./results/', import.meta.url));
    mkdirSync(dir, { recursive: true });
    const base = join(dir, `${localDate(startedAt)}-mixed${mode === 'quick' ? '-quick' : ''}`);
    writeFileSync(`${base}.md`, renderMixedMarkdown(result));
    writeFileSync(`${base}.json`, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`mixed: wrote ${base}.md and .json in ${result.durationSec.toFixed(0)} s`);
    return 0;
  } finally {
    await db.drop().catch((err: unknown) => console.error(`mixed: could not drop ${db.name}: ${(err as Error).message}`));
  }
}

runIfMain(import.meta.url, main);
