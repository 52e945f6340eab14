/**
 * The read cache under concurrency, on Node over real HTTP: writers racing many cached readers of
 * the same keys on two gateway instances sharing one database, and a fill on a lagging streaming
 * replica. A test app's counters only grow (each write is `v = v + 1`, its answer the value it
 * committed), so any answer can be ordered against any write.
 *
 * 1. The fill race (Drizzle's: an answer read before a write, stored after it, tagged with what
 *    was current at the store), once step by step, then at scale: a read carrying a write's token is never older than that write, nor
 *    a read on the instance that answered the write; once the writers stop and the staleness bound
 *    has passed, every instance's cached answer is the database's final value (entries live 300 s,
 *    so only the generations can outdate them); hits, misses and reads stale for others (within
 *    the bound, by design) are printed.
 * 2. The fence with replicas: once the view knows a write, a fill reads at or past the view's
 *    position, so a replica that has not replayed the write does not serve it — its old data is
 *    never stored under the new generations.
 * 3. A view read while a COMMIT is becoming visible (held there by a synchronous standby that never
 *    comes): its position is past the write's, its generations without it; neither the writer's
 *    token nor its instance may take that view as one that saw the write.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import pg from 'pg';
import { defineApp, route } from '../../src/index.js';
import { json, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';
import { itemsApp } from '../helpers/items-app.js';
import { servedBy } from '../helpers/edge-replicas.js';
import { privatePostgresAvailable, privateTestDatabase, startPrivatePostgres, type PrivatePostgres } from '../helpers/private-postgres.js';
import { startReplicaSet, type ReplicaSet } from '../helpers/private-replicas.js';

const KEYS = [1, 2];
const HEADER = 'poolgate-consistency';

/** Counters that only grow; a cached read that takes a moment after its query (a window for the race). */
const counters = defineApp({
  name: 'races',
  migrations: [
    {
      id: 1,
      name: 'counters',
      sql: `CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL); INSERT INTO counters SELECT g, 0 FROM generate_series(1, ${KEYS.length}) g`,
    },
  ],
  routes: [
    route({
      method: 'GET',
      path: '/counters/:id',
      kind: 'read',
      params: z.object({ id: z.coerce.number().int() }),
      cache: { ttlSeconds: 300, tables: ['counters'] },
      handler: async ({ db, params }) => {
        const { rows } = await db.query<{ v: string }>('SELECT v FROM counters WHERE id = $1', [params.id]);
        await new Promise((r) => setTimeout(r, Math.random() * 50));
        return { status: 200, body: { v: Number(rows[0]?.v) } };
      },
    }),
    route({
      method: 'POST',
      path: '/counters/:id/bump',
      kind: 'transactional',
      params: z.object({ id: z.coerce.number().int() }),
      handler: async ({ db, params }) => {
        const { rows } = await db.transaction((tx) =>
          tx.query<{ v: string }>('UPDATE counters SET v = v + 1 WHERE id = $1 RETURNING v', [params.id]),
        );
        return { status: 200, body: { v: Number(rows[0]?.v) } };
      },
    }),
  ],
});

type Outcome = 'hit' | 'hit-stale' | 'miss' | 'invalidated' | 'bypass' | 'none';

function outcomeOf(headers: Headers): Outcome {
  const s = headers.get('cache-status') ?? '';
  if (/^poolgate; hit; ttl=-/.test(s)) return 'hit-stale';
  if (/^poolgate; hit/.test(s)) return 'hit';
  if (/fwd=miss/.test(s)) return 'miss';
  if (/fwd=stale/.test(s)) return 'invalidated';
  if (/fwd=(?:bypass|request)/.test(s)) return 'bypass';
  return 'none';
}

async function read(t: TestGateway, key: number, headers: Record<string, string> = {}) {
  const res = await json<{ v: number }>(`${t.url}/counters/${key}`, { headers, signal: AbortSignal.timeout(20_000) });
  if (res.status !== 200) throw new Error(`GET /counters/${key}: ${res.status} ${res.text}`);
  return { v: res.body.v, outcome: outcomeOf(res.headers), server: servedBy(res.headers) ?? '?' };
}

