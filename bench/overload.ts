/**
 * `npm run bench:overload` (about 1.5 minutes): issue 21's admission under a sustained overload.
 * One Node gateway (POOL_MAX=5, no lanes) in a process of its own serves bench/mixed-app.ts; every
 * request is its 50 ms route (`pg_sleep`). First the unloaded latency (one client, one request at
 * a time) and the measured maximum goodput (a closed loop of 2 × POOL_MAX clients); then open-loop
 * arrivals — requests sent at a fixed rate whatever the answers, as independent users do — at 1×,
 * 3× and 5× that maximum, 15 s each with a pause between. Per step: admitted p99 and goodput over
 * its last 5 s, the shed answers (503) and how fast they came — as the client saw them, and for the
 * gate's sheds (`overloaded`) at the server too (their Server-Timing `total`: the app's own time,
 * without the load generator's lag on the same cores) — and when it settled (the first second from which every second admits half the
 * maximum or more, its p99 within 2× the unloaded p99).
 *
 * Database: BENCH_DATABASE_URL, else DATABASE_URL, else postgres://postgres@127.0.0.1:5432/test;
 * works in poolgate_overload_<pid>, dropped at the end. Writes bench/results/<date>-overload.json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { quickOrExit, runIfMain } from './cli.js';
import { createBenchDatabase, prepareSchema, sourceDatabaseUrl } from './database.js';
import { latencyOf, now, runMix, serverTotalMs } from './load.js';
import { SLOW_PATH } from './mixed-app.js';
import { localDate } from './report.js';
import { launchTarget } from './targets.js';

const POOL_MAX = 5;
const ROUTE_MS = 50;
const STEP_MS = 15_000;
const MEASURED_FROM_MS = 10_000;
const PAUSE_MS = 3_000;
const LOADS = [1, 3, 5] as const;

interface Answer {
  /** Sent at, from the step's start; how long the answer took; its status ('error' when none came). */
  sentMs: number;
  ms: number;
  status: number | 'error';
  code?: string;
  /** The server's own time for it (Server-Timing `total`): without the client's lag and the network. */
  serverMs?: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function send(url: string): Promise<Omit<Answer, 'sentMs'>> {
  const started = now();
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(20_000) });
    const text = await res.text();
    const code = res.ok ? undefined : ((JSON.parse(text) as { error?: { code?: string } }).error?.code ?? '?');
    const serverMs = serverTotalMs(res.headers.get('server-timing'));
    return { ms: now() - started, status: res.status, ...(code ? { code } : {}), ...(serverMs === undefined ? {} : { serverMs }) };
  } catch {
    return { ms: now() - started, status: 'error' };
  }
}

/** Requests at `perSec` for `forMs`, sent on schedule whatever the answers; resolves once all answered. */
async function openLoop(url: string, perSec: number, forMs: number): Promise<Answer[]> {
  const t0 = now();
  const pending: Promise<Answer>[] = [];
  for (let i = 0; ; i++) {
    const due = (i * 1000) / perSec;
    if (due >= forMs) break;
    const wait = t0 + due - now();
    if (wait > 1) await sleep(wait);
    const sentMs = now() - t0;
    pending.push(send(url).then((a) => ({ sentMs, ...a })));
  }
  return Promise.all(pending);
}

const p99Of = (xs: number[]) => latencyOf(Float64Array.from(xs)).p99;

/**
 * The gate's sheds (503 `overloaded`) as the server timed them (Server-Timing `total`): p50, p99,
 * max, and how many took ≤ 5 ms (issue 21's target). A 503 `pool_exhausted` is no shed: it waited
 * in the queue until its acquire timeout.
 */
function shedAtServer(shed: Answer[]) {
  const ms = shed.flatMap((a) => (a.code === 'overloaded' && a.serverMs !== undefined ? [a.serverMs] : []));
  if (ms.length === 0) return {};
  const l = latencyOf(Float64Array.from(ms));
  return {
    shedServerCount: ms.length,
    shedServerP50Ms: l.p50,
    shedServerP99Ms: l.p99,
    shedServerMaxMs: l.max,
    shedServerWithin5Ms: ms.filter((x) => x <= 5).length,
  };
}

function summarize(answers: Answer[], unloadedP99: number, maxPerSec: number) {
  const window = answers.filter((a) => a.sentMs >= MEASURED_FROM_MS);
  const ok = window.filter((a) => a.status === 200);
  const shed = answers.filter((a) => a.status === 503);
  const seconds = Math.ceil(STEP_MS / 1000);
  const perSecond = Array.from({ length: seconds }, (_, s) => {
    const inSec = answers.filter((a) => a.status === 200 && a.sentMs >= s * 1000 && a.sentMs < (s + 1) * 1000);
    return { s, ok: inSec.length, p99: inSec.length ? p99Of(inSec.map((a) => a.ms)) : 0 };
  });
  let settledAtSec: number | undefined;
  // A second counts as settled when half the maximum or more was admitted in it, within 2× the unloaded p99.
  const settled = (x: { ok: number; p99: number }) => x.ok >= maxPerSec / 2 && x.p99 <= 2 * unloadedP99;
  for (let s = seconds - 1; s >= 0 && settled(perSecond[s]!); s--) settledAtSec = s;
  const codes: Record<string, number> = {};
  for (const a of answers)
    if (a.status !== 200) codes[`${a.status} ${a.code ?? ''}`.trim()] = (codes[`${a.status} ${a.code ?? ''}`.trim()] ?? 0) + 1;
  return {
    sent: answers.length,
    admittedP99Ms: p99Of(ok.map((a) => a.ms)),
    admittedP99VsUnloaded: p99Of(ok.map((a) => a.ms)) / unloadedP99,
    goodputPerSec: ok.length / ((STEP_MS - MEASURED_FROM_MS) / 1000),
    goodputVsMax: ok.length / ((STEP_MS - MEASURED_FROM_MS) / 1000) / maxPerSec,
    shed: shed.length,
    shedAnswerP50Ms: shed.length ? latencyOf(Float64Array.from(shed.map((a) => a.ms))).p50 : 0,
    shedAnswerP99Ms: shed.length ? p99Of(shed.map((a) => a.ms)) : 0,
    ...shedAtServer(shed),
    otherThan200: codes,
    settledAtSec,
    perSecond,
  };
}

