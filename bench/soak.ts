/**
 * `npm run bench:soak` (about 6 minutes; `-- --quick`: about a minute): issue 19's soak. The Node
 * gateway (the fitness app, bench/targets.ts 'gateway', in a process of its own) on a private
 * PostgreSQL (bench/private-postgres.ts: SCRAM over TLS), so the bench can restart it under load.
 *
 * 32 clients for 150 s (quick: 20 s) send `GET /api/users/:id`, `GET /api/workouts/:id` and
 * writes (`POST /api/workouts` with an Idempotency-Key each); a tenth of all requests are
 * aborted by their client 0–50 ms after they were sent. PostgreSQL is restarted 4 times (quick: 1)
 * with `pg_ctl restart -m fast`, evenly spread. For the requests not aborted, answers are counted
 * by status and `code`; every 503 is placed relative to the restarts. After the load, every write
 * without a 201 (aborted, refused, no answer) is sent again with its key, and the rows are counted
 * per key: a key acknowledged with a 201 must have exactly one row, and no key more than one.
 *
 * Two passes on the same server: the gateway's defaults (pipelined read lanes), then
 * PG_PIPELINE_LANES=0 as the comparison. Writes bench/results/<date>-soak.md and .json
 * (quick: -soak-quick).
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { DEMO_USER_ID, DEMO_WORKOUT_ID } from '../src/fitness/seed.js';
import { quickOrExit, runIfMain } from './cli.js';
import { createBenchDatabase, prepareSchema, WRITER_USER_ID } from './database.js';
import { runMix, type MixOutcome, type MixRequest } from './load.js';
import { removeStaleInstances, startBenchPostgres } from './private-postgres.js';
import { localDate, machine, runStamp, type BenchResults, type RunStamp } from './report.js';
import { launchTarget, type TargetProcess } from './targets.js';

const CLIENTS = 32;
const POOL_MAX = 20;
const ABORT_SHARE = 0.1;
const WRITE_SHARE = 0.1;
/** A 503 counts as "around a restart" from 1 s before the restart began to this long after it ended. */
const AROUND_RESTART_MS = 5_000;

const PLANS = {
  full: { durationMs: 150_000, restarts: 4 },
  quick: { durationMs: 20_000, restarts: 1 },
} as const;

const PASSES: readonly { label: string; env: Record<string, string> }[] = [
  { label: 'lanes (defaults)', env: {} },
  { label: 'PG_PIPELINE_LANES=0', env: { PG_PIPELINE_LANES: '0' } },
];

export interface Restart {
  /** ms from the pass's start: `pg_ctl restart` called, and returned (the server accepts connections again). */
  startMs: number;
  endMs: number;
}

export interface WriteCheck {
  keys: number;
  /** Keys with a 201 during the load (not aborted), and after the replay of the others. */
  acknowledged: number;
  replayed: number;
  replayStatuses: Record<string, number>;
  /** Keys acknowledged with a 201 that have no row. */
  lost: number;
  /** Keys with more than one row. */
  doubled: number;
  /** Keys answered 201 twice (load and replay) with different workout ids. */
  replayMismatch: number;
  /** Keys never acknowledged, even on replay. */
  neverAcknowledged: number;
}

export interface FiveOhThree {
  count: number;
  withRetryAfter: number;
  /** Request start relative to the nearest restart's start (ms), min and max; and those outside the window. */
  minFromRestartMs?: number;
  maxFromRestartMs?: number;
  outsideWindow: number;
  codes: Record<string, number>;
}

export interface SoakPass {
  label: string;
  env: Record<string, string>;
  windowMs: number;
  requests: number;
  /** Requests the client aborted before a full answer, and those picked for abort that answered first. */
  aborted: number;
  abortRaced: number;
  /** Not aborted: answers by "status code" (e.g. "200", "503 breaker_open", "no answer: …"), per kind and overall. */
  answers: Record<string, number>;
  answersByKind: Record<string, Record<string, number>>;
  fiveOhThree: FiveOhThree;
  restarts: Restart[];
  writes: WriteCheck;
  /** /stats `pool` before and after the load (lane counters, the pool's own). */
  poolBefore?: unknown;
  poolAfter?: unknown;
}

export interface SoakTarget {
  pass: string;
  target: string;
  measured: string;
  met: boolean;
}

export interface SoakResult extends RunStamp {
  machine: BenchResults['machine'] & { loadAvg: { start: number[]; end: number[] } };
  server: string;
  settings: { clients: number; durationMs: number; restarts: number; poolMax: number; abortShare: number; writeShare: number };
  passes: SoakPass[];
  targets: SoakTarget[];
  notes: string[];
}