async function bump(t: TestGateway, key: number) {
  const res = await json<{ v: number }>(`${t.url}/counters/${key}/bump`, { method: 'POST', signal: AbortSignal.timeout(20_000) });
  if (res.status !== 200) throw new Error(`POST /counters/${key}/bump: ${res.status} ${res.text}`);
  const token = res.headers.get(HEADER);
  if (!token) throw new Error('a write answered without its consistency token');
  return { v: res.body.v, token };
}

const pick = <T>(xs: readonly T[]): T => xs[Math.floor(Math.random() * xs.length)]!;

/** `a, a, a, b` as `a ×3, b`: a long poll's answers, short. */
const runs = (xs: readonly unknown[]) =>
  xs
    .reduce<[unknown, number][]>((out, x) => {
      const last = out.at(-1);
      if (last && last[0] === x) last[1]++;
      else out.push([x, 1]);
      return out;
    }, [])
    .map(([x, n]) => (n > 1 ? `${String(x)} ×${n}` : String(x)))
    .join(', ');

const percentile = (sorted: number[], p: number) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! : 0;

describe('the fill race, one step at a time', () => {
  // A cached read that, when the test arms it, waits after its query until the test lets it go.
  let gate: { entered: () => void; release?: () => void } | undefined;
  const gated = itemsApp('gated', async () => {
    const g = gate;
    gate = undefined;
    if (g) await new Promise<void>((resolve) => ((g.release = resolve), g.entered()));
  });

  it('a fill that read before a write and stores after the view has the write does not pass for new: the next read loads again', async () => {
    const t = await startTestGateway({ CACHE: 'on', CACHE_MAX_STALENESS_MS: '60000' }, { app: gated });
    try {
      const armed: { entered: () => void; release?: () => void } = { entered: () => {} };
      const entered = new Promise<void>((r) => (armed.entered = r));
      gate = armed;
      const slow = json(`${t.url}/items/1`); // reads 'old', then waits
      await entered;
      const put = await json(`${t.url}/items/1`, { method: 'PUT', json: { v: 'new' } });
      expect(put.status).toBe(200);
      // A read with the write's token, of another key (a newer entry of this one would not be
      // replaced by an earlier fill): the view is read again, and has the write.
      const token = put.headers.get(HEADER)!;
      expect((await json(`${t.url}/items/2`, { headers: { [HEADER]: token } })).body.v).toBe('other');
      armed.release!();
      expect((await slow).body.v).toBe('old'); // it read before the write: right for it, and stored…
      // …under the generations it began with, not the view's now: it passes for new to no one.
      const after = await json(`${t.url}/items/1`);
      expect(after.body.v, after.headers.get('cache-status') ?? '').toBe('new');
      expect((await json(`${t.url}/items/1`, { headers: { [HEADER]: token } })).body.v).toBe('new');
    } finally {
      await t.stop();
    }
  });
});

