/**
 * Watches a PostgreSQL server during a flood, from a process of its own: client backends counted in
 * pg_stat_activity (bench/load.ts ConnectionSampler, server-wide) and an operator's psql-style
 * connect (connect, SELECT 1, disconnect) every few tens of ms. In the process that generates the
 * flood both would wait behind hundreds of requests on one event loop, and a sampler that samples
 * every 700 ms instead of every 20 ms misses the peaks it is there to see.
 *
 * The parent starts it with startServerWatch(); the child connects, says it is ready, and watches
 * until its stdin closes; then it prints what it saw as one `@@watch` JSON line and exits (a parent
 * that dies closes that stdin too).
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { ConnectionSampler, now } from './load.js';

const MARK = '@@watch ';

export interface WatchConfig {
  /** A superuser's URL (pg_stat_activity in full). */
  samplerUrl: string;
  samplerApp: string;
  /** Undefined: no operator connects. */
  operatorUrl?: string;
  operatorApp: string;
  operatorEveryMs: number;
  samplerIntervalMs: number;
}

export interface OperatorFigures {
  attempted: number;
  admitted: number;
  /** Failed connects by SQLSTATE (or message). */
  refused: Record<string, number>;
  /** Slowest admitted connect + SELECT 1. */
  slowestMs: number;
}

export interface WatchFigures {
  /** Peak client backends over the samples: all of them, and by application_name. */
  peakAll: number;
  byApp: Record<string, number>;
  /** Peak of the summed backends per sample, for each group asked for. */
  peaks: Record<string, number>;
  samples: number;
  /** Longest gap between two samples (a starved sampler shows here). */
  longestGapMs: number;
  operator: OperatorFigures;
}

/** Groups of application_names whose summed peak the parent wants: name → prefix ('!' + name: all but it). */
export type PeakGroups = Record<string, string>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An operator's psql every `everyMs` until `signal` aborts: connect, SELECT 1, disconnect. */
export async function operatorLoop(url: string, app: string, everyMs: number, signal: AbortSignal): Promise<OperatorFigures> {
  const f: OperatorFigures = { attempted: 0, admitted: 0, refused: {}, slowestMs: 0 };
  while (!signal.aborted) {
    const t = now();
    const client = new pg.Client({ connectionString: url, application_name: app, connectionTimeoutMillis: 5_000 });
    client.on('error', () => {});
    f.attempted++;
    try {
      await client.connect();
      await client.query('SELECT 1');
      f.admitted++;
      f.slowestMs = Math.max(f.slowestMs, now() - t);
    } catch (err) {
      const key = String((err as { code?: string }).code ?? (err as Error).message);
      f.refused[key] = (f.refused[key] ?? 0) + 1;
    } finally {
      await client.end().catch(() => {});
    }
    await sleep(Math.max(0, everyMs - (now() - t)));
  }
  return f;
}

const matches = (pattern: string) => (app: string) => (pattern.startsWith('!') ? app !== pattern.slice(1) : app.startsWith(pattern));

async function childMain(): Promise<void> {
  const cfg = JSON.parse(process.env.POOLGATE_WATCH ?? '{}') as WatchConfig & { groups: PeakGroups };
  const client = new pg.Client({ connectionString: cfg.samplerUrl, application_name: cfg.samplerApp });
  await client.connect();
  const sampler = new ConnectionSampler(client, undefined, cfg.samplerIntervalMs);
  const stop = new AbortController();
  sampler.start(10 * 60_000);
  const operator = cfg.operatorUrl
    ? operatorLoop(cfg.operatorUrl, cfg.operatorApp, cfg.operatorEveryMs, stop.signal)
    : Promise.resolve<OperatorFigures>({ attempted: 0, admitted: 0, refused: {}, slowestMs: 0 });
  process.stdout.write(`${MARK}${JSON.stringify({ ready: true })}\n`);
  await new Promise<void>((resolve) => createInterface({ input: process.stdin }).once('close', resolve));
  stop.abort();
  const [peaks, op] = await Promise.all([sampler.stop(), operator]);
  await client.end().catch(() => {});
  const figures: WatchFigures = {
    peakAll: peaks.total,
    byApp: peaks.byApp,
    peaks: Object.fromEntries(Object.entries(cfg.groups).map(([name, pattern]) => [name, peaks.peakOf(matches(pattern))])),
    samples: peaks.sampleCount,
    longestGapMs: peaks.longestGapMs,
    operator: op,
  };
  process.stdout.write(`${MARK}${JSON.stringify(figures)}\n`);
  process.exit(0);
}

export interface ServerWatch {
  /** Ends the watch and resolves with what it saw. */
  stop(): Promise<WatchFigures>;
}

/**
 * Starts a watcher process; resolves once it samples (and the operator, if any, connects).
 * @example const watch = await startServerWatch(cfg, { gateways: 'poolgate-bench-scale' }); … const seen = await watch.stop();
 */
export function startServerWatch(cfg: WatchConfig, groups: PeakGroups): Promise<ServerWatch> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], {
    cwd: fileURLToPath(new URL('../', import.meta.url)),
    env: { PATH: process.env.PATH, HOME: process.env.HOME, POOLGATE_WATCH: JSON.stringify({ ...cfg, groups }) },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4_000)));
  const lines = createInterface({ input: child.stdout });
  const messages: ((msg: Record<string, unknown>) => void)[] = [];
  lines.on('line', (line) => {
    if (line.startsWith(MARK)) messages.shift()?.(JSON.parse(line.slice(MARK.length)) as Record<string, unknown>);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const next = () =>
    Promise.race([
      new Promise<Record<string, unknown>>((resolve) => messages.push(resolve)),
      exited.then(() => Promise.reject(new Error(`the server watch exited:\n${err}`))),
    ]);
  let stopping: Promise<WatchFigures> | undefined;
  return next().then(() => ({
    stop: () =>
      (stopping ??= (async () => {
        const figures = next();
        child.stdin.end();
        return (await figures) as unknown as WatchFigures;
      })()),
  }));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) void childMain();
