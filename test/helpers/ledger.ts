/**
 * A write ledger for fault scenarios. Every write is POST /api/workouts with an Idempotency-Key
 * and a known effect (a workout whose `kind` is the key, with SETS sets), and every answer is
 * classified as the client would have to classify it:
 *
 *   acknowledged  2xx: must exist exactly once, with all its sets
 *   failed        definitely not applied: any 4xx; a 503 whose code is raised before the database
 *                 is reached (pool_exhausted, overloaded, circuit_open, shutting_down); a
 *                 connection the gateway refused (ECONNREFUSED). Must have no rows.
 *   ambiguous     anything else — 504 timeout, socket errors, and 503 database_unavailable, which
 *                 the gateway answers both for a connect that failed (nothing sent) and for a
 *                 connection lost mid-transaction, even during COMMIT (src/errors.ts maps both the
 *                 same way), so the client cannot tell. Re-sent with the same key until it is
 *                 answered; must end up applied exactly once.
 *
 * `verify()` then checks the database: the three rules above, no partial transaction (every
 * workout of the ledger has all its sets), and no session of the gateway left `idle in
 * transaction`. `sampleConnections()` watches pg_stat_activity during a scenario for the
 * POOL_MAX bound.
 */
import { randomBytes } from 'node:crypto';

/** How the gateway stores an Idempotency-Key sent to `route`: scoped to that route (src/app.ts). */
export const storedKey = (key: string, route = 'POST /api/workouts') => `${route} ${key}`;
import type { TestDatabase } from './db.js';

/** 503 codes raised before any statement is sent (src/resilience/gate.ts, breaker.ts, lifecycle/drain.ts). */
export const DEFINITE_503 = new Set(['pool_exhausted', 'overloaded', 'circuit_open', 'shutting_down']);
export const SETS = 2;
const STARTED_AT = '2026-11-27T07:00:00.000Z';

export type Outcome = 'acknowledged' | 'failed' | 'ambiguous';

export interface LedgerEntry {
  key: string;
  /** HTTP status, or 0 for a network error / client-side abort. */
  status: number;
  /** The error code of the body, or the network error's code ('ECONNREFUSED', 'UND_ERR_SOCKET', 'client_abort'…). */
  code?: string;
  outcome: Outcome;
  /** performance.now() when it was sent. */
  startedAt: number;
  durationMs: number;
  retryAfter: string | null;
  /** Workout id of an acknowledged write. */
  id?: string;
  /** For ambiguous entries, once re-sent: the final answer. */
  resolved?: { status: number; replayed: boolean; attempts: number; id?: string };
}

export interface LedgerCounts {
  sent: number;
  acknowledged: number;
  failed: number;
  ambiguous: number;
  /** Ambiguous writes whose re-send came back as a stored replay (the first one had applied). */
  replayed: number;
  /** Ambiguous writes whose re-send applied them (the first one had not). */
  appliedOnResend: number;
  byAnswer: Record<string, number>;
  maxDurationMs: number;
}

export interface LedgerOptions {
  /** Where to send; a function when the gateway changes (a restarted child process). */
  baseUrl: string | (() => string);
  userId: string;
  /** Client-side bound on each request; an abort is recorded as ambiguous `client_abort`. */
  requestTimeoutMs: number;
  /** Key prefix (≤ 30 chars); unique per scenario. */
  prefix?: string;
  /** Extra headers for every write (e.g. a forward signature is not supported here). */
  headers?: Record<string, string>;
}

export interface LedgerVerification {
  problems: string[];
  workouts: number;
}