describe('the fill race at scale: writers against cached readers on two instances', () => {
  const STALENESS_MS = 200;
  /** Each writer's writes, unless the load has run this long (a busy machine). */
  const WRITES_EACH = 25;
  const LOAD_MS = 6_000;
  const WRITERS = 4;
  const READERS = 12;
  let a: TestGateway;
  let b: TestGateway;

  beforeAll(async () => {
    const env = { CACHE: 'on', CACHE_MAX_STALENESS_MS: String(STALENESS_MS), POOL_MAX: '8' };
    a = await startTestGateway(env, { app: counters });
    b = await startTestGateway(env, { app: counters, db: a.db });
  });

  afterAll(async () => {
    await b?.stop();
    await a?.stop();
  });

  it('a read with a write’s token is never older than the write; once writes stop, every instance serves the final values', async () => {
    const instances = [a, b];
    /** When each value of each key was acknowledged to its writer (performance.now()). */
    const ackedAt = new Map<number, Map<number, { at: number; by: TestGateway }>>(KEYS.map((k) => [k, new Map()]));
    const latest = new Map<number, { v: number; token: string }>();
    const staleForWriter: string[] = [];
    const tokenless: { key: number; startedAt: number; v: number; on: TestGateway }[] = [];
    const outcomes: Record<string, number> = {};
    let writes = 0;
    let tokenReads = 0;
    let writing = true;
    for (const t of instances) for (const key of KEYS) await read(t, key); // warm: entries to outdate, code compiled
    const deadline = performance.now() + LOAD_MS;
    const loadStarted = performance.now();

    const noteRead = (outcome: Outcome, withToken: boolean) => {
      const name = `${outcome}${withToken ? ' (token)' : ''}`;
      outcomes[name] = (outcomes[name] ?? 0) + 1;
    };
    const checkToken = async (t: TestGateway, key: number, written: { v: number; token: string }, who: string) => {
      const r = await read(t, key, { [HEADER]: written.token });
      tokenReads++;
      noteRead(r.outcome, true);
      if (r.v < written.v) staleForWriter.push(`${who}: key ${key} read ${r.v} (${r.outcome}) with the token of ${written.v}`);
    };

    const writer = async (n: number) => {
      for (let i = 0; i < WRITES_EACH && performance.now() < deadline; i++) {
        const key = pick(KEYS);
        const t = instances[(n + i) % 2]!;
        const written = await bump(t, key);
        writes++;
        ackedAt.get(key)!.set(written.v, { at: performance.now(), by: t });
        if ((latest.get(key)?.v ?? -1) < written.v) latest.set(key, written);
        // The writer reads its write back at once: on either instance with its token, or without it
        // on the instance that wrote (which reads its view again before its next cached read).
        if (Math.random() < 0.5) await checkToken(pick(instances), key, written, `writer ${n}`);
        else {
          const r = await read(t, key);
          noteRead(r.outcome, false);
          if (r.v < written.v)
            staleForWriter.push(`writer ${n}: key ${key} read ${r.v} (${r.outcome}) without a token where it wrote ${written.v}`);
        }
      }
    };
    const reader = async (n: number) => {
      while (writing) {
        const key = pick(KEYS);
        const t = pick(instances);
        const known = latest.get(key);
        if (known && Math.random() < 0.5) {
          await checkToken(t, key, known, `reader ${n}`);
          continue;
        }
        const startedAt = performance.now();
        const r = await read(t, key);
        noteRead(r.outcome, false);
        tokenless.push({ key, startedAt, v: r.v, on: t });
      }
    };

    const readers = Array.from({ length: READERS }, (_, n) => reader(n));
    try {
      await Promise.all(Array.from({ length: WRITERS }, (_, n) => writer(n)));
    } finally {
      writing = false;
      await Promise.all(readers);
    }
    const loadMs = performance.now() - loadStarted;

    // Stale for others (allowed within the bound, by design): a token-less read that began after a
    // newer value had been acknowledged; its staleness is how long before that was.
    const staleness: number[] = [];
    const staleWhereWritten: string[] = [];
    for (const r of tokenless) {
      let firstNewer = Infinity;
      let sameInstance = false;
      for (const [v, { at, by }] of ackedAt.get(r.key)!)
        if (v > r.v && at <= r.startedAt) {
          firstNewer = Math.min(firstNewer, at);
          sameInstance ||= by === r.on;
        }
      if (firstNewer !== Infinity) staleness.push(r.startedAt - firstNewer);
      if (sameInstance) staleWhereWritten.push(`key ${r.key} read ${r.v} on the instance that had acknowledged a newer value`);
    }
    staleness.sort((x, y) => x - y);
    const total = Object.values(outcomes).reduce((s, n) => s + n, 0);
    const hits = (outcomes.hit ?? 0) + (outcomes['hit (token)'] ?? 0);
    console.log(
      `[cache races] ${a.db.real ? 'PostgreSQL' : 'PGlite'}: ${writes} writes, ${total} reads (${tokenReads} with a token) in ${loadMs.toFixed(0)} ms, ` +
        `${WRITERS} writers, ${READERS} readers, 2 instances; hit rate ${((100 * hits) / total).toFixed(1)}%: ${JSON.stringify(outcomes)}; ` +
        `stale for others: ${staleness.length} of ${tokenless.length} token-less reads, staleness p50 ${percentile(staleness, 0.5).toFixed(0)} ms, ` +
        `p99 ${percentile(staleness, 0.99).toFixed(0)} ms, max ${(staleness.at(-1) ?? 0).toFixed(0)} ms (bound ${STALENESS_MS} ms), ${staleWhereWritten.length} of them on the instance that acknowledged the newer write`,
    );
    expect(writes).toBeGreaterThan(WRITERS);
    expect(staleForWriter).toEqual([]);
    // Stale for others, but never on the instance that had answered the newer write: it reads its view again first.
    expect(staleWhereWritten).toEqual([]);

    // Writes have stopped: once each view is past the bound, no entry older than the database
    // survives — every instance's cache answers each key with its final value (a stale entry would
    // be served as a hit until it expires, in 300 s).
    const final = new Map(
      (await a.db.admin('SELECT id, v FROM counters')).rows.map((r: { id: number; v: string }) => [r.id, Number(r.v)] as const),
    );
    for (const [i, t] of instances.entries())
      for (const key of KEYS) {
        const answers: string[] = [];
        await waitFor(
          async () => {
            const r = await read(t, key);
            answers.push(`${r.v} (${r.outcome})`);
            return r.v === final.get(key) && r.outcome === 'hit';
          },
          { timeoutMs: 10_000, what: `instance ${i}, key ${key}: a hit with ${final.get(key)}` },
        ).catch((err: Error) => {
          throw new Error(`${err.message}; answers: ${runs(answers)}`);
        });
      }
  }, 60_000);
});

