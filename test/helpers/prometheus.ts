/**
 * Reading what /metrics says: a strict parser of the Prometheus text format (0.0.4), the checks a
 * histogram must pass (buckets cumulative, `+Inf` equal to `_count`), and Prometheus' own
 * `promtool` (Debian's `prometheus` package; .ci/run installs it) for `check metrics`, `check
 * rules` and `test rules`. Without promtool, its tests skip and say so in their names.
 */
import { spawnSync } from 'node:child_process';
import { expect } from 'vitest';
import type { PoolStats, ReplicaSetFigures } from '../../src/db/types.js';
import { StatsRegistry, type RequestSample } from '../../src/stats/registry.js';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A strict reader of the Prometheus text format: throws on any line it cannot read. */
export function parsePrometheus(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const lines = text.split('\n');
  expect(lines.at(-1)).toBe(''); // ends with a newline
  for (const line of lines.slice(0, -1)) {
    if (line.startsWith('# HELP ')) {
      expect(line).toMatch(/^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* \S/);
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|summary|histogram|untyped)$/.exec(line);
      if (!m) throw new Error(`bad TYPE line: ${line}`);
      types.set(m[1]!, m[2]!);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?(?:\d+(?:\.\d+)?(?:e[+-]?\d+)?|NaN|\+Inf|-Inf))$/.exec(line);
    if (!m) throw new Error(`not "name{labels} value": ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    if (m[3]) {
      const rest = m[3].replace(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/g, (_all, k: string, v: string) => {
        labels[k] = v.replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
        return '';
      });
      if (rest !== '') throw new Error(`bad labels in ${JSON.stringify(line)}`);
    }
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return { samples, types };
}

export interface HistogramSeries {
  labels: Record<string, string>;
  /** [le, cumulative count], in the order rendered. */
  buckets: [string, number][];
  sum: number;
  count: number;
}

/**
 * Every series of histogram family `name`, and what is wrong with any of them: `le` not rising, a
 * count falling as `le` rises, no `+Inf` bucket last, `+Inf` not equal to `_count`, no `_sum`.
 */
export function histogramSeries(samples: Sample[], name: string): { series: HistogramSeries[]; problems: string[] } {
  const key = (l: Record<string, string>) =>
    JSON.stringify(
      Object.entries(l)
        .filter(([k]) => k !== 'le')
        .sort(),
    );
  const byKey = new Map<string, HistogramSeries>();
  const of = (l: Record<string, string>) => {
    const k = key(l);
    let s = byKey.get(k);
    if (!s) {
      const { le: _le, ...rest } = l;
      byKey.set(k, (s = { labels: rest, buckets: [], sum: NaN, count: NaN }));
    }
    return s;
  };
  for (const s of samples) {
    if (s.name === `${name}_bucket`) of(s.labels).buckets.push([s.labels.le!, s.value]);
    else if (s.name === `${name}_sum`) of(s.labels).sum = s.value;
    else if (s.name === `${name}_count`) of(s.labels).count = s.value;
  }
  const problems: string[] = [];
  for (const [k, s] of byKey) {
    const bounds = s.buckets.map(([le]) => (le === '+Inf' ? Infinity : Number(le)));
    if (s.buckets.at(-1)?.[0] !== '+Inf') problems.push(`${name}${k}: the last bucket is not +Inf`);
    for (let i = 1; i < s.buckets.length; i++) {
      if (!(bounds[i]! > bounds[i - 1]!)) problems.push(`${name}${k}: le ${s.buckets[i]![0]} after ${s.buckets[i - 1]![0]}`);
      if (s.buckets[i]![1] < s.buckets[i - 1]![1])
        problems.push(
          `${name}${k}: le=${s.buckets[i]![0]} counts ${s.buckets[i]![1]}, below le=${s.buckets[i - 1]![0]}'s ${s.buckets[i - 1]![1]}`,
        );
    }
    if (s.buckets.at(-1)?.[1] !== s.count) problems.push(`${name}${k}: +Inf counts ${s.buckets.at(-1)?.[1]}, _count ${s.count}`);
    if (!Number.isFinite(s.sum) || s.sum < 0) problems.push(`${name}${k}: _sum ${s.sum}`);
  }
  return { series: [...byKey.values()], problems };
}

