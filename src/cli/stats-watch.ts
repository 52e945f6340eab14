/**
 * `poolgate stats [--watch] <url>`: the figures of a running gateway's GET /stats as plain text,
 * once or every `--interval` ms. A route's rate is its requests since the previous poll over the
 * time between the two polls (none on the first). On a terminal each poll redraws the screen; into
 * a pipe or a file each poll is one block after a blank line. A failure is one line naming the fix.
 */
import { perSecond, sameProcess } from '../stats/rates.js';
import type { RouteSnapshot, StatsSnapshot } from '../stats/registry.js';

export interface StatsWatchOptions {
  /** The gateway's base URL (its /stats is fetched), or the /stats URL itself. */
  url: string;
  /** Bearer token for /stats (--token, else OPS_TOKEN). */
  token?: string | undefined;
  /** Poll until stopped (SIGINT/SIGTERM or `signal`); else print once. */
  watch: boolean;
  intervalMs: number;
  out: { write(text: string): unknown; isTTY?: boolean };
  err: { write(text: string): unknown };
  /** Stops the watch (the bin wires SIGINT and SIGTERM to it). */
  signal?: AbortSignal;
  /** How long one poll may take. */
  timeoutMs?: number;
}

/** A poll that failed, as the one line to print. */
export class StatsFetchError extends Error {
  override name = 'StatsFetchError';
}

const CLEAR = '\x1b[2J\x1b[H';

/** GET <base>/stats: the snapshot, or a StatsFetchError whose message names the fix. */
export async function fetchStats(statsUrl: string, token: string | undefined, timeoutMs: number): Promise<StatsSnapshot> {
  let res: Response;
  try {
    res = await fetch(statsUrl, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: unknown } }).cause;
    const code = typeof cause?.code === 'string' ? cause.code : (err as Error).name === 'TimeoutError' ? 'timed out' : 'fetch failed';
    throw new StatsFetchError(`poolgate: cannot reach ${statsUrl} (${code}); is the gateway running there? check the URL`);
  }
  if (res.status === 401)
    throw new StatsFetchError(
      token
        ? `poolgate: ${statsUrl} refused the token (401); pass the gateway's OPS_TOKEN with --token or OPS_TOKEN`
        : `poolgate: ${statsUrl} needs the gateway's OPS_TOKEN (401); pass --token <OPS_TOKEN> or set OPS_TOKEN`,
    );
  const text = await res.text();
  if (!res.ok)
    throw new StatsFetchError(`poolgate: ${statsUrl} answered ${res.status}; is this a poolgate gateway with its ops routes mounted?`);
  try {
    const body = JSON.parse(text) as StatsSnapshot;
    if (Array.isArray(body.routes)) return body;
  } catch {
    // reported below
  }
  throw notStats(statsUrl);
}

const notStats = (statsUrl: string) =>
  new StatsFetchError(`poolgate: ${statsUrl} did not answer poolgate's stats JSON; is this a poolgate gateway?`);

/** `http://host:8788` or `http://host:8788/stats` → the /stats URL; undefined when no http(s) URL. */
export function statsUrlOf(raw: string): string | undefined {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return undefined;
  // The URL is printed with every poll and error: no credentials or query in it (fetch refuses a
  // URL with credentials anyway; the token goes in a header).
  url.username = url.password = url.search = '';
  if (!url.pathname.endsWith('/stats')) url.pathname = `${url.pathname.replace(/\/+$/, '')}/stats`;
  return url.toString();
}

