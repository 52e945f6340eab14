/**
 * The dashboard's script, run in the operator's browser (not in poolgate): it polls `stats` (the
 * JSON of src/stats/registry.ts, next to the page wherever the ops part is mounted) and draws the
 * last minutes with uPlot, which the page loads first as a global. Compiled by esbuild into
 * assets.ts (`npm run build:dashboard`), so the package carries it as a string and the user
 * builds nothing; not part of the compiled library (tsconfig.build.json leaves it out).
 *
 * Rates and per-request means come from the difference between two polls (a counter that went
 * down means another process or isolate answered: that interval is left blank). Nothing from the
 * server is written as HTML: route names and breaker names go in as text.
 *
 * `?interval=<ms>` (default 2000) and `?minutes=<n>` (default 5) change the polling and the window.
 * Where /stats needs OPS_TOKEN, the page asks for it and keeps it in sessionStorage (this tab
 * only, gone when it closes), sending it as `Authorization: Bearer` on each poll.
 */
import type UPlot from 'uplot';
import type { RouteSnapshot, StatsSnapshot } from '../../stats/registry.js';
import { perSecond, sameProcess } from '../../stats/rates.js';

const Plot = (globalThis as unknown as { uPlot: typeof UPlot }).uPlot;

const TOKEN_KEY = 'poolgate.opsToken';
const params = new URLSearchParams(location.search);
const clamp = (raw: string | null, fallback: number, min: number, max: number) => {
  const n = Number(raw);
  return raw === null || !Number.isFinite(n) ? fallback : Math.min(max, Math.max(min, n));
};
const intervalMs = clamp(params.get('interval'), 2000, 250, 60_000);
const windowSeconds = clamp(params.get('minutes'), 5, 1, 60) * 60;

const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d', '#475569', '#ea580c'];
const colour = (i: number) => PALETTE[i % PALETTE.length]!;
const BREAKER_COLOURS: Record<string, string> = { closed: '#16a34a', 'half-open': '#d97706', open: '#dc2626' };

type Value = number | null;

/** One poll's figures, kept for the window. */
interface Point {
  t: number;
  stats: StatsSnapshot;
}

const points: Point[] = [];
let polls = 0;

const $ = (id: string) => document.getElementById(id)!;
const routeKey = (r: RouteSnapshot) => `${r.method} ${r.route}`;
/** The page's own files are requests too; they would only clutter the charts. */
const shown = (r: RouteSnapshot) => !r.route.startsWith('/dashboard');

/** Per interval: rate, means; per poll: the ring's quantiles. Undefined where the route is absent or a counter went back. */
function routeSeries(key: string) {
  const rate: Value[] = [];
  const p50: Value[] = [];
  const p99: Value[] = [];
  const db: Value[] = [];
  const acquire: Value[] = [];
  for (let i = 0; i < points.length; i++) {
    const now = points[i]!.stats.routes.find((r) => routeKey(r) === key);
    const before = i > 0 ? points[i - 1]!.stats.routes.find((r) => routeKey(r) === key) : undefined;
    const seconds = i > 0 ? points[i]!.t - points[i - 1]!.t : 0;
    p50.push(now ? now.latencyMs.p50 : null);
    p99.push(now ? now.latencyMs.p99 : null);
    // A route absent from the previous poll had no requests before this interval.
    if (!now || i === 0 || !samePoll(i) || seconds <= 0 || (before && now.count < before.count)) {
      rate.push(null);
      db.push(null);
      acquire.push(null);
      continue;
    }
    const count = now.count - (before?.count ?? 0);
    rate.push(round(count / seconds));
    db.push(count > 0 ? round((now.dbTimeMs.sum - (before?.dbTimeMs.sum ?? 0)) / count) : null);
    acquire.push(count > 0 ? round((now.acquireWaitMs.sum - (before?.acquireWaitMs.sum ?? 0)) / count) : null);
  }
  return { rate, p50, p99, db, acquire };
}

/** Polls i - 1 and i were answered by the same process (stats/rates.ts). */
const samePoll = (i: number) => sameProcess(points[i]!.stats, points[i - 1]!.stats);

const round = (x: number) => Math.round(x * 1000) / 1000;

/** The per-second rate of a counter between polls; null across a restart or a missing figure. */
function counterRate(read: (s: StatsSnapshot) => number | undefined): Value[] {
  return points.map((p, i) => {
    if (i === 0 || !samePoll(i)) return null;
    const rate = perSecond(read(p.stats), read(points[i - 1]!.stats), p.t - points[i - 1]!.t);
    return rate === undefined ? null : round(rate);
  });
}

interface ChartSpec {
  id: string;
  unit: string;
  series: { label: string; stroke: string; dash?: number[]; values: Value[] }[];
}

const charts = new Map<string, { plot: UPlot; signature: string }>();

