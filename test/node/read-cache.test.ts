/**
 * Issue 23 on Node, real HTTP against a real database: the fitness routes' read cache. A hit after
 * a fill; the writer's token never reads its write stale on another instance whose view is old;
 * a write anywhere (a route, psql) outdates entries once the view is read again; a rollback
 * outdates nothing; errors, transactional answers and callers' credentials are never cached; a
 * fill that began before a write cannot serve after it (the fence); CACHE=off caches nothing.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineApp, route } from '../../src/index.js';

import { json, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';
import { itemsApp } from '../helpers/items-app.js';

let a: TestGateway; // the writer's instance
let b: TestGateway; // another instance on the same database, its view refreshed only every minute

beforeAll(async () => {
  a = await startTestGateway({ CACHE: 'on', CACHE_MAX_STALENESS_MS: '60000' });
  b = await startTestGateway({ CACHE: 'on', CACHE_MAX_STALENESS_MS: '60000' }, { db: a.db });
});

afterAll(async () => {
  await b?.stop();
  await a?.stop();
});

async function createUser(t: TestGateway, units: 'metric' | 'imperial' = 'metric') {
  const res = await json(`${t.url}/api/users`, {
    method: 'POST',
    json: { email: `${randomUUID()}@example.com`, name: 'C', preferences: { units } },
  });
  expect(res.status, res.text).toBe(201);
  return res;
}

const get = (t: TestGateway, path: string, headers: Record<string, string> = {}) => json(`${t.url}${path}`, { headers });
const cacheStatus = (res: { headers: Headers }) => res.headers.get('cache-status') ?? '';

describe('the read cache on Node', () => {
  it('loads once, then serves hits, with Cache-Status, Server-Timing and per-route stats', async () => {
    const { body: user } = await createUser(a);
    const first = await get(b, `/api/users/${user.id}`);
    expect(first.status).toBe(200);
    expect(cacheStatus(first)).toMatch(/^poolgate; fwd=miss; fwd-status=200; stored$/);
    const second = await get(b, `/api/users/${user.id}`);
    expect(second.body).toEqual(first.body);
    expect(cacheStatus(second)).toMatch(/^poolgate; hit; ttl=\d+$/);
    expect(second.headers.get('server-timing')).toMatch(/cache;dur=[\d.]+;desc="hit"/);
    expect(second.headers.get('server-timing')).toMatch(/db;dur=0\.00;desc="none 0q"/);
    const stats = (await get(b, '/stats')).body;
    const r = stats.routes.find((x: { route: string }) => x.route === '/api/users/:id');
    expect(r.cache).toMatchObject({ hit: 1, miss: 1 });
    const metrics = await fetch(`${b.url}/metrics`).then((res) => res.text());
    expect(metrics).toMatch(/poolgate_cache_requests_total\{[^}]*route="\/api\/users\/:id",result="hit"\} 1/);
  });

  it("never serves the writer its write stale: the token passes an entry another instance's old view still serves", async () => {
    const { body: user } = await createUser(a);
    await get(b, `/api/users/${user.id}`); // cached on b, metric
    expect(cacheStatus(await get(b, `/api/users/${user.id}`))).toMatch(/hit/);
    const patch = await json(`${a.url}/api/users/${user.id}/preferences`, { method: 'PATCH', json: { units: 'imperial' } });
    expect(patch.status).toBe(200);
    const token = patch.headers.get('poolgate-consistency');
    expect(token).toMatch(/^lsn=[0-9A-F]+\/[0-9A-F]+$/);
    expect(cacheStatus(patch)).toBe(''); // a transactional answer is never cached
    // Without the token, b's view (up to a minute old by configuration) still serves the old answer.
    const other = await get(b, `/api/users/${user.id}`);
    expect(other.body.preferences.units).toBe('metric');
    expect(cacheStatus(other)).toMatch(/hit/);
    // With it, b reads its view again and the entry is outdated.
    const mine = await get(b, `/api/users/${user.id}`, { 'poolgate-consistency': token! });
    expect(mine.body.preferences.units).toBe('imperial');
    expect(cacheStatus(mine)).toMatch(/^poolgate; fwd=stale; fwd-status=200; stored$/);
    // …and everyone on b now sees it: the view it read for the token is b's.
    expect((await get(b, `/api/users/${user.id}`)).body.preferences.units).toBe('imperial');
  });

  it('the instance that committed a write reads its view again before its next cached read', async () => {
    const { body: user } = await createUser(a);
    await get(a, `/api/users/${user.id}`);
    await json(`${a.url}/api/users/${user.id}/preferences`, { method: 'PATCH', json: { weeklyGoal: 7 } });
    const after = await get(a, `/api/users/${user.id}`); // no token
    expect(after.body.preferences.weeklyGoal).toBe(7);
  });

  it('a write outside poolgate (psql) outdates entries too: the triggers live in the database', async () => {
    const { body: user } = await createUser(a);
    await get(a, `/api/users/${user.id}`);
    await a.db.admin('UPDATE users SET name = $2 WHERE id = $1', [user.id, 'Renamed']);
    const c = await startTestGateway({ CACHE: 'on', CACHE_MAX_STALENESS_MS: '100' }, { db: a.db });
    try {
      await get(c, `/api/users/${user.id}`);
      await c.db.admin('UPDATE users SET name = $2 WHERE id = $1', [user.id, 'Renamed again']);
      await waitFor(async () => (await get(c, `/api/users/${user.id}`)).body.name === 'Renamed again', { timeoutMs: 10_000 });
    } finally {
      await c.stop();
    }
  });

  it('a transaction that rolls back bumps nothing; one that commits bumps each table it wrote once', async () => {
    const gens = async () =>
      Object.fromEntries(
        (await a.db.admin('SELECT name, gen::int AS gen FROM poolgate_cache_generations')).rows.map((r) => [r.name, r.gen]),
      );
    const before = await gens();
    const bad = await json(`${a.url}/api/workouts`, {
      method: 'POST',
      json: { userId: randomUUID(), kind: 'run', startedAt: '2026-01-01T00:00:00Z', sets: [] },
    });
    expect(bad.status).toBe(404);
    expect(await gens()).toEqual(before);
    const { body: user } = await createUser(a);
    const ok = await json(`${a.url}/api/workouts`, {
      method: 'POST',
      json: {
        userId: user.id,
        kind: 'run',
        startedAt: '2026-01-01T00:00:00Z',
        sets: [
          { exercise: 'x', reps: 1 },
          { exercise: 'y', reps: 2 },
        ],
      },
    });
    expect(ok.status).toBe(201);
    const after = await gens();
    expect(after.workouts).toBe((before.workouts ?? 0) + 1);
    expect(after.workout_sets).toBe((before.workout_sets ?? 0) + 1); // two rows, one bump
  });

  it('never caches an error: a 404 is loaded again, and answers 200 once the row exists', async () => {
    const id = randomUUID();
    const miss = await get(b, `/api/users/${id}`);
    expect(miss.status).toBe(404);
    expect(miss.body.error.code).toBe('not_found');
    await a.db.admin(`INSERT INTO users (id, email, name) VALUES ($1, $2, 'Late')`, [id, `${id}@example.com`]);
    const c = await startTestGateway({ CACHE: 'on' }, { db: a.db }); // a view taken after the insert
    try {
      expect((await get(c, `/api/users/${id}`)).status).toBe(200);
    } finally {
      await c.stop();
    }
  });

  it('a request with credentials is neither served from nor stored in the cache unless the policy varies by them', async () => {
    const { body: user } = await createUser(a);
    const withAuth = await get(b, `/api/users/${user.id}`, { authorization: 'Bearer someone' });
    expect(cacheStatus(withAuth)).toMatch(/^poolgate; fwd=bypass; fwd-status=200$/);
    const withCookie = await get(b, `/api/users/${user.id}`, { cookie: 'session=abc' });
    expect(cacheStatus(withCookie)).toMatch(/fwd=bypass/);
    // Nothing was stored by either: the next plain read loads.
    expect(cacheStatus(await get(b, `/api/users/${user.id}`))).toMatch(/fwd=miss/);
    // The consistency cookie names no caller.
    expect(cacheStatus(await get(b, `/api/users/${user.id}`, { cookie: 'poolgate_consistency=lsn%3D0%2F1' }))).toMatch(/hit/);
  });

  it('Cache-Control: no-cache loads and stores; no-store bypasses; a malformed token is a 400', async () => {
    const { body: user } = await createUser(a);
    await get(b, `/api/users/${user.id}`);
    expect(cacheStatus(await get(b, `/api/users/${user.id}`, { 'cache-control': 'no-cache' }))).toMatch(
      /^poolgate; fwd=request; fwd-status=200; stored$/,
    );
    expect(cacheStatus(await get(b, `/api/users/${user.id}`, { 'cache-control': 'no-store' }))).toMatch(/fwd=request; fwd-status=200$/);
    const bad = await get(b, `/api/users/${user.id}`, { 'poolgate-consistency': 'lsn=nope' });
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe('invalid_consistency_token');
  });

  it('a read route that opens a transaction answers without a token: it wrote nothing to wait for', async () => {
    const { body: user } = await createUser(a);
    await json(`${a.url}/api/workouts`, {
      method: 'POST',
      json: { userId: user.id, kind: 'run', startedAt: '2026-01-01T00:00:00Z', sets: [] },
    });
    const latest = await get(a, `/api/users/${user.id}/workouts/latest`); // db.transaction() on a read route
    expect(latest.status).toBe(200);
    expect(latest.headers.get('poolgate-consistency')).toBeNull();
  });

  it('CACHE=off caches nothing', async () => {
    const off = await startTestGateway({ CACHE: 'off' }, { db: a.db });
    try {
      const { body: user } = await createUser(a);
      const res = await get(off, `/api/users/${user.id}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('cache-status')).toBeNull();
      expect(res.headers.get('poolgate-consistency')).toBeNull();
    } finally {
      await off.stop();
    }
  });
});

describe('the fence: a fill that began before a write', () => {
  // A test app: a cached read that reads, then waits for the test to let it finish.
  let release: (() => void) | undefined;
  let entered: () => void = () => {};
  /** Resolves once the next load has read its row and waits. */
  const nextLoad = () => new Promise<void>((r) => (entered = r));
  const app = itemsApp(
    'fence',
    () =>
      new Promise<void>((resolve) => {
        release = resolve;
        entered();
      }),
  );

  it('stores its older answer under the older generation: no reader after the write is served it', async () => {
    const t = await startTestGateway({ CACHE: 'on', CACHE_MAX_STALENESS_MS: '50' }, { app });
    try {
      let loaded = nextLoad();
      const slow = get(t, '/items/1'); // reads 'old', then waits
      await loaded;
      const put = await json(`${t.url}/items/1`, { method: 'PUT', json: { v: 'new' } });
      expect(put.status).toBe(200);
      release!();
      const filled = await slow;
      expect(filled.body.v).toBe('old');
      expect(cacheStatus(filled)).toMatch(/stored/); // it was stored…
      loaded = nextLoad();
      const afterWrite = get(t, '/items/1', { 'poolgate-consistency': put.headers.get('poolgate-consistency')! });
      await loaded;
      release!();
      const res = await afterWrite; // …but not served to the writer,
      expect(res.body.v).toBe('new');
      expect(cacheStatus(res)).toMatch(/fwd=stale/);
      await new Promise((r) => setTimeout(r, 100)); // nor to anyone once the view is past the bound
      const later = await get(t, '/items/1');
      expect(later.body.v).toBe('new');
      expect(cacheStatus(later)).toMatch(/hit/);
    } finally {
      await t.stop();
    }
  });

  it('a write whose request fails after its COMMIT still outdates the entries', async () => {
    const t = await startTestGateway({ CACHE: 'on', CACHE_MAX_STALENESS_MS: '50' }, { app });
    try {
      const read = async () => {
        const loaded = nextLoad();
        const res = get(t, '/items/1');
        await Promise.race([loaded, res]);
        release?.();
        return res;
      };
      await json(`${t.url}/items/1`, { method: 'PUT', json: { v: 'before' } });
      await read();
      expect(cacheStatus(await read())).toMatch(/hit/);
      const failed = await json(`${t.url}/items/1/fail-after-commit`, { method: 'POST', json: { v: 'committed' } });
      expect(failed.status).toBe(500);
      await new Promise((r) => setTimeout(r, 100)); // past the bound: any view now is taken after the COMMIT
      const after = await read();
      expect(after.body.v).toBe('committed');
      expect(cacheStatus(after)).toMatch(/fwd=stale/);
    } finally {
      await t.stop();
    }
  });

  it('a policy naming a table that does not exist stops the migration with its name', async () => {
    const bad = defineApp({
      routes: [
        route({
          method: 'GET',
          path: '/x',
          kind: 'read',
          cache: { ttlSeconds: 1, tables: ['no_such_table'] },
          handler: () => Promise.resolve({ status: 200, body: {} }),
        }),
      ],
    });
    await expect(startTestGateway({ CACHE: 'on' }, { app: bad })).rejects.toThrow(/no_such_table/);
  });

  it('a policy on a transactional route is refused where it is declared', () => {
    expect(() =>
      route({
        method: 'POST',
        path: '/y',
        kind: 'transactional',
        cache: { ttlSeconds: 1, tables: ['t'] },
        handler: () => Promise.resolve({ status: 200 }),
      }),
    ).toThrow(/only GET routes of kind 'read'/);
  });
});

