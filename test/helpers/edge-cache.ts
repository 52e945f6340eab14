/**
 * The read cache (issue 23) at the edge, written once for workerd and Deno: the cases run against
 * four instances of the edge bundle on one database (edge.ts's stack: the local Neon proxy, writes
 * forwarded, signed, to a real Node gateway). Each instance is an isolate of its own, with its own
 * generation view and in-memory tier; all four share the runtime's platform cache (workerd: the
 * workers of one miniflare share `caches.default`; Deno: processes with one DENO_DIR share
 * `caches.open()`), as the isolates of one location do.
 *
 * - writer: every write goes through it (its noteWrite is what the writer's own reads rely on);
 * - reader: another instance whose view may be a minute old (CACHE_MAX_STALENESS_MS=60000), so
 *   only the writer's token makes it see the write;
 * - quick: a reader whose view is at most 200 ms old;
 * - off: CACHE=off.
 */
import { randomUUID } from 'node:crypto';
import { expect, it } from 'vitest';
import { CONSISTENCY_HEADER } from '../../src/db/consistency.js';
import { dbDescOf, type EdgeStack } from './edge.js';
import { waitFor } from './wait.js';

/** The bindings of each instance, beside the stack's edgeEnv. */
export const EDGE_CACHE_INSTANCES = {
  writer: { CACHE: 'on', CACHE_MAX_STALENESS_MS: '60000' },
  reader: { CACHE: 'on', CACHE_MAX_STALENESS_MS: '60000' },
  quick: { CACHE: 'on', CACHE_MAX_STALENESS_MS: '200' },
  off: { CACHE: 'off' },
} as const;

export type InstanceName = keyof typeof EDGE_CACHE_INSTANCES;

export interface Answer {
  status: number;
  headers: { get(name: string): string | null };
  text: string;
  body: any;
}

export interface AskInit {
  method?: string;
  headers?: Record<string, string>;
  json?: unknown;
}

/** One edge instance: a request to it, its body read and parsed, bounded so a hang fails the test. */
export interface CacheEdge {
  ask(path: string, init?: AskInit): Promise<Answer>;
}

export interface EdgeCacheRig {
  stack: EdgeStack;
  edges: Record<InstanceName, CacheEdge>;
}

type Fetcher = (
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string; signal: AbortSignal },
) => Promise<{ status: number; headers: { get(name: string): string | null }; text(): Promise<string> }>;

/** A CacheEdge over any fetch (Node's, or a miniflare worker's) and the instance's base URL. */
export function edgeOver(fetcher: Fetcher, base: string): CacheEdge {
  return {
    async ask(path, init = {}) {
      const headers = { ...init.headers };
      if (init.json !== undefined) headers['content-type'] ??= 'application/json';
      const res = await fetcher(`${base}${path}`, {
        method: init.method ?? 'GET',
        headers,
        ...(init.json !== undefined ? { body: JSON.stringify(init.json) } : {}),
        signal: AbortSignal.timeout(20_000),
      });
      const text = await res.text();
      let body: unknown;
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        body = undefined;
      }
      return { status: res.status, headers: res.headers, text, body };
    },
  };
}

export const cacheStatus = (res: Answer) => res.headers.get('cache-status') ?? '';
const timing = (res: Answer) => res.headers.get('server-timing') ?? '';

/** The edge's /stats counts of hits and misses on GET /api/users/:id (zeros before its first request). */
async function userRouteCache(edge: CacheEdge, opsToken: string): Promise<{ hit: number; miss: number }> {
  const stats = await edge.ask('/stats', { headers: { authorization: `Bearer ${opsToken}` } });
  expect(stats.status, stats.text).toBe(200);
  const route = stats.body.routes.find((r: { method: string; route: string }) => r.method === 'GET' && r.route === '/api/users/:id');
  return { hit: route?.cache?.hit ?? 0, miss: route?.cache?.miss ?? 0 };
}

/**
 * The cases, for a suite whose beforeAll builds the rig.
 * @example edgeCacheCases('workerd', () => rig);
 */
