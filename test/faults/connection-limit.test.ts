/**
 * The server allows fewer connections than the pool wants: the gateway's role has CONNECTION
 * LIMIT 2 while POOL_MAX is 6, so opening a 3rd connection fails with 53300. A flood of 3× the
 * pool at once must stay bounded (never more than POOL_QUEUE_MAX waiting, never more than the
 * limit on the server), be answered fast with 503 + Retry-After where it cannot be served, keep
 * the ledger clean, and the gateway recovers by itself afterwards. Real PostgreSQL only: a role
 * and a per-role connection limit.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { json, leaksIn, seenResponses, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';
import { DEFINITE_503, Ledger, sampleConnections } from '../helpers/ledger.js';

const LIMIT = 2;
const POOL_MAX = 6;
const QUEUE_MAX = 6;
const FLOOD = 3 * POOL_MAX;
const REQUEST_TIMEOUT_MS = 3_000;

async function asServer(sql: string) {
  const c = new pg.Client({ connectionString: realPostgresUrl });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

const suiteName = onRealPostgres(
  `role CONNECTION LIMIT ${LIMIT} below POOL_MAX ${POOL_MAX} (real PostgreSQL: 53300)`,
  PGLITE_CANNOT.serverView,
);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  const role = `poolgate_lim_${randomBytes(4).toString('hex')}`;
  let db: TestDatabase;
  let t: TestGateway;
  let userId: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    await asServer(`CREATE ROLE ${role} LOGIN CONNECTION LIMIT ${LIMIT}`);
    // The owner of the database owns its public schema (PostgreSQL 15), so the gateway can migrate it.
    await asServer(`ALTER DATABASE ${db.name} OWNER TO ${role}`);
    const url = new URL(db.url);
    url.username = role;
    url.password = '';
    t = await startTestGateway(
      {
        DATABASE_URL: url.toString(),
        POOL_MAX: String(POOL_MAX),
        POOL_MIN: '1',
        POOL_QUEUE_MAX: String(QUEUE_MAX),
        POOL_ACQUIRE_TIMEOUT_MS: '800',
        POOL_CONNECTION_TIMEOUT_MS: '1000',
        REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
      },
      { db },
    );
    const res = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `limit-${randomUUID()}@example.com`, name: 'Limit' } });
    expect(res.status).toBe(201);
    userId = res.body.id;
  });

  afterAll(async () => {
    await t?.stop();
    await db?.drop();
    await asServer(`DROP ROLE IF EXISTS ${role}`).catch(() => {});
  });

  it(`a flood of ${FLOOD} writes at once: bounded queue, fast 503s with Retry-After, ledger clean, recovery`, async () => {
    const ledger = new Ledger({ baseUrl: t.url, userId, requestTimeoutMs: REQUEST_TIMEOUT_MS + 5_000, prefix: 'limit' });
    const sampler = sampleConnections(db, t.applicationName);
    let sampling = true;
    let maxWaiting = 0;
    let maxRoleBackends = 0;
    const watch = (async () => {
      while (sampling) {
        maxWaiting = Math.max(maxWaiting, t.gateway.database.stats()!.waiting);
        const { rows } = await db.admin('SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1', [role]);
        maxRoleBackends = Math.max(maxRoleBackends, rows[0].n);
        await new Promise((r) => setTimeout(r, 5));
      }
    })();

    // Two waves, so the second meets whatever state the first left (breaker, queue).
    for (let wave = 0; wave < 2; wave++) {
      await Promise.all(Array.from({ length: FLOOD }, () => ledger.write()));
    }
    const flooded = ledger.entries.length;

    // Recovery: within a few seconds, writes go through again (the two allowed connections suffice).
    await waitFor(async () => (await ledger.write()).outcome === 'acknowledged' && (await json(`${t.url}/health/ready`)).status === 200, {
      timeoutMs: 8_000,
      intervalMs: 200,
      what: 'the gateway to serve writes again',
    });
    for (let i = 0; i < 5; i++) expect((await ledger.write()).status).toBe(201);
    sampling = false;
    await watch;
    const { max } = await sampler.stop();
    const pool = t.gateway.database.stats()!;

    await ledger.resolveAmbiguous();
    const counts = ledger.report('connection limit flood', {
      flood: `2 × ${FLOOD}`,
      maxWaiting,
      maxRoleBackends,
      maxConnections: max,
      queueRejected: pool.queueRejectedCount,
      acquireTimeouts: pool.acquireTimeoutCount,
      breaker: t.gateway.database.breakers()[0],
    });

    const flood = ledger.entries.slice(0, flooded);
    const refused = flood.filter((e) => e.status === 503);
    expect(refused.length).toBeGreaterThan(0);
    for (const e of refused) {
      expect([...DEFINITE_503, 'database_unavailable'], JSON.stringify(e)).toContain(e.code);
      expect(e.retryAfter, JSON.stringify(e)).toMatch(/^\d+$/);
    }
    // Never past the deadline: none ended in a 504 (how fast the 503s come is the bench's business).
    expect(flood.filter((e) => ![201, 503].includes(e.status))).toEqual([]);
    // The queue, plus the requests admitted before the first 53300 taught the pool the role's limit:
    // those wait for one of its LIMIT connections instead of failing (issue 21).
    expect(maxWaiting).toBeLessThanOrEqual(QUEUE_MAX + POOL_MAX - LIMIT);
    expect(maxRoleBackends).toBeLessThanOrEqual(LIMIT);
    expect(max).toBeLessThanOrEqual(POOL_MAX);
    expect(counts.acknowledged).toBeGreaterThan(5);
    expect((await ledger.verify(db, t.applicationName)).problems).toEqual([]);
    expect(pool.active).toBe(0);
  });

  it('no response leaked internals (the role name included)', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, db))).toEqual([]);
    expect(seenResponses.filter((text) => text.includes(role))).toEqual([]);
    expect(t.logs.filter((l) => l.includes(role))).toEqual([]);
  });
});