describe('stale-while-revalidate', () => {
  let loads = 0;
  const app = defineApp({
    name: 'swr',
    migrations: [
      { id: 1, name: 'things', sql: 'CREATE TABLE things (id int PRIMARY KEY, v text NOT NULL); INSERT INTO things VALUES (1, $$a$$)' },
    ],
    routes: [
      route({
        method: 'GET',
        path: '/things/:id',
        kind: 'read',
        params: z.object({ id: z.coerce.number().int() }),
        cache: { ttlSeconds: 0.3, staleWhileRevalidateSeconds: 60, tables: ['things'] },
        handler: async ({ db, params }) => {
          loads++;
          const { rows } = await db.query<{ v: string }>('SELECT v FROM things WHERE id = $1', [params.id]);
          return { status: 200, body: { v: rows[0]?.v, load: loads } };
        },
      }),
    ],
  });

  it('past its ttl an entry is served once more while it is loaded again after the response; then the new load is a hit', async () => {
    const t = await startTestGateway({ CACHE: 'on' }, { app });
    try {
      const first = await get(t, '/things/1');
      expect(cacheStatus(first)).toMatch(/fwd=miss/);
      await new Promise((r) => setTimeout(r, 400)); // past the ttl, inside stale-while-revalidate
      const stale = await get(t, '/things/1');
      expect(cacheStatus(stale)).toMatch(/^poolgate; hit; ttl=-\d+$/);
      expect(stale.body).toEqual(first.body); // the old entry, served
      const reloaded = await waitFor(async () => {
        const res = await get(t, '/things/1');
        return res.body.load > first.body.load ? res : undefined;
      });
      expect(cacheStatus(reloaded)).toMatch(/^poolgate; hit; ttl=-?\d+$/); // loaded in the background, not by this request
      const r = (await get(t, '/stats')).body.routes.find((x: { route: string }) => x.route === '/things/:id');
      expect(r.cache.stale).toBeGreaterThanOrEqual(1);
    } finally {
      await t.stop();
    }
  });
});