function networkCode(err: unknown): string {
  const e = err as { name?: string; code?: string; cause?: { code?: string; name?: string; cause?: { code?: string } } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return 'client_abort';
  return e?.cause?.code ?? e?.cause?.cause?.code ?? e?.code ?? e?.cause?.name ?? 'network_error';
}

export function classify(status: number, code: string | undefined): Outcome {
  if (status >= 200 && status < 300) return 'acknowledged';
  if (status === 0) return code === 'ECONNREFUSED' ? 'failed' : 'ambiguous';
  if (status >= 400 && status < 500) return 'failed';
  if (status === 503 && code !== undefined && DEFINITE_503.has(code)) return 'failed';
  return 'ambiguous';
}

export class Ledger {
  readonly entries: LedgerEntry[] = [];
  readonly prefix: string;
  #n = 0;

  constructor(readonly options: LedgerOptions) {
    this.prefix = options.prefix ?? `l${randomBytes(4).toString('hex')}`;
  }

  #url(): string {
    const b = this.options.baseUrl;
    return typeof b === 'function' ? b() : b;
  }

  body(key: string): string {
    return JSON.stringify({
      userId: this.options.userId,
      kind: key,
      startedAt: STARTED_AT,
      sets: Array.from({ length: SETS }, (_, i) => ({ exercise: `ex-${i}`, reps: i + 1, weightKg: 10 * (i + 1) })),
    });
  }

  nextKey(): string {
    return `${this.prefix}-${this.#n++}`;
  }

  /** One POST with `key`; never throws. */
  async send(
    key: string,
    baseUrl = this.#url(),
  ): Promise<{ status: number; code?: string; durationMs: number; retryAfter: string | null; replayed: boolean; id?: string }> {
    const started = performance.now();
    try {
      const res = await fetch(`${baseUrl}/api/workouts`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': key, ...this.options.headers },
        body: this.body(key),
        signal: AbortSignal.timeout(this.options.requestTimeoutMs),
      });
      const text = await res.text();
      let parsed: { id?: string; error?: { code?: string } } | undefined;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      return {
        status: res.status,
        code: parsed?.error?.code,
        durationMs: performance.now() - started,
        retryAfter: res.headers.get('retry-after'),
        replayed: res.headers.get('idempotent-replayed') === 'true',
        id: parsed?.id,
      };
    } catch (err) {
      return { status: 0, code: networkCode(err), durationMs: performance.now() - started, retryAfter: null, replayed: false };
    }
  }

  /** Sends one new write and records it. */
  async write(key = this.nextKey()): Promise<LedgerEntry> {
    const startedAt = performance.now();
    const r = await this.send(key);
    const entry: LedgerEntry = {
      key,
      status: r.status,
      code: r.code,
      outcome: classify(r.status, r.code),
      startedAt,
      durationMs: r.durationMs,
      retryAfter: r.retryAfter,
      id: r.id,
    };
    this.entries.push(entry);
    return entry;
  }

  /**
   * Writes with `concurrency` workers until `count` writes were sent or `until()` says stop.
   * `pauseMs` between a worker's writes keeps the load steady rather than a spike.
   */
  async load({
    concurrency,
    count = Infinity,
    until,
    pauseMs = 0,
  }: {
    concurrency: number;
    count?: number;
    until?: () => boolean;
    pauseMs?: number;
  }): Promise<void> {
    let started = 0;
    const worker = async () => {
      while (started < count && !(until?.() ?? false)) {
        started++;
        await this.write();
        if (pauseMs) await new Promise((r) => setTimeout(r, pauseMs));
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  }

  /**
   * Re-sends every ambiguous write with its key until it gets a 2xx (409 in-progress, 503 and
   * 504 and network errors are retried with a short pause); gives up after `timeoutMs`.
   */
  async resolveAmbiguous({ baseUrl, timeoutMs = 15_000 }: { baseUrl?: string; timeoutMs?: number } = {}): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const e of this.entries.filter((x) => x.outcome === 'ambiguous' && !x.resolved)) {
      for (let attempt = 1; ; attempt++) {
        const r = await this.send(e.key, baseUrl ?? this.#url());
        const final =
          (r.status >= 200 && r.status < 300) ||
          r.status === 422 ||
          (r.status >= 400 && r.status < 500 && r.code !== 'idempotency_in_progress');
        if (final || Date.now() > deadline) {
          e.resolved = { status: r.status, replayed: r.replayed, attempts: attempt, id: r.id };
          break;
        }
        await new Promise((res) => setTimeout(res, Math.min(500, 50 * attempt)));
      }
    }
  }

  counts(): LedgerCounts {
    const byAnswer: Record<string, number> = {};
    for (const e of this.entries) {
      const k = e.status === 0 ? `net:${e.code}` : `${e.status}${e.code ? ` ${e.code}` : ''}`;
      byAnswer[k] = (byAnswer[k] ?? 0) + 1;
    }
    const amb = this.entries.filter((e) => e.outcome === 'ambiguous');
    return {
      sent: this.entries.length,
      acknowledged: this.entries.filter((e) => e.outcome === 'acknowledged').length,
      failed: this.entries.filter((e) => e.outcome === 'failed').length,
      ambiguous: amb.length,
      replayed: amb.filter((e) => e.resolved?.replayed).length,
      appliedOnResend: amb.filter((e) => e.resolved && e.resolved.status >= 200 && e.resolved.status < 300 && !e.resolved.replayed).length,
      byAnswer,
      maxDurationMs: Math.round(Math.max(0, ...this.entries.map((e) => e.durationMs))),
    };
  }

  /** Prints one line with the scenario's counts (quoted in reports) and returns them. */
  report(scenario: string, extra: Record<string, unknown> = {}): LedgerCounts {
    const c = this.counts();
    console.log(
      `[ledger] ${scenario}: sent=${c.sent} acknowledged=${c.acknowledged} failed=${c.failed} ambiguous=${c.ambiguous} ` +
        `(replayed=${c.replayed}, applied-on-resend=${c.appliedOnResend}) maxMs=${c.maxDurationMs} answers=${JSON.stringify(c.byAnswer)}` +
        (Object.keys(extra).length ? ` ${JSON.stringify(extra)}` : ''),
    );
    return c;
  }

  /** Checks the database against the ledger; returns the problems found (empty when clean). */
  async verify(db: TestDatabase, applicationName?: string): Promise<LedgerVerification> {
    const problems: string[] = [];
    const { rows } = await db.admin(
      `SELECT w.id, w.kind, (SELECT count(*)::int FROM workout_sets s WHERE s.workout_id = w.id) AS sets
       FROM workouts w WHERE w.kind LIKE $1`,
      [`${this.prefix}-%`],
    );
    const keys = new Set(
      (await db.admin('SELECT key FROM poolgate_idempotency_keys WHERE key LIKE $1', [storedKey(`${this.prefix}-%`)])).rows.map((r) =>
        (r.key as string).slice(storedKey('').length),
      ),
    );
    const byKind = new Map<string, { id: string; sets: number }[]>();
    for (const r of rows) byKind.set(r.kind, [...(byKind.get(r.kind) ?? []), { id: r.id, sets: r.sets }]);

    const known = new Set(this.entries.map((e) => e.key));
    for (const [kind, ws] of byKind) {
      if (!known.has(kind)) problems.push(`${kind}: in the database but never sent`);
      for (const w of ws) if (w.sets !== SETS) problems.push(`${kind}: partial transaction (workout ${w.id} has ${w.sets}/${SETS} sets)`);
    }
    for (const e of this.entries) {
      const found = byKind.get(e.key) ?? [];
      const answer = e.status === 0 ? `network ${e.code}` : `${e.status} ${e.code ?? ''}`.trim();
      if (e.outcome === 'acknowledged') {
        if (found.length !== 1) problems.push(`${e.key}: acknowledged (${answer}) but ${found.length} rows`);
        else if (e.id && found[0]!.id !== e.id) problems.push(`${e.key}: acknowledged id ${e.id} but the row is ${found[0]!.id}`);
        if (!keys.has(e.key)) problems.push(`${e.key}: acknowledged but no idempotency record`);
      } else if (e.outcome === 'failed') {
        if (found.length !== 0) problems.push(`${e.key}: definitely failed (${answer}) but ${found.length} rows`);
        if (keys.has(e.key)) problems.push(`${e.key}: definitely failed (${answer}) but an idempotency record exists`);
      } else {
        if (!e.resolved) problems.push(`${e.key}: ambiguous (${answer}) and never re-sent`);
        else if (e.resolved.status < 200 || e.resolved.status >= 300)
          problems.push(`${e.key}: ambiguous (${answer}), re-send still answered ${e.resolved.status}`);
        if (found.length !== 1) problems.push(`${e.key}: ambiguous (${answer}), after re-send ${found.length} rows`);
        else if (e.resolved?.id && found[0]!.id !== e.resolved.id)
          problems.push(`${e.key}: re-send answered id ${e.resolved.id} but the row is ${found[0]!.id}`);
      }
    }
    if (applicationName) {
      const idle = await db.admin(
        `SELECT pid, state FROM pg_stat_activity WHERE split_part(application_name, ' [pg:', 1) = $1 AND state LIKE 'idle in transaction%'`,
        [applicationName],
      );
      for (const r of idle.rows) problems.push(`backend ${r.pid} of the gateway is "${r.state}"`);
    }
    return { problems, workouts: rows.length };
  }
}