export function edgeCacheCases(runtime: string, rig: () => EdgeCacheRig): void {
  const edges = () => rig().edges;

  /** POST /api/users through `edge` (forwarded to the gateway): the user and the write's token. */
  async function createUser(edge: CacheEdge) {
    const res = await edge.ask('/api/users', {
      method: 'POST',
      json: { email: `ec-${randomUUID()}@example.com`, name: 'edge-cache', preferences: { units: 'metric' } },
    });
    expect(res.status, res.text).toBe(201);
    const token = res.headers.get(CONSISTENCY_HEADER);
    expect(token, `the gateway's token, passed back by the edge`).toMatch(/^lsn=[0-9A-F]+\/[0-9A-F]+$/);
    return { id: res.body.id as string, token: token! };
  }

  /** PATCH /api/users/:id/preferences through the writer: units imperial; the write's token. */
  async function patchUnits(id: string): Promise<string> {
    const res = await edges().writer.ask(`/api/users/${id}/preferences`, { method: 'PATCH', json: { units: 'imperial' } });
    expect(res.status, res.text).toBe(200);
    expect(res.body.preferences.units).toBe('imperial');
    expect(cacheStatus(res), 'a transactional answer is never cached').toBe('');
    const token = res.headers.get(CONSISTENCY_HEADER);
    expect(token, 'the PATCH answer carries its token through the edge').toMatch(/^lsn=[0-9A-F]+\/[0-9A-F]+$/);
    return token!;
  }

  const units = async (edge: CacheEdge, id: string, headers: Record<string, string> = {}) => {
    const res = await edge.ask(`/api/users/${id}`, { headers });
    expect(res.status, res.text).toBe(200);
    return { units: res.body.preferences.units as string, status: cacheStatus(res) };
  };

  it(`${runtime}: a read is loaded once, then served from the isolate with no query; Server-Timing and /stats say so`, async () => {
    const { writer } = edges();
    const { id } = await createUser(writer);
    const before = await userRouteCache(writer, rig().stack.opsToken);
    const first = await writer.ask(`/api/users/${id}`);
    expect(first.status, first.text).toBe(200);
    expect(cacheStatus(first)).toBe('poolgate; fwd=miss; fwd-status=200; stored');
    expect(dbDescOf(timing(first))).toBe('neon-http 1q');
    const second = await writer.ask(`/api/users/${id}`);
    expect(second.status).toBe(200);
    expect(second.body).toEqual(first.body);
    expect(cacheStatus(second)).toMatch(/^poolgate; hit; ttl=\d+$/);
    expect(timing(second)).toMatch(/(^|,\s*)cache;dur=[\d.]+;desc="hit"/);
    expect(dbDescOf(timing(second)), 'a hit sends no query').toBe('none 0q');
    const after = await userRouteCache(writer, rig().stack.opsToken);
    expect({ hit: after.hit - before.hit, miss: after.miss - before.miss }).toEqual({ hit: 1, miss: 1 });
  });

  it(`${runtime}: the platform cache is shared: an entry one isolate stored is a hit in another that never read it`, async () => {
    const { writer, reader } = edges();
    const { id } = await createUser(writer);
    // The writer's answer goes out before its put into the platform cache has landed (waitUntil),
    // so a look from the reader may come first: each attempt is a key of its own (the route has no
    // query schema, so the query is part of the key) and the reader has never seen it.
    let attempt = 0;
    const hit = await waitFor(
      async () => {
        const path = `/api/users/${id}?attempt=${++attempt}`;
        expect(cacheStatus(await writer.ask(path))).toBe('poolgate; fwd=miss; fwd-status=200; stored');
        await new Promise((r) => setTimeout(r, 20 * attempt));
        const res = await reader.ask(path);
        expect(res.status, res.text).toBe(200);
        return /^poolgate; hit; ttl=\d+$/.test(cacheStatus(res)) ? res : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 0, what: 'a hit on the reader for an entry the writer stored' },
    );
    expect(hit.body.id).toBe(id);
    expect(dbDescOf(timing(hit))).toBe('none 0q');
    console.log(`[edge-cache ${runtime}] the reader's first look hit the platform cache on attempt ${attempt}`);
  });

  it(`${runtime}: the writer never reads its write stale: its own instance, and another whose view is old, with the token`, async () => {
    const { writer, reader } = edges();
    const { id, token: created } = await createUser(writer);
    expect((await units(writer, id)).units).toBe('metric');
    // The reader's view is read again for the creation's token (so it will not be refreshed by age
    // during this test), and the reader keeps the user, metric, in its isolate.
    expect((await units(reader, id, { [CONSISTENCY_HEADER]: created })).units).toBe('metric');
    expect(await units(reader, id)).toMatchObject({ units: 'metric', status: expect.stringMatching(/^poolgate; hit;/) });

    const token = await patchUnits(id);
    // The instance that forwarded the write reads its view again before its next cached read (noteWrite).
    expect(await units(writer, id)).toEqual({ units: 'imperial', status: 'poolgate; fwd=stale; fwd-status=200; stored' });
    // Without the token, the reader's view (up to a minute old, by configuration) still serves the old answer:
    // the token is what protects the writer.
    expect(await units(reader, id)).toMatchObject({ units: 'metric', status: expect.stringMatching(/^poolgate; hit;/) });
    // With it, the reader reads its view again first, and the entry is outdated.
    expect(await units(reader, id, { [CONSISTENCY_HEADER]: token })).toEqual({
      units: 'imperial',
      status: 'poolgate; fwd=stale; fwd-status=200; stored',
    });
    // …and the reader's view is now past the write for everyone.
    expect((await units(reader, id)).units).toBe('imperial');
  });

  it(`${runtime}: another reader without the token sees the write once its staleness bound (200 ms) has passed`, async () => {
    const { writer, quick } = edges();
    const { id } = await createUser(writer);
    await units(quick, id);
    expect(await units(quick, id)).toMatchObject({ units: 'metric', status: expect.stringMatching(/^poolgate; hit;/) });
    await patchUnits(id);
    // No bound on how soon (a duration would fail at random on a loaded machine), only on how late:
    // once more than the bound has passed since the write committed, a view from before it is too
    // old to serve from, so the very next read is the write's, without any token.
    await new Promise((r) => setTimeout(r, 2 * Number(EDGE_CACHE_INSTANCES.quick.CACHE_MAX_STALENESS_MS)));
    expect(await units(quick, id)).toEqual({ units: 'imperial', status: 'poolgate; fwd=stale; fwd-status=200; stored' });
  });

  it(`${runtime}: errors are not cached: a 404 is loaded again, and answers 200 once the row exists`, async () => {
    const { writer } = edges();
    const id = randomUUID();
    const missing = await writer.ask(`/api/users/${id}`);
    expect(missing.status).toBe(404);
    expect(missing.body.error.code).toBe('not_found');
    // Written outside poolgate, and unseen by the writer's view (up to a minute old): only a load finds it.
    await rig().stack.db.admin(`INSERT INTO users (id, email, name) VALUES ($1, $2, 'Late')`, [id, `${id}@example.com`]);
    const found = await writer.ask(`/api/users/${id}`);
    expect(found.status, found.text).toBe(200);
    expect(found.body.name).toBe('Late');
    expect(cacheStatus(found)).toBe('poolgate; fwd=miss; fwd-status=200; stored');
  });

  it(`${runtime}: a request with Authorization or a cookie is neither served from nor stored in the cache`, async () => {
    const { writer } = edges();
    const { id } = await createUser(writer);
    const withAuth = await writer.ask(`/api/users/${id}`, { headers: { authorization: 'Bearer someone' } });
    expect(withAuth.status).toBe(200);
    expect(cacheStatus(withAuth)).toBe('poolgate; fwd=bypass; fwd-status=200');
    const withCookie = await writer.ask(`/api/users/${id}`, { headers: { cookie: 'session=abc' } });
    expect(cacheStatus(withCookie)).toBe('poolgate; fwd=bypass; fwd-status=200');
    // Neither stored anything, in the isolate or the platform cache: the next plain read loads.
    expect(cacheStatus(await writer.ask(`/api/users/${id}`))).toBe('poolgate; fwd=miss; fwd-status=200; stored');
    const again = await writer.ask(`/api/users/${id}`, { headers: { authorization: 'Bearer someone' } });
    expect(cacheStatus(again), 'nor is it served one').toBe('poolgate; fwd=bypass; fwd-status=200');
    expect(dbDescOf(timing(again))).toBe('neon-http 1q');
  });

  it(`${runtime}: CACHE=off at the edge: no Cache-Status, every read loads`, async () => {
    const { writer, off } = edges();
    const { id } = await createUser(writer);
    for (let i = 0; i < 2; i++) {
      const res = await off.ask(`/api/users/${id}`);
      expect(res.status, res.text).toBe(200);
      expect(res.body.id).toBe(id);
      expect(res.headers.get('cache-status')).toBeNull();
      expect(dbDescOf(timing(res))).toBe('neon-http 1q');
    }
  });

  // Last: it resets the generations, which every other case counts on.
  it(`${runtime}: an entry whose generations still pass but whose data is older than the token is not served to the token's reader`, async () => {
    // poolgate_cache_generations counting from the start again (a restore, a re-created table):
    // entries stored before carry higher generations than any view after, so only their position
    // tells that they predate the writer's write.
    const { writer, reader } = edges();
    const db = rig().stack.db;
    const { id, token: created } = await createUser(writer);
    expect(await units(reader, id, { [CONSISTENCY_HEADER]: created })).toEqual({
      units: 'metric',
      status: 'poolgate; fwd=miss; fwd-status=200; stored',
    });
    try {
      await db.admin('DELETE FROM poolgate_cache_generations');
      const token = await patchUnits(id);
      expect(await units(reader, id, { [CONSISTENCY_HEADER]: token })).toEqual({
        units: 'imperial',
        status: 'poolgate; fwd=stale; fwd-status=200; stored',
      });
    } finally {
      // Above anything counted before, so no entry of this suite passes for fresh afterwards.
      await db.admin(
        `INSERT INTO poolgate_cache_generations (name, gen)
         SELECT t, 1000000 FROM unnest($1::text[]) AS t
         ON CONFLICT (name) DO UPDATE SET gen = poolgate_cache_generations.gen + 1000000`,
        [['users', 'user_preferences', 'workouts', 'workout_sets']],
      );
    }
  });
}