/** Draws (or redraws) one chart; rebuilt only when its set of series changes. */
function draw(spec: ChartSpec): void {
  const box = $(spec.id);
  const holder = box.querySelector<HTMLElement>('.plot')!;
  const data = [points.map((p) => p.t), ...spec.series.map((s) => s.values)] as UPlot.AlignedData;
  const signature = spec.series.map((s) => s.label).join('\n');
  const width = Math.max(280, holder.clientWidth);
  let chart = charts.get(spec.id);
  if (chart && chart.signature !== signature) {
    chart.plot.destroy();
    chart = undefined;
  }
  if (!chart) {
    holder.replaceChildren();
    const plot = new Plot(
      {
        width,
        height: 220,
        scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(max ?? 0, 1e-3) * 1.1] } },
        axes: [{}, { values: (_u, ticks) => ticks.map((v) => `${+v.toPrecision(3)} ${spec.unit}`), size: 70 }],
        series: [
          {},
          ...spec.series.map((s) => ({
            label: s.label,
            stroke: s.stroke,
            width: 1.5,
            spanGaps: false,
            ...(s.dash ? { dash: s.dash } : {}),
          })),
        ],
        legend: { live: true },
      },
      data,
      holder,
    );
    chart = { plot, signature };
    charts.set(spec.id, chart);
  } else {
    chart.plot.setData(data);
    if (Math.abs(chart.plot.width - width) > 4) chart.plot.setSize({ width, height: 220 });
  }
  // What a reader (or the browser test) can check: how many polls carry a value in some series.
  const filled = data[0].filter((_, i) => spec.series.some((s) => s.values[i] !== null && s.values[i] !== undefined)).length;
  box.dataset.points = String(filled);
  box.dataset.series = String(spec.series.length);
  box.dataset.max = String(Math.max(0, ...spec.series.flatMap((s) => s.values.filter((v): v is number => v !== null))));
}

/** Which clients served each route, since start: one bar per route, a segment per client. */
function drawClients(latest: StatsSnapshot): void {
  const box = $('clients');
  const list = box.querySelector<HTMLElement>('.bars')!;
  const kinds = [...new Set(latest.routes.filter(shown).flatMap((r) => Object.keys(r.clients)))].sort();
  const rows = latest.routes.filter(shown).map((r) => {
    const row = document.createElement('div');
    row.className = 'bar-row';
    const label = document.createElement('span');
    label.className = 'bar-label';
    label.textContent = routeKey(r);
    const bar = document.createElement('span');
    bar.className = 'bar';
    const total = Object.values(r.clients).reduce((a, b) => a + (b ?? 0), 0) || 1;
    for (const kind of kinds) {
      const n = r.clients[kind as keyof typeof r.clients] ?? 0;
      if (n === 0) continue;
      const part = document.createElement('span');
      part.className = 'bar-part';
      part.style.width = `${(100 * n) / total}%`;
      part.style.background = colour(kinds.indexOf(kind));
      part.title = `${kind}: ${n}`;
      bar.append(part);
    }
    row.append(label, bar);
    return row;
  });
  const legend = document.createElement('div');
  legend.className = 'bar-legend';
  for (const kind of kinds) {
    const item = document.createElement('span');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = colour(kinds.indexOf(kind));
    item.append(swatch, document.createTextNode(kind));
    legend.append(item);
  }
  list.replaceChildren(legend, ...rows);
  box.dataset.points = String(rows.length);
}

/** Each breaker's state at each poll in the window: a strip of coloured cells, newest on the right. */
function drawBreakers(): void {
  const box = $('breakers');
  const list = box.querySelector<HTMLElement>('.strips')!;
  const names = [...new Set(points.flatMap((p) => p.stats.breakers.map((b) => b.name)))];
  const rows = names.map((name) => {
    const row = document.createElement('div');
    row.className = 'strip-row';
    const label = document.createElement('span');
    label.className = 'bar-label';
    const last = points.at(-1)!.stats.breakers.find((b) => b.name === name);
    label.textContent = `${name}: ${last?.state ?? '—'}${last ? ` (opened ${last.openedCount}×, refused ${last.rejectedCount})` : ''}`;
    const strip = document.createElement('span');
    strip.className = 'strip';
    for (const p of points) {
      const state = p.stats.breakers.find((b) => b.name === name)?.state;
      const cell = document.createElement('span');
      cell.className = 'cell';
      cell.style.background = state ? (BREAKER_COLOURS[state] ?? '#94a3b8') : '#e2e8f0';
      cell.title = `${new Date(p.t * 1000).toLocaleTimeString()}: ${state ?? 'not reported'}`;
      strip.append(cell);
    }
    row.append(label, strip);
    return row;
  });
  list.replaceChildren(...rows);
  box.dataset.points = String(names.length === 0 ? 0 : points.length);
}