const USAGE = `usage: npm run bench:overload
One gateway (POOL_MAX 5, no lanes, POOL_OVERLOAD_SHEDDING=on) serving a 50 ms route at 1x, 3x and 5x its
measured capacity; about 1.5 minutes (there is no quick pass). Writes bench/results/<date>-overload.json.`;

async function main(): Promise<number> {
  const mode = quickOrExit('overload', USAGE);
  if (typeof mode === 'number') return mode;
  if (mode === 'quick') {
    console.error(`overload: there is no quick pass\n${USAGE}`);
    return 2;
  }
  const db = await createBenchDatabase(sourceDatabaseUrl(), { prefix: 'poolgate_overload_' });
  const log = (line: string) => console.log(`  ${line}`);
  try {
    await prepareSchema(db.url);
    const gateway = await launchTarget('gateway', {
      databaseUrl: db.url,
      applicationName: 'poolgate-bench-overload',
      poolMax: POOL_MAX,
      env: { PG_PIPELINE_LANES: '0', POOL_MIN: String(POOL_MAX), POOL_OVERLOAD_SHEDDING: 'on' },
      appModule: new URL('./mixed-app.ts', import.meta.url).href,
    });
    try {
      const url = `${gateway.urls.url}${SLOW_PATH}?ms=${ROUTE_MS}`;
      const unloaded: number[] = [];
      await runMix({
        connections: 1,
        durationMs: 3_000,
        next: () => ({ kind: 'x', url }),
        onOutcome: (o) => void (o.status === 200 && unloaded.push(o.endMs - o.startMs)),
      });
      const unloadedP99 = p99Of(unloaded);
      let maxOk = 0;
      const maxMs = await runMix({
        connections: 2 * POOL_MAX,
        durationMs: 5_000,
        next: () => ({ kind: 'x', url }),
        onOutcome: (o) => void (o.status === 200 && maxOk++),
      });
      const maxPerSec = (maxOk / maxMs) * 1000;
      log(`unloaded p99 ${unloadedP99.toFixed(1)} ms (${unloaded.length} requests); measured maximum ${maxPerSec.toFixed(1)} req/s`);
      const steps: Record<string, ReturnType<typeof summarize> & { load: number; perSecRate: number }> = {};
      for (const load of LOADS) {
        await sleep(PAUSE_MS);
        const rate = load * maxPerSec;
        const s = summarize(await openLoop(url, rate, STEP_MS), unloadedP99, maxPerSec);
        steps[`${load}x`] = { load, perSecRate: rate, ...s };
        log(
          `${load}× (${rate.toFixed(0)} req/s): admitted p99 ${s.admittedP99Ms.toFixed(1)} ms (${s.admittedP99VsUnloaded.toFixed(2)}× unloaded), ` +
            `goodput ${s.goodputPerSec.toFixed(1)}/s (${(s.goodputVsMax * 100).toFixed(0)}% of max), shed ${s.shed} (answer p50 ${s.shedAnswerP50Ms.toFixed(1)} / p99 ${s.shedAnswerP99Ms.toFixed(1)} ms; ` +
            `'overloaded' at the server p50 ${s.shedServerP50Ms?.toFixed(2) ?? '–'} / p99 ${s.shedServerP99Ms?.toFixed(2) ?? '–'} / max ${s.shedServerMaxMs?.toFixed(1) ?? '–'} ms, ` +
            `${s.shedServerWithin5Ms ?? 0} of ${s.shedServerCount ?? 0} within 5 ms), ` +
            `settled at ${s.settledAtSec ?? 'never'} s, other ${JSON.stringify(s.otherThan200)}`,
        );
      }
      const dir = fileURLToPath(new URL('./results/', import.meta.url));
      mkdirSync(dir, { recursive: true });
      const file = join(dir, `${localDate(new Date())}-overload.json`);
      writeFileSync(file, `${JSON.stringify({ poolMax: POOL_MAX, routeMs: ROUTE_MS, unloadedP99, maxPerSec, steps }, null, 2)}\n`);
      console.log(`overload: wrote ${file}`);
      return 0;
    } finally {
      await gateway.stop();
    }
  } finally {
    await db.drop().catch((err: unknown) => console.error(`overload: could not drop ${db.name}: ${(err as Error).message}`));
  }
}

runIfMain(import.meta.url, main);