export interface ConnectionSampler {
  /** Pids to leave out from now on (backends the test terminated: they may linger a moment while exiting). */
  exclude(pids: number[]): void;
  stop(): Promise<{ max: number; samples: number }>;
}

/**
 * Samples pg_stat_activity every `intervalMs` for backends with `applicationName` (exact match, less
 * the ` [pg:<instance id>]` POOL_BUDGET adds: the gateway's out-of-band cancel connections carry a
 * `-cancel` suffix and are not pool members).
 */
export function sampleConnections(db: TestDatabase, applicationName: string, intervalMs = 10, onSample?: () => void): ConnectionSampler {
  let running = true;
  let max = 0;
  let samples = 0;
  const excluded = new Set<number>();
  const loop = (async () => {
    while (running) {
      try {
        const { rows } = await db.admin("SELECT pid FROM pg_stat_activity WHERE split_part(application_name, ' [pg:', 1) = $1", [
          applicationName,
        ]);
        max = Math.max(max, rows.filter((r) => !excluded.has(r.pid)).length);
        samples++;
        onSample?.();
      } catch {
        // The admin pool is shared with the scenario; a failed sample is just skipped.
      }
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  return {
    exclude(pids) {
      for (const p of pids) excluded.add(p);
    },
    async stop() {
      running = false;
      await loop;
      return { max, samples };
    },
  };
}
