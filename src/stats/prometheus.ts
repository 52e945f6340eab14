/**
 * Renders a stats snapshot in the Prometheus text exposition format (version 0.0.4). Latencies are
 * histograms (cumulative buckets since start, histogram.ts), so several instances aggregate; pass a
 * snapshot taken with `{ histograms: true }`, or the latency families come out empty.
 */
import type { AdmissionStats, ReplicaFigures } from '../db/types.js';
import { BUCKET_LABELS, type HistogramSnapshot } from './histogram.js';
import type { RouteHistograms, StatsSnapshot } from './registry.js';

const esc = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
const labels = (l: Record<string, string>) =>
  `{${Object.entries(l)
    .map(([k, v]) => `${k}="${esc(v)}"`)
    .join(',')}}`;

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export function renderPrometheus(snap: StatsSnapshot): string {
  const out: string[] = [];
  const family = (name: string, type: string, help: string, rows: [Record<string, string>, number][]) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [l, v] of rows) out.push(`${name}${Object.keys(l).length ? labels(l) : ''} ${Number.isFinite(v) ? v : 0}`);
  };
  const scope = { scope: snap.scope };
  type Row = [Record<string, string>, number];
  const per = (f: (r: StatsSnapshot['routes'][number]) => number) =>
    snap.routes.map((r): Row => [{ ...scope, method: r.method, route: r.route }, f(r)]);

  family(
    'poolgate_http_requests_total',
    'counter',
    'Requests served, by route pattern, status class and the database client that served them.',
    snap.routes.flatMap((r) =>
      Object.entries(r.statusClasses).map(
        ([cls, n]) => [{ ...scope, method: r.method, route: r.route, status_class: cls }, n] as [Record<string, string>, number],
      ),
    ),
  );
  family(
    'poolgate_http_requests_by_client_total',
    'counter',
    'Requests by the database client that served them (pg-pool, pg-pipeline, neon-http, neon-ws, forwarded, none).',
    snap.routes.flatMap((r) =>
      Object.entries(r.clients).map(
        ([client, n]) => [{ ...scope, method: r.method, route: r.route, client }, n ?? 0] as [Record<string, string>, number],
      ),
    ),
  );
  const histogram = (name: string, help: string, pick: (h: RouteHistograms) => HistogramSnapshot | undefined) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
    for (const r of snap.routes) {
      const h = r.histograms && pick(r.histograms);
      if (!h) continue;
      const base = { ...scope, method: r.method, route: r.route };
      BUCKET_LABELS.forEach((le, i) => out.push(`${name}_bucket${labels({ ...base, le })} ${h.cumulative[i]}`));
      out.push(`${name}_sum${labels(base)} ${h.sumSeconds}`, `${name}_count${labels(base)} ${h.count}`);
    }
  };
  histogram('poolgate_http_request_duration_seconds', 'Request latency since start, by route pattern.', (h) => h.duration);
  histogram(
    'poolgate_db_time_seconds',
    'Time a request spent in database statements, over the requests that reached the database.',
    (h) => h.dbTime,
  );
  histogram(
    'poolgate_db_acquire_wait_seconds',
    'Time a request waited for a database connection (timed-out waits included), over the requests that reached the database.',
    (h) => h.acquireWait,
  );
  family(
    'poolgate_db_queries_total',
    'counter',
    'Database statements run.',
    per((r) => r.queries.sum),
  );

  const cached = snap.routes.filter((r) => r.cache);
  if (cached.length > 0) {
    family(
      'poolgate_cache_requests_total',
      'counter',
      'Requests of cached routes by what the read cache did: hit, stale (served while loaded again), miss, invalidated (an outdated entry), bypass.',
      cached.flatMap((r) =>
        Object.entries(r.cache!)
          .filter(([k]) => k !== 'hitRate' && k !== 'hitLatencyMs')
          .map(([result, n]): Row => [{ ...scope, method: r.method, route: r.route, result }, n as number]),
      ),
    );
    histogram(
      'poolgate_cache_hit_duration_seconds',
      'Latency of the requests of each cached route that the cache answered (hit or stale), since start.',
      (h) => h.cacheHit,
    );
  }

  const p = snap.pool;
  if (p) {
    family('poolgate_pool_max_connections', 'gauge', "The pool's size now: its share of the budget less the lanes open.", [[scope, p.max]]);
    family('poolgate_pool_connections', 'gauge', 'Pool connections by state.', [
      [{ ...scope, state: 'active' }, p.active],
      [{ ...scope, state: 'idle' }, p.idle],
      [{ ...scope, state: 'total' }, p.total],
    ]);
    family('poolgate_pool_waiting', 'gauge', 'Requests waiting for a connection.', [[scope, p.waiting]]);
    family('poolgate_pool_connections_opened_total', 'counter', 'Connections opened.', [[scope, p.openedCount]]);
    family('poolgate_pool_connections_closed_total', 'counter', 'Connections closed.', [[scope, p.closedCount]]);
    family('poolgate_pool_acquisitions_total', 'counter', 'Connections handed to requests.', [[scope, p.acquisitionCount]]);
    family('poolgate_pool_reuse_ratio', 'gauge', 'Share of acquisitions that did not open a connection.', [[scope, p.reuseRate]]);
    family('poolgate_pool_errors_total', 'counter', 'Connection errors seen by the pool.', [[scope, p.errorCount]]);
    family('poolgate_pool_acquire_timeouts_total', 'counter', 'Requests that gave up waiting for a connection.', [
      [scope, p.acquireTimeoutCount],
    ]);
    family('poolgate_pool_queue_rejected_total', 'counter', 'Requests refused at once because the wait queue was full.', [
      [scope, p.queueRejectedCount],
    ]);
  }
  family(
    'poolgate_retries_total',
    'counter',
    'Attempts repeated under the retry rules, by route.',
    per((r) => r.retryCount),
  );
  family(
    'poolgate_idempotent_replays_total',
    'counter',
    'Responses served from a stored Idempotency-Key record.',
    per((r) => r.replayCount),
  );
  if (p) {
    family('poolgate_pool_retries_total', 'counter', 'Retries made by the pool layer.', [[scope, p.retryCount]]);
    family('poolgate_pool_retries_denied_total', 'counter', 'Retries the retry budget refused.', [[scope, p.retryDeniedCount]]);
    family('poolgate_pool_statements_cancelled_total', 'counter', 'Statements cancelled on the server at their deadline.', [
      [scope, p.cancelledCount],
    ]);
  }
  if (p?.refused) {
    const refused = p.refused;
    family('poolgate_pool_refused', 'gauge', 'What the database, or a pooler in front of it, refused (1), so the pool does without it.', [
      [{ ...scope, feature: 'named_statements' }, refused.namedStatements === undefined ? 0 : 1],
      [{ ...scope, feature: 'startup_statement_timeout' }, refused.statementTimeoutAtStartup === undefined ? 0 : 1],
    ]);
  }
  const admission = [
    ['pool', p?.admission],
    ['lanes', p?.pipeline?.admission],
  ].filter((a): a is [string, AdmissionStats] => a[1] !== undefined);
  if (admission.length > 0) {
    family(
      'poolgate_admission_estimate_seconds',
      'gauge',
      'Predicted wait of a request arriving now, by admission path.',
      admission.map(([path, a]) => [{ ...scope, path }, a.estimateMs / 1000]),
    );
    family(
      'poolgate_admission_shed_total',
      'counter',
      'Requests refused at once (503 overloaded), by admission path and reason.',
      admission.flatMap(([path, a]) => Object.entries(a.shed).map(([reason, n]): Row => [{ ...scope, path, reason }, n])),
    );
  }
  const budget = p?.budget;
  if (budget) {
    const one = (name: string, type: string, help: string, value: number) => family(name, type, help, [[scope, value]]);
    one('poolgate_budget_share_connections', 'gauge', 'Connections this instance may hold, lanes and pool (POOL_BUDGET).', budget.share);
    one(
      'poolgate_budget_limit_connections',
      'gauge',
      'The limit every instance shares (max_connections less superuser_reserved_connections, or POOL_BUDGET).',
      budget.limit,
    );
    one('poolgate_budget_reserve_connections', 'gauge', 'Connections left for operators and migrations (POOL_RESERVE).', budget.reserve);
    one('poolgate_budget_instances', 'gauge', 'Live poolgate instances on the server, this one included.', budget.instances);
    one('poolgate_budget_other_backends', 'gauge', "Backends on the server that are no poolgate instance's.", budget.others);
    one('poolgate_budget_samples_total', 'counter', 'Looks at pg_stat_activity.', budget.sampledCount);
    one('poolgate_budget_sample_errors_total', 'counter', 'Looks at pg_stat_activity that failed.', budget.sampleErrorCount);
    one('poolgate_budget_refused_total', 'counter', 'Connects the server refused with 53300 (pool and lanes).', budget.refusedCount);
  }
  const lanes = p?.pipeline;
  if (lanes) {
    family('poolgate_pipeline_lanes', 'gauge', 'Pipelined read lanes open.', [[scope, lanes.lanes]]);
    family('poolgate_pipeline_in_flight', 'gauge', 'Statements in flight on the pipelined lanes.', [[scope, lanes.inFlight]]);
    family('poolgate_pipeline_waiting', 'gauge', 'Reads waiting for room on the pipelined lanes.', [[scope, lanes.waiting ?? 0]]);
    family('poolgate_pipeline_cancelled_total', 'counter', 'Lanes retired after cancelling a read cut short.', [
      [scope, lanes.cancelledCount],
    ]);
    family(
      'poolgate_pipeline_overflow_total',
      'counter',
      'Reads sent to the pool because every lane was stalled behind a slow statement or its queue, in expected time, was full.',
      [[scope, lanes.overflowCount]],
    );
    family(
      'poolgate_pipeline_slow_to_pool_total',
      'counter',
      'Reads sent to the pool because their statement is slow (its mean time above PG_PIPELINE_SLOW_MS or 4 typical reads).',
      [[scope, lanes.slowToPoolCount ?? 0]],
    );
    family(
      'poolgate_pipeline_waited_behind_slow_total',
      'counter',
      "Statements that waited on a lane behind another request's slow statement.",
      [[scope, lanes.waitedBehindSlowCount ?? 0]],
    );
  }
  family(
    'poolgate_breaker_state',
    'gauge',
    'Circuit breaker state per upstream (1 for the current state).',
    snap.breakers.flatMap((b) =>
      (['closed', 'open', 'half-open'] as const).map(
        (st) => [{ ...scope, upstream: b.name, state: st }, b.state === st ? 1 : 0] as [Record<string, string>, number],
      ),
    ),
  );
  family(
    'poolgate_breaker_opened_total',
    'counter',
    'Times a breaker opened.',
    snap.breakers.map((b) => [{ ...scope, upstream: b.name }, b.openedCount]),
  );
  family(
    'poolgate_breaker_rejected_total',
    'counter',
    'Calls refused at once by an open breaker.',
    snap.breakers.map((b) => [{ ...scope, upstream: b.name }, b.rejectedCount]),
  );
  family('poolgate_uptime_seconds', 'gauge', 'Seconds since this process or isolate started.', [[scope, snap.uptimeSeconds]]);
  replicaFamilies(snap, family);
  return out.join('\n') + '\n';
}