describe.skipIf(!privatePostgresAvailable)('the fence with a lagging replica (a private primary and one streaming standby)', () => {
  const DB = 'poolgate_cache_races';
  const APPLY_DELAY_MS = 700;
  let set: ReplicaSet;
  let t: TestGateway;
  let admin: pg.Client;
  const primaryLsn = async () => (await admin.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]!.lsn;

  beforeAll(async () => {
    set = await startReplicaSet({ standbys: 1 });
    const db = await privateTestDatabase(set.primary, DB);
    admin = new pg.Client({ connectionString: set.primary.url(DB) });
    await admin.connect();
    t = await startTestGateway(
      {
        CACHE: 'on',
        CACHE_MAX_STALENESS_MS: '200',
        DATABASE_REPLICA_URLS: set.standbys[0]!.url(DB),
        REPLICA_CHECK_INTERVAL_MS: '100',
        // The replica's lag reads as the time since the last transaction it replayed: with few
        // writes that is long, and a replica past the bound takes no reads — the fence would go untested.
        REPLICA_MAX_LAG_MS: '600000',
      },
      { app: counters, db },
    );
    await set.standbys[0]!.caughtUpTo(await primaryLsn()); // the schema, migrated at start
    await set.standbys[0]!.setApplyDelay(APPLY_DELAY_MS);
  }, 120_000);

  afterAll(async () => {
    await t?.stop();
    await admin?.end();
    await set?.destroy();
  });

  it('once the view knows a write, no token-less read is served the value from before it', async () => {
    const ROUNDS = 5;
    const laggingReads: number[] = []; // bypassing the cache, on the replica: the lag is real
    const servers: Record<string, number> = {};
    const key = 1;
    for (let round = 0; round < ROUNDS; round++) {
      await read(t, key); // an entry to outdate

      // A write through this instance: its view is read again before its next cached read.
      const written = await bump(t, key);
      const mine = await read(t, key);
      servers[mine.server] = (servers[mine.server] ?? 0) + 1;
      expect(mine.v, `round ${round}: the next read on the writing instance, without the token`).toBeGreaterThanOrEqual(written.v);
      const bypass = await read(t, key, { 'cache-control': 'no-store' });
      if (bypass.server.startsWith('replica') && bypass.v < written.v) laggingReads.push(bypass.v);

      // A write elsewhere (psql on the primary): the view learns it within the bound, then the
      // new value is served and never the old one again — though the replica still has the old.
      const { rows } = await admin.query<{ v: string }>('UPDATE counters SET v = v + 1 WHERE id = $1 RETURNING v', [key]);
      const v = Number(rows[0]!.v);
      const seen: number[] = [];
      await waitFor(
        async () => {
          const r = await read(t, key);
          seen.push(r.v);
          return r.v === v;
        },
        { timeoutMs: 10_000, intervalMs: 10, what: `round ${round}: the new value ${v}` },
      ).catch((err: Error) => {
        throw new Error(`${err.message}; answers: ${runs(seen)}`);
      });
      for (let i = 0; i < 20; i++) seen.push((await read(t, key)).v);
      const firstNew = seen.indexOf(v);
      expect(
        seen.slice(firstNew).filter((x) => x < v),
        `round ${round}: answers after the first new one`,
      ).toEqual([]);
    }
    console.log(
      `[cache races] replica ${APPLY_DELAY_MS} ms behind: ${ROUNDS} rounds; the writer's next token-less read served by ${JSON.stringify(servers)}; ` +
        `no-store reads right after a write that the replica answered with the old value: ${laggingReads.length} of ${ROUNDS}`,
    );
    expect(laggingReads.length).toBeGreaterThan(0); // reads do go to the replica, and it does lag
  }, 60_000);
});