function render(): void {
  const latest = points.at(-1)!.stats;
  const keys = [...new Set(points.flatMap((p) => p.stats.routes.filter(shown).map(routeKey)))].sort();
  const series = new Map(keys.map((k) => [k, routeSeries(k)]));
  const perRoute = (pick: (s: ReturnType<typeof routeSeries>) => Value[]) =>
    keys.map((k, i) => ({ label: k, stroke: colour(i), values: pick(series.get(k)!) }));

  draw({ id: 'rate', unit: '/s', series: perRoute((s) => s.rate) });
  draw({
    id: 'latency',
    unit: 'ms',
    series: keys.flatMap((k, i) => [
      { label: `${k} p50`, stroke: colour(i), values: series.get(k)!.p50 },
      { label: `${k} p99`, stroke: colour(i), dash: [6, 4], values: series.get(k)!.p99 },
    ]),
  });
  draw({ id: 'db', unit: 'ms', series: perRoute((s) => s.db) });
  draw({ id: 'acquire', unit: 'ms', series: perRoute((s) => s.acquire) });
  const pool = (read: (p: NonNullable<StatsSnapshot['pool']>) => number) => points.map((p) => (p.stats.pool ? read(p.stats.pool) : null));
  draw({
    id: 'pool',
    unit: '',
    series: [
      { label: 'total', stroke: colour(0), values: pool((p) => p.total) },
      { label: 'active', stroke: colour(1), values: pool((p) => p.active) },
      { label: 'idle', stroke: colour(2), values: pool((p) => p.idle) },
      { label: 'waiting', stroke: colour(3), values: pool((p) => p.waiting) },
      { label: 'max', stroke: '#94a3b8', dash: [4, 4], values: pool((p) => p.max) },
    ],
  });
  const shed = (kind: keyof NonNullable<NonNullable<StatsSnapshot['pool']>['admission']>['shed']) =>
    counterRate((s) => s.pool?.admission?.shed[kind]);
  draw({
    id: 'retries',
    unit: '/s',
    series: [
      // On Node the pool counts every attempt made again; at the edge (no pool) the routes' own counts.
      {
        label: 'retries',
        stroke: colour(0),
        values: counterRate((s) => s.pool?.retryCount ?? s.routes.reduce((a, r) => a + r.retryCount, 0)),
      },
      { label: 'retries refused', stroke: colour(4), values: counterRate((s) => s.pool?.retryDeniedCount) },
      { label: 'shed: wait', stroke: colour(1), values: shed('wait') },
      { label: 'shed: deadline', stroke: colour(3), values: shed('deadline') },
      { label: 'shed: overload', stroke: colour(6), values: shed('overload') },
      { label: 'shed: queue full', stroke: colour(8), values: shed('queue_full') },
    ],
  });
  drawClients(latest);
  drawBreakers();
  $('status').textContent =
    `${latest.scope} · up ${latest.uptimeSeconds} s · ${keys.length} routes · polled ${new Date().toLocaleTimeString()} every ${intervalMs / 1000} s`;
}

function askForToken(message: string): void {
  const form = $('token') as HTMLFormElement;
  form.hidden = false;
  $('token-message').textContent = message;
}

/** One poll; false when it needs OPS_TOKEN first (no more polls until the form is sent). */
async function poll(): Promise<boolean> {
  const token = sessionStorage.getItem(TOKEN_KEY);
  try {
    const res = await fetch('stats', { cache: 'no-store', headers: token ? { authorization: `Bearer ${token}` } : {} });
    if (res.status === 401) {
      const body = (await res.json().catch(() => undefined)) as { error?: { message?: string } } | undefined;
      askForToken(
        token ? 'That token was refused; enter OPS_TOKEN again.' : (body?.error?.message ?? 'Enter OPS_TOKEN to read the figures.'),
      );
      $('status').textContent = 'waiting for OPS_TOKEN';
      return false;
    }
    if (!res.ok) {
      $('status').textContent = `stats answered ${res.status}; trying again`;
      return true;
    }
    ($('token') as HTMLFormElement).hidden = true;
    points.push({ t: Date.now() / 1000, stats: (await res.json()) as StatsSnapshot });
    while (points.length > 2 && points.at(-1)!.t - points[0]!.t > windowSeconds) points.shift();
    polls++;
    render();
    document.body.dataset.polls = String(polls);
  } catch (err) {
    $('status').textContent = `stats unreachable (${err instanceof Error ? err.message : String(err)}); trying again`;
  }
  return true;
}

let timer: ReturnType<typeof setTimeout> | undefined;
async function loop(): Promise<void> {
  clearTimeout(timer);
  if (await poll()) timer = setTimeout(() => void loop(), intervalMs);
}

$('token').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = ($('token') as HTMLFormElement).elements.namedItem('token') as HTMLInputElement;
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = '';
  void loop();
});
$('forget').addEventListener('click', () => sessionStorage.removeItem(TOKEN_KEY));
addEventListener('resize', () => points.length > 0 && render());

void loop();