type Family = (name: string, type: string, help: string, rows: [Record<string, string>, number][]) => void;

/** The read replicas (DATABASE_REPLICA_URLS): where reads went, each replica's state, the tokens. */
function replicaFamilies(snap: StatsSnapshot, family: Family): void {
  const set = snap.replicas;
  if (!set) return;
  const scope = { scope: snap.scope };
  family(
    'poolgate_http_requests_by_server_total',
    'counter',
    'Requests by the server their reads went to (primary, replica-1 …).',
    snap.routes.flatMap((r) =>
      Object.entries(r.servers ?? {}).map(([server, n]): [Record<string, string>, number] => [
        { ...scope, method: r.method, route: r.route, server },
        n,
      ]),
    ),
  );
  const each = (f: (r: ReplicaFigures) => number) =>
    set.replicas.map((r): [Record<string, string>, number] => [{ ...scope, replica: r.name }, f(r)]);
  family(
    'poolgate_replica_up',
    'gauge',
    'Whether the replica answered its last look (1) or is out (0).',
    each((r) => (r.up ? 1 : 0)),
  );
  family(
    'poolgate_replica_lag_seconds',
    'gauge',
    'How far behind the replica was at its last look.',
    each((r) => r.lagMs / 1000),
  );
  family('poolgate_replica_max_lag_seconds', 'gauge', 'A replica further behind than this serves no read (REPLICA_MAX_LAG_MS).', [
    [scope, set.maxLagMs / 1000],
  ]);
  family(
    'poolgate_replica_in_flight',
    'gauge',
    'Reads running on the replica now.',
    each((r) => r.inFlight),
  );
  family(
    'poolgate_replica_reads_total',
    'counter',
    'Reads the replica served.',
    each((r) => r.servedCount),
  );
  family(
    'poolgate_replica_fell_back_total',
    'counter',
    'Reads that failed on the replica for its sake and ran on the primary.',
    each((r) => r.fellBackCount),
  );
  family(
    'poolgate_replica_check_errors_total',
    'counter',
    'Looks at the replica that failed.',
    each((r) => r.checkErrorCount),
  );
  family('poolgate_replica_reads_on_primary_total', 'counter', 'Reads the primary served because no replica fit, by why.', [
    [{ ...scope, reason: 'no_replica' }, set.onPrimary.noReplica],
    [{ ...scope, reason: 'token' }, set.onPrimary.token],
  ]);
  family('poolgate_replica_tokens_honoured_total', 'counter', 'Reads with a consistency token served by a replica past it.', [
    [scope, set.tokensHonoured],
  ]);
}