describe.skipIf(!privatePostgresAvailable)(
  'a view read while a write commits (a private PostgreSQL holding COMMITs for a synchronous standby)',
  () => {
    let cluster: PrivatePostgres;
    let t: TestGateway; // the instance whose view is read while the write commits
    let w: TestGateway; // another instance on the same database, to write without telling t
    let admin: pg.Client;

    beforeAll(async () => {
      cluster = await startPrivatePostgres();
      const db = await privateTestDatabase(cluster, 'poolgate_cache_commit');
      admin = new pg.Client({ connectionString: cluster.url('poolgate_cache_commit') });
      admin.on('error', () => {});
      await admin.connect();
      // A view refreshed only when a write or a token asks for it: what it was read with decides.
      t = await startTestGateway({ CACHE: 'on', CACHE_MAX_STALENESS_MS: '60000' }, { app: counters, db });
      w = await startTestGateway({ CACHE: 'on', CACHE_MAX_STALENESS_MS: '60000' }, { app: counters, db });
    }, 60_000);

    afterAll(async () => {
      await w?.stop();
      await t?.stop();
      await admin?.end();
      await cluster?.destroy();
    });

    /** COMMITs wait for a standby that never comes (its record written, the transaction not yet visible), or not. */
    async function holdCommits(hold: boolean) {
      await admin.query(hold ? `ALTER SYSTEM SET synchronous_standby_names = 'nobody'` : 'ALTER SYSTEM RESET synchronous_standby_names');
      await admin.query('SELECT pg_reload_conf()');
      const seen = async () => {
        const c = new pg.Client({ connectionString: cluster.url('poolgate_cache_commit') });
        await c.connect();
        try {
          return (await c.query<{ s: string }>("SELECT current_setting('synchronous_standby_names') AS s")).rows[0]!.s;
        } finally {
          await c.end();
        }
      };
      let last = '';
      await waitFor(async () => (last = await seen()) === (hold ? 'nobody' : ''), {
        what: 'synchronous_standby_names to take effect',
      }).catch((err: Error) => {
        throw new Error(`${err.message}: ${JSON.stringify(last)}`);
      });
    }

    /**
     * A write to `key` through `writer`, held in its COMMIT while reads on t asking for the WAL's
     * end (past the write's commit record) read t's view again, twice — each snapshot without the
     * write, each position past the write's, the second view's `seesBefore` the first's position —
     * and store a fill under it; then the write let go. Its answer.
     */
    async function writeWhileViewRead(writer: TestGateway, key: number) {
      const before = (await read(t, key)).v; // an entry
      await holdCommits(true);
      const write = bump(writer, key);
      try {
        await waitFor(async () => (await admin.query(`SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep'`)).rowCount === 1, {
          what: 'the write to wait in its COMMIT',
        });
        const pending = (await admin.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]!.lsn;
        for (let i = 0; i < 2; i++) expect((await read(t, key, { [HEADER]: `lsn=${pending}` })).v).toBe(before);
      } finally {
        await holdCommits(false);
      }
      const written = await write;
      expect(written.v).toBe(before + 1);
      return written;
    }

    it("a position read after the view's snapshot is no proof that it saw a write: the writer's token never reads it stale", async () => {
      const written = await writeWhileViewRead(w, 1);
      const mine = await read(t, 1, { [HEADER]: written.token });
      expect(mine.v, `with the token (${mine.outcome})`).toBe(written.v);
    }, 30_000);

    it('…nor does the instance that answered the write, without the token', async () => {
      const written = await writeWhileViewRead(t, 2);
      const here = await read(t, 2);
      expect(here.v, `without the token, on the instance that wrote (${here.outcome})`).toBe(written.v);
    }, 30_000);
  },
);