/** One poll's text. `previous` (with the time it was taken) gives each route's rate since then. */
export function renderStats(snapshot: StatsSnapshot, at: Date, source: string, previous?: { snapshot: StatsSnapshot; at: Date }): string {
  const lines: string[] = [];
  const time = at.toISOString().slice(11, 19);
  lines.push(`poolgate stats  ${source}  scope ${snapshot.scope}  up ${snapshot.uptimeSeconds} s  at ${time} UTC`);
  const pool = snapshot.pool;
  lines.push(
    pool
      ? `pool      total ${pool.total}  active ${pool.active}  idle ${pool.idle}  waiting ${pool.waiting}  max ${pool.max}` +
          (pool.budget ? `  budget share ${pool.budget.share}` : '')
      : 'pool      (none: this runtime keeps no pool)',
  );
  lines.push(
    `breakers  ${snapshot.breakers.length ? snapshot.breakers.map((b) => `${b.name} ${b.state}${b.openedCount ? ` (opened ${b.openedCount}×)` : ''}`).join('  ') : 'none'}`,
  );
  // Across a restart (another process answered) the counters began again: no rates for that poll.
  const since = previous && sameProcess(previous.snapshot, snapshot) ? previous : undefined;
  const seconds = since ? (at.getTime() - since.at.getTime()) / 1000 : 0;
  const before = new Map(since?.snapshot.routes.map((r) => [`${r.method} ${r.route}`, r.count]));
  const rows = snapshot.routes.map((r) => {
    // A route absent from the previous poll had no requests before it.
    const rate = since && perSecond(r.count, before.get(`${r.method} ${r.route}`) ?? 0, seconds);
    return row(r, rate === undefined ? '-' : rate.toFixed(1));
  });
  lines.push('', ...table(['route', 'count', 'rate/s', 'p50 ms', 'p99 ms', 'db ms', 'wait ms', 'errors', 'cache hit', 'clients'], rows));
  lines.push('(db ms and wait ms: means per request; rate: requests per second since the previous poll)');
  return `${lines.join('\n')}\n`;
}

const fixed = (ms: number) => ms.toFixed(2);

/** A route's cells, its rate already written. */
function row(r: RouteSnapshot, rate: string): string[] {
  const clients = Object.entries(r.clients)
    .map(([kind, n]) => `${kind} ${n}`)
    .join(', ');
  return [
    `${r.method} ${r.route}`,
    String(r.count),
    rate,
    fixed(r.latencyMs.p50),
    fixed(r.latencyMs.p99),
    fixed(r.dbTimeMs.mean),
    fixed(r.acquireWaitMs.mean),
    String(r.errorCount),
    r.cache ? `${Math.round(r.cache.hitRate * 100)}%` : '-',
    clients || '-',
  ];
}

/** Columns padded to their widest cell; numbers right-aligned, text left-aligned. */
function table(header: string[], rows: string[][]): string[] {
  if (rows.length === 0) return [header.join('  '), '(no requests yet)'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const numeric = (i: number) => i > 0 && i < header.length - 1;
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (numeric(i) ? c.padStart(widths[i]!) : i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

/**
 * Prints the stats once, or polls until stopped. Resolves with the exit code: 1 when the first
 * poll fails (its line on stderr); later failures are printed and the watch goes on (a gateway
 * restarting comes back).
 * @example process.exitCode = await watchStats({ url, watch: true, intervalMs: 2000, out: process.stdout, err: process.stderr });
 */
export async function watchStats(options: StatsWatchOptions): Promise<number> {
  const { url, token, watch, intervalMs, out, err, signal, timeoutMs = Math.max(1_000, Math.min(intervalMs, 10_000)) } = options;
  const statsUrl = statsUrlOf(url);
  if (!statsUrl) {
    err.write(`poolgate: "${url}" is not an http:// or https:// URL; give the gateway's address, e.g. http://127.0.0.1:8788\n`);
    return 1;
  }
  const source = statsUrl.replace(/\/stats$/, '');
  let previous: { snapshot: StatsSnapshot; at: Date } | undefined;
  for (let poll = 0; ; poll++) {
    try {
      const snapshot = await fetchStats(statsUrl, token, timeoutMs);
      const at = new Date();
      const text = rendered(snapshot, at, source, previous, statsUrl);
      out.write(watch && out.isTTY ? `${CLEAR}${text}` : poll > 0 ? `\n${text}` : text);
      previous = { snapshot, at };
    } catch (e) {
      if (!(e instanceof StatsFetchError)) throw e;
      err.write(`${e.message}\n`);
      if (poll === 0) return 1;
    }
    if (!watch || signal?.aborted) return 0;
    const stopped = await sleep(intervalMs, signal);
    if (stopped) return 0;
  }
}

/** renderStats, or the not-poolgate error when the JSON lacked what it reads (a stack trace is never the answer). */
function rendered(
  snapshot: StatsSnapshot,
  at: Date,
  source: string,
  previous: Parameters<typeof renderStats>[3],
  statsUrl: string,
): string {
  try {
    return renderStats(snapshot, at, source, previous);
  } catch {
    throw notStats(statsUrl);
  }
}

/** Waits `ms`; resolves true when `signal` stopped the wait. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve(false);
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