// ---------------------------------------------------------------------------------------------
// One pass

const tally = (into: Record<string, number>, key: string) => (into[key] = (into[key] ?? 0) + 1);
const answerKey = (o: MixOutcome) => (o.status === undefined ? `no answer: ${o.error ?? '?'}` : `${o.status}${o.code ? ` ${o.code}` : ''}`);

interface PendingWrite {
  key: string;
  body: string;
  /** The workout id of its 201, when one came. */
  id?: string;
}

function requestMaker(url: string, writeBase: number, writes: Map<string, PendingWrite>): () => MixRequest {
  let n = 0;
  return () => {
    const abortAfterMs = Math.random() < ABORT_SHARE ? Math.random() * 50 : undefined;
    const pick = Math.random();
    const common = abortAfterMs === undefined ? {} : { abortAfterMs };
    if (pick < WRITE_SHARE) {
      const key = randomUUID();
      // durationSeconds is the write's number: its rows are counted per key after the load.
      const body = JSON.stringify({
        userId: WRITER_USER_ID,
        kind: 'run',
        startedAt: '2026-01-08T07:00:00Z',
        durationSeconds: writeBase + n++,
        sets: [{ exercise: 'squat', reps: 5, weightKg: 100 }],
      });
      writes.set(key, { key, body });
      return { kind: 'write', url: `${url}/api/workouts`, method: 'POST', body, headers: { 'idempotency-key': key }, ...common };
    }
    const path = pick < WRITE_SHARE + (1 - WRITE_SHARE) / 2 ? `/api/users/${DEMO_USER_ID}` : `/api/workouts/${DEMO_WORKOUT_ID}`;
    return { kind: path.startsWith('/api/users') ? 'user' : 'workout', url: `${url}${path}`, ...common };
  };
}

async function poolOf(url: string): Promise<unknown> {
  try {
    const res = await fetch(`${url}/stats`, { signal: AbortSignal.timeout(5_000) });
    return ((await res.json()) as { pool?: unknown }).pool;
  } catch {
    return undefined;
  }
}

function placeFiveOhThrees(outcomes: MixOutcome[], restarts: Restart[]): FiveOhThree {
  const r: FiveOhThree = { count: 0, withRetryAfter: 0, outsideWindow: 0, codes: {} };
  for (const o of outcomes) {
    if (o.status !== 503) continue;
    r.count++;
    if (o.retryAfter !== undefined) r.withRetryAfter++;
    tally(r.codes, o.code ?? '(none)');
    let best: number | undefined;
    let inside = false;
    for (const x of restarts) {
      const d = o.startMs - x.startMs;
      if (best === undefined || Math.abs(d) < Math.abs(best)) best = d;
      if (o.endMs >= x.startMs - 1_000 && o.startMs <= x.endMs + AROUND_RESTART_MS) inside = true;
    }
    if (!inside) r.outsideWindow++;
    if (best !== undefined) {
      r.minFromRestartMs = Math.min(r.minFromRestartMs ?? Infinity, best);
      r.maxFromRestartMs = Math.max(r.maxFromRestartMs ?? -Infinity, best);
    }
  }
  return r;
}

/** Replays every write without a 201 (same key, same body), then counts the rows per key. */
async function checkWrites(url: string, dbUrl: string, writeBase: number, writes: Map<string, PendingWrite>): Promise<WriteCheck> {
  const replayStatuses: Record<string, number> = {};
  let replayed = 0;
  let replayMismatch = 0;
  for (const w of writes.values()) {
    if (w.id !== undefined) continue;
    replayed++;
    try {
      const res = await fetch(`${url}/api/workouts`, {
        method: 'POST',
        body: w.body,
        headers: { 'content-type': 'application/json', 'idempotency-key': w.key },
        signal: AbortSignal.timeout(10_000),
      });
      const body = (await res.json()) as { id?: string; error?: { code?: string } };
      tally(replayStatuses, `${res.status}${body.error?.code ? ` ${body.error.code}` : ''}`);
      if (res.status === 201) w.id = body.id;
    } catch (err) {
      tally(replayStatuses, `no answer: ${(err as Error).message}`);
    }
  }
  // One more replay of a few acknowledged keys: the stored answer, never a second row.
  for (const w of [...writes.values()].filter((x) => x.id !== undefined).slice(0, 20)) {
    const res = await fetch(`${url}/api/workouts`, {
      method: 'POST',
      body: w.body,
      headers: { 'content-type': 'application/json', 'idempotency-key': w.key },
      signal: AbortSignal.timeout(10_000),
    });
    const body = (await res.json()) as { id?: string };
    if (res.status !== 201 || body.id !== w.id) replayMismatch++;
  }
  const client = new pg.Client({ connectionString: dbUrl, application_name: 'poolgate-bench-admin' });
  await client.connect();
  let rows: { n: number; c: number; ids: string[] }[];
  try {
    rows = (
      await client.query<{ n: number; c: number; ids: string[] }>(
        `SELECT duration_seconds AS n, count(*)::int AS c, array_agg(id::text) AS ids FROM workouts
         WHERE user_id = $1 AND duration_seconds >= $2 AND duration_seconds < $3 GROUP BY 1`,
        [WRITER_USER_ID, writeBase, writeBase + 100_000],
      )
    ).rows;
  } finally {
    await client.end();
  }
  const byNumber = new Map(rows.map((r) => [r.n, r]));
  let lost = 0;
  let acknowledged = 0;
  let neverAcknowledged = 0;
  for (const w of writes.values()) {
    const n = (JSON.parse(w.body) as { durationSeconds: number }).durationSeconds;
    const row = byNumber.get(n);
    if (w.id === undefined) neverAcknowledged++;
    else {
      acknowledged++;
      if (!row || !row.ids.includes(w.id)) lost++;
    }
  }
  const doubled = rows.filter((r) => r.c > 1).length;
  return { keys: writes.size, acknowledged, replayed, replayStatuses, lost, doubled, replayMismatch, neverAcknowledged };
}

