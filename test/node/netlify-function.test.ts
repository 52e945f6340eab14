/**
 * The Netlify Node function as deployed: the esbuild bundle (dist/netlify/functions/gateway.mjs)
 * imported into real Node and called the way Netlify Functions v2 call it, with a Request under
 * /.netlify/functions/gateway/…, against real PostgreSQL. A forward signed with the shared secret
 * writes; an unsigned one gets 401 and writes nothing.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildNetlifyFunction } from '../../src/local/build.js';
import { createForwardSigner } from '../../src/security/forward-signature.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { startTestGateway, waitFor } from '../helpers/gateway.js';

const SECRET = 'netlify-function-test-secret-0123456789abcdef';
const BASE = 'http://site.example/.netlify/functions/gateway';

let db: TestDatabase;
let dir: string;
let gateway: (req: Request) => Promise<Response>;
let userId: string;

beforeAll(async () => {
  db = await createTestDatabase();
  // Migrations are a deploy step, not the function's: run them with the gateway once.
  const migrator = await startTestGateway({}, { db });
  const u = await fetch(`${migrator.url}/api/users`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: `fn-${Date.now()}@example.com`, name: 'Fn' }),
  });
  userId = ((await u.json()) as { id: string }).id;
  await migrator.stop();

  dir = await mkdtemp(join(tmpdir(), 'poolgate-fn-'));
  const bundle = await buildNetlifyFunction(join(dir, 'gateway.mjs'));
  Object.assign(process.env, {
    DATABASE_URL: db.url,
    FORWARD_SECRET: SECRET,
    POOL_MAX: '2',
    POOL_MIN: '0',
    LOG_LEVEL: 'silent',
    IDEMPOTENCY_PURGE_INTERVAL_MS: '1000',
  });
  gateway = (await import(pathToFileURL(bundle).href)).default;
});

afterAll(async () => {
  for (const k of ['DATABASE_URL', 'FORWARD_SECRET', 'POOL_MAX', 'POOL_MIN', 'LOG_LEVEL', 'IDEMPOTENCY_PURGE_INTERVAL_MS'])
    delete process.env[k];
  await rm(dir, { recursive: true, force: true });
  await db?.drop();
});

const count = async () => Number((await db.admin('SELECT count(*) FROM workouts WHERE user_id = $1', [userId])).rows[0].count);

describe('Netlify Node function bundle', () => {
  it('runs a signed forward on its pg Pool under /.netlify/functions/gateway', async () => {
    const body = new TextEncoder().encode(
      JSON.stringify({ userId, kind: 'swim', startedAt: '2026-11-20T06:00:00Z', sets: [{ exercise: 'laps', reps: 20 }] }),
    );
    const sign = createForwardSigner(SECRET);
    const res = await gateway(
      new Request(`${BASE}/api/workouts`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'x-poolgate-signature': await sign({ method: 'POST', pathWithQuery: '/api/workouts', body }),
        },
        body,
      }),
    );
    expect(res.status).toBe(201);
    const json = (await res.json()) as { kind: string; sets: unknown[] };
    expect(json.kind).toBe('swim');
    expect(json.sets).toHaveLength(1);
    expect(res.headers.get('server-timing')).toContain('pg-pool');
    expect(await count()).toBe(1);
  });

  it('refuses an unsigned request with 401 and writes nothing', async () => {
    const before = await count();
    const res = await gateway(
      new Request(`${BASE}/api/workouts`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ userId, kind: 'swim', startedAt: '2026-11-20T06:00:00Z', sets: [] }),
      }),
    );
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
    expect(await count()).toBe(before);
  });

  it('answers health without a signature', async () => {
    const res = await gateway(new Request(`${BASE}/health`));
    expect(res.status).toBe(200);
  });

  // Netlify serves a function without config.path at /.netlify/functions/<file name>, sub-paths
  // included: whatever the user names the file, the edge's forwards must reach the app's routes.
  it('routes the sub-paths of /.netlify/functions/<name> whatever the function file is named', async () => {
    for (const name of ['gateway', 'api', 'notes-gateway']) {
      const res = await gateway(new Request(`http://site.example/.netlify/functions/${name}/health`));
      expect(res.status, name).toBe(200);
    }
    const unknown = await gateway(new Request(`${BASE}/nothing-here`));
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: { code: string } }).error.code).toBe('route_not_found');
  });

  it('purges expired idempotency records when an invocation finds a purge due (no timer between invocations)', async () => {
    await db.admin(
      `INSERT INTO poolgate_idempotency_keys (key, request_hash, status, body, expires_at) VALUES
         ('fn-purge-old', 'h', 201, NULL, now() - interval '1 minute'),
         ('fn-purge-live', 'h', 201, NULL, now() + interval '1 hour')`,
    );
    const keys = async (key: string) =>
      Number((await db.admin('SELECT count(*) FROM poolgate_idempotency_keys WHERE key = $1', [key])).rows[0].count);
    await new Promise((r) => setTimeout(r, 1_100)); // the purge interval passes with no invocation: nothing runs
    expect(await keys('fn-purge-old')).toBe(1);
    await gateway(new Request(`${BASE}/health`));
    await waitFor(async () => (await keys('fn-purge-old')) === 0, { timeoutMs: 5_000, what: 'the due purge to delete the expired record' });
    expect(await keys('fn-purge-live')).toBe(1);
  });
});
