/**
 * One connection budget for every gateway on one server (issue 21, parts 2 and 3): four real
 * gateways with POOL_MAX=20 each on a private cluster with max_connections=40, flooded with reads
 * over real HTTP at once. Before the budget the four pools asked for 80 connections and the
 * server's 53300 came back as 503s, and an operator could not get in. Now each gateway takes a
 * share of the server's limit less the reserve (POOL_RESERVE), counted from pg_stat_activity:
 * every read answers 200, no connect is refused with 53300, a sampler never sees more client
 * backends than the limit less the reserve, and an operator (a role that is not a superuser, so
 * superuser_reserved_connections do not let it in) connects during the flood every time.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnGateway, type ChildGateway } from '../helpers/child-gateway.js';
import { json, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';
import { privatePostgresAvailable, privateTestDatabase, startPrivatePostgres, type PrivatePostgres } from '../helpers/private-postgres.js';

const MAX_CONNECTIONS = 40;
const SUPERUSER_RESERVED = 3;
const RESERVE = 3;
const GATEWAYS = 4;
/** Scaled down from the 2,000 reads × 200 concurrent per gateway: the machine has 2 shared cores. */
const READS = 600;
const CONCURRENCY = 100;

describe.skipIf(!privatePostgresAvailable)('four gateways share one server (private cluster, max_connections 40)', () => {
  let cluster: PrivatePostgres;
  const gateways: TestGateway[] = [];
  let dropDb: (() => Promise<void>) | undefined;
  let userId: string;

  beforeAll(async () => {
    cluster = await startPrivatePostgres();
    const admin = new pg.Client({ connectionString: cluster.url() });
    await admin.connect();
    await admin.query(`ALTER SYSTEM SET max_connections = ${MAX_CONNECTIONS}`);
    await admin.query(`ALTER SYSTEM SET superuser_reserved_connections = ${SUPERUSER_RESERVED}`);
    await admin.query('CREATE ROLE operator LOGIN'); // not a superuser: only the reserve lets it in
    await admin.end();
    await cluster.stop();
    await cluster.start();
    await cluster.acceptsConnections();
    const db = await privateTestDatabase(cluster, 'poolgate_budget');
    dropDb = db.drop;
    // What is shared here is the server's connections; the machine's two cores are shared too, with
    // the rest of the suite. A 15 s acquire timeout keeps the admission gate's predicted-wait sheds out
    // of a test of the budget (503 overloaded: 595 of 2,400 at load average 10–20 before the gate took
    // waits the event loop filled out of its estimate; still 16 of 2,400 after it, beside ten CPU hogs,
    // not diagnosed further); admission under a flood is measured by bench:scale.
    const settings = {
      POOL_BUDGET: 'auto',
      POOL_MAX: '20',
      POOL_MIN: '2',
      POOL_RESERVE: String(RESERVE),
      POOL_ACQUIRE_TIMEOUT_MS: '15000',
    };
    for (let i = 0; i < GATEWAYS; i++) gateways.push(await startTestGateway(settings, { db }));
    const res = await json(`${gateways[0]!.url}/api/users`, {
      method: 'POST',
      json: { email: `budget-${randomUUID()}@example.com`, name: 'b' },
    });
    expect(res.status).toBe(201);
    userId = res.body.id;
    // Each gateway has counted its peers once (the budget's first look at the server after they all started).
    await waitFor(
      async () => {
        const all = await Promise.all(gateways.map(async (g) => (await json(`${g.url}/stats`)).body?.pool?.budget?.instances));
        return all.every((n) => n === GATEWAYS);
      },
      { timeoutMs: 20_000, what: 'every gateway sees its three peers' },
    );
  }, 120_000);

  afterAll(async () => {
    for (const g of gateways) await g.stop().catch(() => {});
    await dropDb?.();
    await cluster?.destroy();
  });

  /** `READS` reads of one user through `g`, `CONCURRENCY` at a time; the status of each. */
  async function flood(g: TestGateway): Promise<number[]> {
    const statuses: number[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < READS) {
          next++;
          const path = next % 3 === 0 ? `/api/users/${userId}/workouts?limit=5` : `/api/users/${userId}`;
          const res = await json(`${g.url}${path}`);
          statuses.push(res.status);
        }
      }),
    );
    return statuses;
  }

  it('all reads answer 200, no 53300, the server stays under its limit less the reserve, an operator always gets in', async () => {
    const sampler = new pg.Client({ connectionString: cluster.url(), application_name: 'budget-sampler' });
    await sampler.connect();
    let flooding = true;
    let maxBackends = 0;
    let maxEveryone = 0;
    let samples = 0;
    const operatorFailures: string[] = [];
    let operatorLogins = 0;
    const sampling = (async () => {
      while (flooding) {
        // The operator's own connection is what the reserve is for: counted apart.
        const { rows } = await sampler.query(
          `SELECT count(*) FILTER (WHERE application_name <> 'psql')::int AS n, count(*)::int AS everyone
           FROM pg_stat_activity WHERE backend_type = 'client backend'`,
        );
        maxBackends = Math.max(maxBackends, rows[0].n);
        maxEveryone = Math.max(maxEveryone, rows[0].everyone);
        samples++;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const operator = (async () => {
      while (flooding) {
        const psql = new pg.Client({ connectionString: cluster.url().replace('postgres@', 'operator@'), application_name: 'psql' });
        psql.on('error', () => {});
        try {
          await psql.connect();
          await psql.query('SELECT 1');
          operatorLogins++;
        } catch (err) {
          operatorFailures.push(String((err as { code?: string }).code ?? err));
        } finally {
          await psql.end().catch(() => {});
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();

    const statuses = (await Promise.all(gateways.map(flood))).flat();
    flooding = false;
    await Promise.all([sampling, operator]);
    await sampler.end();

    const byStatus = statuses.reduce<Record<number, number>>((acc, s) => ((acc[s] = (acc[s] ?? 0) + 1), acc), {});
    console.log(
      `budget flood: ${JSON.stringify(byStatus)}, max client backends ${maxBackends} (${maxEveryone} with the operator's) over ${samples} samples, operator logins ${operatorLogins}`,
    );
    expect(byStatus).toEqual({ 200: READS * GATEWAYS });
    expect(operatorFailures).toEqual([]);
    expect(operatorLogins).toBeGreaterThan(0);
    expect(samples).toBeGreaterThan(5);
    expect(maxBackends).toBeLessThanOrEqual(MAX_CONNECTIONS - SUPERUSER_RESERVED - RESERVE);
    expect(maxEveryone).toBeLessThan(MAX_CONNECTIONS - SUPERUSER_RESERVED);
    for (const g of gateways) {
      const pool = (await json(`${g.url}/stats`)).body.pool;
      expect(pool.budget.refusedCount).toBe(0); // no connect was answered 53300, lanes' included
      expect(pool.budget).toMatchObject({ limit: MAX_CONNECTIONS - SUPERUSER_RESERVED, reserve: RESERVE, instances: GATEWAYS });
      // The lanes come out of the share; the pool has the rest (one less while a lane waits for room:
      // a lane wanted as the flood ended keeps that until the next read asks again, 6 against 7 in CI).
      expect(pool.max).toBeLessThanOrEqual(pool.budget.share - pool.pipeline.lanes);
      expect(pool.max).toBeGreaterThanOrEqual(pool.budget.share - pool.pipeline.lanes - 1);
      const metrics = await fetch(`${g.url}/metrics`).then((r) => r.text());
      expect(metrics).toContain(`poolgate_budget_share_connections{scope="node"} ${pool.budget.share}`);
      expect(metrics).toContain(`poolgate_budget_instances{scope="node"} ${GATEWAYS}`);
      expect(metrics).toContain(`poolgate_pool_max_connections{scope="node"} ${pool.max}`);
    }
  }, 180_000);
});

/**
 * Others take every free slot between two looks (POOL_BUDGET_INTERVAL_MS long here, so the
 * gateway does not see them coming): its connects are refused with 53300. That is a signal to hold
 * fewer, not an outage: the share shrinks to what the gateway holds and every read waits for one
 * of its connections within its deadline, so all answer 200.
 */
describe.skipIf(!privatePostgresAvailable)('a 53300 at connect shrinks the share, not the service (private cluster)', () => {
  let cluster: PrivatePostgres;
  let gateway: TestGateway;
  let dropDb: (() => Promise<void>) | undefined;
  const holders: pg.Client[] = [];
  let userId: string;

  beforeAll(async () => {
    cluster = await startPrivatePostgres();
    const admin = new pg.Client({ connectionString: cluster.url() });
    await admin.connect();
    await admin.query('ALTER SYSTEM SET max_connections = 20');
    await admin.end();
    await cluster.stop();
    await cluster.start();
    await cluster.acceptsConnections();
    const db = await privateTestDatabase(cluster, 'poolgate_refused');
    dropDb = db.drop;
    gateway = await startTestGateway(
      // 60 reads queue behind one connection, at the default acquire timeout. Before the gate took
      // a wait the event loop filled out of its estimate, a CPU-starved machine (six CPU hogs here)
      // shed some of them as predicted to pass 5 s, in 2 of 3 runs; none since, in 3 of 3.
      {
        POOL_BUDGET: 'auto',
        POOL_MAX: '10',
        POOL_MIN: '1',
        PG_PIPELINE_LANES: '0',
        POOL_RESERVE: '0',
        POOL_BUDGET_INTERVAL_MS: '600000',
      },
      { db },
    );
    const res = await json(`${gateway.url}/api/users`, {
      method: 'POST',
      json: { email: `refused-${randomUUID()}@example.com`, name: 'r' },
    });
    expect(res.status).toBe(201);
    userId = res.body.id;
  }, 60_000);

  afterAll(async () => {
    await Promise.allSettled(holders.map((h) => h.end()));
    await gateway?.stop().catch(() => {});
    await dropDb?.();
    await cluster?.destroy();
  });

  it("fills the server behind the gateway's back; 60 reads at once all answer 200", async () => {
    for (;;) {
      const holder = new pg.Client({ connectionString: cluster.url(), application_name: 'holder' });
      holder.on('error', () => {});
      try {
        await holder.connect();
      } catch (err) {
        if ((err as { code?: string }).code === '53300') break; // the server is full
        throw err;
      }
      holders.push(holder);
    }
    const before = (await json(`${gateway.url}/stats`)).body.pool;
    expect(before.total).toBeGreaterThan(0);
    expect(before.budget.share).toBeGreaterThan(before.total); // it would open more if it could

    const answers = await Promise.all(
      Array.from({ length: 60 }, async () => {
        const res = await json(`${gateway.url}/api/users/${userId}/workouts?limit=5`);
        return res.status === 200 ? '200' : `${res.status} ${res.body?.error?.code}`;
      }),
    );
    const statuses = answers.map((a) => Number(a.slice(0, 3)));
    const pool = (await json(`${gateway.url}/stats`)).body.pool;
    console.log(
      `refused: ${JSON.stringify(answers.reduce<Record<string, number>>((a, s) => ((a[s] = (a[s] ?? 0) + 1), a), {}))}, pool ${JSON.stringify({ max: pool.max, total: pool.total, budget: pool.budget })}`,
    );
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(pool.budget.refusedCount).toBeGreaterThan(0);
    expect(pool.budget.share).toBe(pool.total);
  }, 60_000);
});

/**
 * An instance killed without closing (SIGKILL: no pool.end, no goodbye) leaves no lease to expire:
 * its kernel closes its sockets, its backends end, and at the next look its peer counts one
 * instance fewer and takes the whole budget again.
 */
describe.skipIf(!privatePostgresAvailable)('a peer killed without closing gives its share back (private cluster)', () => {
  let cluster: PrivatePostgres;
  let gateway: TestGateway;
  let child: ChildGateway | undefined;
  let dropDb: (() => Promise<void>) | undefined;
  const env = {
    POOL_BUDGET: 'auto',
    POOL_MAX: '20',
    POOL_MIN: '2',
    PG_PIPELINE_LANES: '0',
    POOL_RESERVE: '3',
    POOL_BUDGET_INTERVAL_MS: '200',
  };

  beforeAll(async () => {
    cluster = await startPrivatePostgres();
    const admin = new pg.Client({ connectionString: cluster.url() });
    await admin.connect();
    await admin.query('ALTER SYSTEM SET max_connections = 20');
    await admin.end();
    await cluster.stop();
    await cluster.start();
    await cluster.acceptsConnections();
    const db = await privateTestDatabase(cluster, 'poolgate_killed');
    dropDb = db.drop;
    gateway = await startTestGateway(env, { db });
    child = await spawnGateway(db, env);
  }, 60_000);

  afterAll(async () => {
    child?.child.kill('SIGKILL');
    await gateway?.stop().catch(() => {});
    await dropDb?.();
    await cluster?.destroy();
  });

  it('the survivor sees one instance again and takes the whole budget', async () => {
    const budget = async () => (await json(`${gateway.url}/stats`)).body.pool.budget;
    await waitFor(async () => (await budget()).instances === 2, { timeoutMs: 10_000, what: 'the gateway sees its peer' });
    const shared = await budget();
    child!.child.kill('SIGKILL');
    await child!.exited;
    await waitFor(async () => (await budget()).instances === 1, { timeoutMs: 10_000, what: 'the killed peer gone from the count' });
    const alone = await budget();
    console.log(`killed peer: share ${shared.share} with it, ${alone.share} without (others ${alone.others})`);
    // 20 − 3 superuser − 3 reserve − others' backends, split between two, then all of it.
    expect(shared.share).toBe(Math.floor((20 - 3 - 3 - shared.others) / 2));
    expect(alone.share).toBe(Math.min(20, 20 - 3 - 3 - alone.others));
  }, 60_000);
});