function findPromtool(): string | undefined {
  for (const bin of ['promtool', '/usr/bin/promtool', '/usr/local/bin/promtool']) {
    if (spawnSync(bin, ['--version'], { stdio: 'ignore' }).status === 0) return bin;
  }
  return undefined;
}

const PROMTOOL = findPromtool();

/** Why promtool cannot run here, or undefined when it can. */
export const promtoolMissing: string | undefined = PROMTOOL
  ? undefined
  : 'promtool is not installed (apt-get install -y prometheus; .ci/run installs it)';

/** The name of a test that needs promtool: as given when it is here, else with the reason. */
export const onPromtool = (name: string): string => (promtoolMissing ? `${name} — skipped: ${promtoolMissing}` : name);

/** Runs promtool with `args` (and `input` on stdin): its exit status and everything it printed. */
export function promtool(args: string[], input?: string): { status: number | null; output: string } {
  if (!PROMTOOL) throw new Error(promtoolMissing);
  const r = spawnSync(PROMTOOL, args, { input, encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw r.error;
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

const admission = { estimateMs: 12, shed: { wait: 1, deadline: 0, overload: 2, queue_full: 0 } };
const pool: PoolStats = {
  max: 8,
  total: 6,
  active: 5,
  idle: 1,
  waiting: 2,
  openedCount: 9,
  closedCount: 3,
  acquisitionCount: 120,
  reuseRate: 0.925,
  errorCount: 1,
  acquireTimeoutCount: 1,
  queueRejectedCount: 0,
  admission,
  retryCount: 2,
  retryDeniedCount: 0,
  cancelledCount: 1,
  pipeline: { lanes: 2, inFlight: 3, openedCount: 2, closedCount: 0, cancelledCount: 0, overflowCount: 4, waiting: 0, admission },
  refused: { namedStatements: '26000' },
  budget: { share: 10, limit: 97, reserve: 3, instances: 2, others: 4, sampledCount: 12, sampleErrorCount: 0, refusedCount: 0 },
};
const replicas: ReplicaSetFigures = {
  maxLagMs: 5000,
  onPrimary: { noReplica: 1, token: 2 },
  tokensHonoured: 3,
  replicas: [
    {
      name: 'replica-1',
      up: true,
      standby: true,
      lagMs: 120,
      inFlight: 1,
      servedCount: 40,
      fellBackCount: 0,
      checkCount: 9,
      checkErrorCount: 0,
    },
  ],
};

/**
 * A registry whose snapshot has every optional part (pool with admission, lanes, budget and
 * refusals; replicas; an open breaker; a cached route), so /metrics text rendered from it holds every
 * family poolgate can render: 8 requests of GET /api/users/:id (0.2 ms … 30 s, one a 5 s acquire
 * that timed out) and 5 of GET /api/exercises (hit, hit, stale, miss, bypass).
 */
export function everyFamilyRegistry(): StatsRegistry {
  const reg = new StatsRegistry({
    scope: 'node',
    pool: () => pool,
    replicas: () => replicas,
    breakers: () => [{ name: 'postgres', state: 'open', openedCount: 1, rejectedCount: 7 }],
  });
  const base: RequestSample = {
    method: 'GET',
    route: '/api/users/:id',
    status: 200,
    totalMs: 3,
    dbMs: 1,
    acquireMs: 0.1,
    queries: 1,
    client: 'pg-pool',
  };
  for (const totalMs of [0.2, 0.7, 3, 30, 300, 3000, 30_000]) reg.record({ ...base, totalMs, dbMs: totalMs / 2, server: 'replica-1' });
  reg.record({ ...base, status: 503, queries: 0, dbMs: 0, acquireMs: 5000, totalMs: 5001 });
  for (const cache of ['hit', 'hit', 'stale', 'miss', 'bypass'] as const)
    reg.record({ ...base, route: '/api/exercises', cache, totalMs: cache === 'miss' ? 20 : 0.3, queries: cache === 'miss' ? 1 : 0 });
  return reg;
}