async function soakPass(
  pass: (typeof PASSES)[number],
  index: number,
  plan: (typeof PLANS)[keyof typeof PLANS],
  databaseUrl: string,
  restart: () => Promise<void>,
  log: (line: string) => void,
): Promise<SoakPass> {
  let gateway: TargetProcess | undefined;
  try {
    gateway = await launchTarget('gateway', { databaseUrl, applicationName: 'poolgate-bench-soak', poolMax: POOL_MAX, env: pass.env });
    const url = gateway.urls.url;
    // Warm: connections open, statements named, lane latencies learnt.
    await runMix({ connections: 8, durationMs: 1_000, next: requestMaker(url, 0, new Map()), onOutcome: () => {} });
    const poolBefore = await poolOf(url);

    const writeBase = (index + 1) * 100_000;
    const writes = new Map<string, PendingWrite>();
    const next = requestMaker(url, writeBase, writes);
    const outcomes: MixOutcome[] = [];
    let abortRaced = 0;
    const restarts: Restart[] = [];
    const t0 = performance.now();
    const restarter = (async () => {
      for (let i = 1; i <= plan.restarts; i++) {
        const at = (plan.durationMs * i) / (plan.restarts + 1);
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, at - (performance.now() - t0))));
        const startMs = performance.now() - t0;
        await restart();
        restarts.push({ startMs, endMs: performance.now() - t0 });
        log(`restart ${i}: ${(startMs / 1000).toFixed(1)} s → ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      }
    })();
    const [windowMs] = await Promise.all([
      runMix({
        connections: CLIENTS,
        durationMs: plan.durationMs,
        next: () => next(),
        onOutcome: (o, req) => {
          outcomes.push(o);
          if (req.abortAfterMs !== undefined && !o.aborted) abortRaced++;
          if (req.kind === 'write' && o.status === 201 && !o.aborted) {
            const key = req.headers?.['idempotency-key'];
            const w = key === undefined ? undefined : writes.get(key);
            if (w) w.id = (o.body as { id: string }).id;
          }
        },
      }),
      restarter,
    ]);
    // Let the lanes' and the pool's counters settle before reading them.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const poolAfter = await poolOf(url);
    const answers: Record<string, number> = {};
    const answersByKind: Record<string, Record<string, number>> = {};
    let aborted = 0;
    const picked = new Set<MixOutcome>();
    for (const o of outcomes) {
      if (o.aborted) {
        aborted++;
        continue;
      }
      picked.add(o);
      tally(answers, answerKey(o));
      tally((answersByKind[o.kind] ??= {}), answerKey(o));
    }
    const writesChecked = await checkWrites(url, databaseUrl, writeBase, writes);
    return {
      label: pass.label,
      env: pass.env,
      windowMs,
      requests: outcomes.length,
      aborted,
      abortRaced,
      answers,
      answersByKind,
      fiveOhThree: placeFiveOhThrees([...picked], restarts),
      restarts,
      writes: writesChecked,
      poolBefore,
      poolAfter,
    };
  } finally {
    await gateway?.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Targets and the report

function evaluate(p: SoakPass): SoakTarget[] {
  const count = (prefix: string) =>
    Object.entries(p.answers)
      .filter(([k]) => k === prefix || k.startsWith(`${prefix} `))
      .reduce((n, [, c]) => n + c, 0);
  const f = p.fiveOhThree;
  const w = p.writes;
  const window =
    f.count === 0
      ? 'none'
      : `${f.count} (Retry-After on ${f.withRetryAfter}; ${f.outsideWindow} outside ${AROUND_RESTART_MS / 1000} s of a restart; ` +
        `sent ${((f.minFromRestartMs ?? 0) / 1000).toFixed(2)} … ${((f.maxFromRestartMs ?? 0) / 1000).toFixed(2)} s from the nearest restart's start)`;
  const noAnswer = Object.entries(p.answers)
    .filter(([k]) => k.startsWith('no answer'))
    .reduce((n, [, c]) => n + c, 0);
  return [
    { pass: p.label, target: '0 × 500 (not aborted)', measured: String(count('500')), met: count('500') === 0 },
    { pass: p.label, target: '0 × 504 (not aborted)', measured: String(count('504')), met: count('504') === 0 },
    {
      pass: p.label,
      target: '503 only with Retry-After, only around restarts',
      measured: window,
      met: f.withRetryAfter === f.count && f.outsideWindow === 0,
    },
    { pass: p.label, target: 'every request not aborted answered', measured: `${noAnswer} without an answer`, met: noAnswer === 0 },
    {
      pass: p.label,
      target: 'writes: none lost, none doubled',
      measured: `${w.keys} keys, ${w.acknowledged} acknowledged (${w.replayed} replayed after the load), ${w.lost} lost, ${w.doubled} doubled, ${w.replayMismatch} replays with another id`,
      met: w.lost === 0 && w.doubled === 0 && w.replayMismatch === 0,
    },
  ];
}

const counters = ['lanes', 'openedCount', 'closedCount', 'cancelledCount', 'overflowCount', 'slowToPoolCount', 'waitedBehindSlowCount'];

function pipelineLine(p: SoakPass): string {
  const before = (p.poolBefore as { pipeline?: Record<string, number> } | undefined)?.pipeline;
  const after = (p.poolAfter as { pipeline?: Record<string, number> } | undefined)?.pipeline;
  if (!after) return 'no lanes';
  return counters
    .filter((k) => after[k] !== undefined)
    .map((k) => `${k} ${k === 'lanes' ? after[k] : (after[k] ?? 0) - (before?.[k] ?? 0)}`)
    .join(', ');
}

const POOL_COUNTERS = ['openedCount', 'closedCount', 'cancelledCount', 'acquisitionCount', 'retryCount', 'errorCount'];

/** The pool's own counters over the pass: each session discarded after a cancel is a new connection (SCRAM + TLS here). */
function poolLine(p: SoakPass): string {
  const before = p.poolBefore as Record<string, number> | undefined;
  const after = p.poolAfter as Record<string, number> | undefined;
  if (!after) return '–';
  return POOL_COUNTERS.map((k) => `${k} ${(after[k] ?? 0) - (before?.[k] ?? 0)}`).join(', ');
}

export function renderSoakMarkdown(r: SoakResult): string {
  const m = r.machine;
  const lines = [
    `# Soak with aborts and restarts — ${r.date}${r.mode === 'quick' ? ' (quick)' : ''}`,
    '',
    `${m.cpus} cores (${m.cpuModel}); Node ${m.node}; PostgreSQL ${m.postgres} (${r.server}); load average ${m.loadAvg.start[0]!.toFixed(1)} at start, ` +
      `${m.loadAvg.end[0]!.toFixed(1)} at end. ${r.startedAt} → ${r.finishedAt} (${r.durationSec.toFixed(0)} s).`,
    '',
    `Per pass: ${r.settings.clients} clients for ${r.settings.durationMs / 1000} s, the Node gateway (POOL_MAX ${r.settings.poolMax}), ` +
      `${r.settings.writeShare * 100}% writes (POST /api/workouts, an Idempotency-Key each), the rest GET /api/users/:id and ` +
      `GET /api/workouts/:id in equal shares; ${r.settings.abortShare * 100}% of requests aborted by their client 0–50 ms after sending; ` +
      `PostgreSQL restarted ${r.settings.restarts}× (pg_ctl restart -m fast), evenly spread.`,
    '',
    '## Targets',
    '',
    '| pass | target | measured | |',
    '| --- | --- | --- | --- |',
    ...r.targets.map((t) => `| ${t.pass} | ${t.target} | ${t.measured} | ${t.met ? '✅' : '❌'} |`),
    '',
    '## Answers to requests not aborted',
    '',
  ];
  for (const p of r.passes) {
    lines.push(
      `### ${p.label}`,
      '',
      `${p.requests.toLocaleString('en-US')} requests in ${(p.windowMs / 1000).toFixed(1)} s (${Math.round((p.requests / p.windowMs) * 1000)} req/s); ` +
        `${p.aborted} aborted before their answer${p.abortRaced ? `, ${p.abortRaced} more picked for abort answered first (counted below)` : ''}. ` +
        `Restarts at ${p.restarts.map((x) => `${(x.startMs / 1000).toFixed(1)}–${(x.endMs / 1000).toFixed(1)} s`).join(', ')}.`,
      '',
      '| answer | all | user | workout | write |',
      '| --- | ---: | ---: | ---: | ---: |',
      ...Object.entries(p.answers)
        .sort((a, b) => b[1] - a[1])
        .map(
          ([k, n]) =>
            `| ${k} | ${n} | ${p.answersByKind.user?.[k] ?? 0} | ${p.answersByKind.workout?.[k] ?? 0} | ${p.answersByKind.write?.[k] ?? 0} |`,
        ),
      '',
      `503 codes: ${
        Object.entries(p.fiveOhThree.codes)
          .map(([k, n]) => `${k} ${n}`)
          .join(', ') || 'none'
      }. Replays after the load: ${
        Object.entries(p.writes.replayStatuses)
          .map(([k, n]) => `${k} × ${n}`)
          .join(', ') || 'none'
      }.`,
      '',
      `Lane counters over the pass (/stats pool.pipeline): ${pipelineLine(p)}.`,
      '',
      `Pool counters over the pass (/stats pool): ${poolLine(p)}.`,
      '',
    );
  }
  if (r.notes.length) lines.push('## Notes', '', ...r.notes.map((n) => `- ${n}`), '');
  lines.push(
    `Generated by \`npm run bench:soak${r.mode === 'quick' ? ' -- --quick' : ''}\` (bench/soak.ts). Raw figures: the .json next to this file.`,
    '',
  );
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// CLI

const USAGE = `usage: npm run bench:soak [-- --quick]

  --quick   20 s per pass and one restart (default: 150 s and four restarts)

Starts a private PostgreSQL (SCRAM over TLS; deleted at the end). Writes bench/results/<date>-soak.md and .json (quick: -soak-quick).`;

async function main(): Promise<number> {
  const mode = quickOrExit('soak', USAGE);
  if (typeof mode === 'number') return mode;
  const plan = PLANS[mode];
  const startedAt = new Date();
  const loadAvgStart = os.loadavg();
  const log = (line: string) => console.log(`  ${line}`);
  await removeStaleInstances();
  const instance = await startBenchPostgres();
  const stopping = () => void instance.destroy().finally(() => process.exit(130));
  process.once('SIGINT', stopping);
  process.once('SIGTERM', stopping);
  try {
    const db = await createBenchDatabase(instance.url('postgres'), { prefix: 'poolgate_soak_' });
    await prepareSchema(db.url);
    const passes: SoakPass[] = [];
    for (const [i, pass] of PASSES.entries()) {
      console.log(`soak: ${pass.label}, ${plan.durationMs / 1000} s, ${plan.restarts} restart(s)`);
      const p = await soakPass(pass, i, plan, db.url, () => instance.restart(), log);
      passes.push(p);
      for (const t of evaluate(p)) log(`${t.met ? '✅' : '❌'} ${t.target}: ${t.measured}`);
    }
    const result: SoakResult = {
      ...runStamp(mode, startedAt),
      machine: { ...machine(db.postgres, undefined), loadAvg: { start: loadAvgStart, end: os.loadavg() } },
      server: `private PostgreSQL, ${instance.auth}`,
      settings: {
        clients: CLIENTS,
        durationMs: plan.durationMs,
        restarts: plan.restarts,
        poolMax: POOL_MAX,
        abortShare: ABORT_SHARE,
        writeShare: WRITE_SHARE,
      },
      passes,
      targets: passes.flatMap(evaluate),
      notes: [],
    };
    const dir = fileURLToPath(new URL('./results/', import.meta.url));
    mkdirSync(dir, { recursive: true });
    const base = join(dir, `${localDate(startedAt)}-soak${mode === 'quick' ? '-quick' : ''}`);
    writeFileSync(`${base}.md`, renderSoakMarkdown(result));
    writeFileSync(`${base}.json`, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`soak: wrote ${base}.md and .json in ${result.durationSec.toFixed(0)} s`);
    return 0;
  } finally {
    // The admin connection died with the first restart: dropping the database is the folder's deletion.
    await instance.destroy();
  }
}

runIfMain(import.meta.url, main);
