/**
 * Replay protection at the seams between instances (issue 10, cases 1 and 2), on real processes'
 * worth of state: two Node gateways on one database with one FORWARD_SECRET (how Netlify scales
 * the function), and a restart. One captured signed write must apply exactly once wherever and
 * whenever it is replayed; a flood of signed junk must not lock legitimate writes out.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createForwardSigner, SIGNATURE_HEADER } from '../../src/security/forward-signature.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';

const SECRET = 'replay-test-secret-0123456789abcdefghijkl';
const enc = new TextEncoder();
const sign = createForwardSigner(SECRET);
const ENV = { FORWARD_SECRET: SECRET, POOLGATE_ENV: '' };

let db: TestDatabase;
let a: TestGateway;
let b: TestGateway;
let userId: string;

/** Sends exactly these bytes with exactly this signature (what an attacker who captured them would do). */
const send = (base: string, path: string, body: string, signature: string, extra: Record<string, string> = {}) =>
  fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', [SIGNATURE_HEADER]: signature, ...extra },
    body,
  });

const workouts = async (kind: string) =>
  Number((await db.admin('SELECT count(*) FROM workouts WHERE user_id = $1 AND kind = $2', [userId, kind])).rows[0].count);

beforeAll(async () => {
  db = await createTestDatabase('poolgate_replay');
  a = await startTestGateway(ENV, { db });
  b = await startTestGateway(ENV, { db });
  const body = JSON.stringify({ email: `replay-${randomUUID()}@example.com`, name: 'Replay' });
  const res = await send(a.url, '/api/users', body, await sign({ method: 'POST', pathWithQuery: '/api/users', body: enc.encode(body) }));
  expect(res.status).toBe(201);
  userId = ((await res.json()) as { id: string }).id;
}, 60_000);

afterAll(async () => {
  await a?.stop();
  await b?.stop();
  await db?.drop();
});

describe('a captured signed forward applies exactly once', () => {
  it('replayed to the same instance, a second instance, and the first after a restart: 201 once, then 401', async () => {
    const body = JSON.stringify({ userId, kind: 'replayed-run', startedAt: '2026-11-29T07:00:00Z', sets: [] });
    const signature = await sign({ method: 'POST', pathWithQuery: '/api/workouts', body: enc.encode(body) });
    expect((await send(a.url, '/api/workouts', body, signature)).status).toBe(201);
    expect((await send(a.url, '/api/workouts', body, signature)).status).toBe(401);
    expect((await send(b.url, '/api/workouts', body, signature)).status).toBe(401);
    await a.stop();
    a = await startTestGateway(ENV, { db });
    expect((await send(a.url, '/api/workouts', body, signature)).status).toBe(401);
    expect(await workouts('replayed-run')).toBe(1);
  });

  it('the same captured forward sent to both instances at once: one 201, one 401', async () => {
    const body = JSON.stringify({ userId, kind: 'twin-run', startedAt: '2026-11-29T08:00:00Z', sets: [] });
    const signature = await sign({ method: 'POST', pathWithQuery: '/api/workouts', body: enc.encode(body) });
    const statuses = (await Promise.all([a.url, b.url].map((base) => send(base, '/api/workouts', body, signature)))).map((r) => r.status);
    expect(statuses.sort()).toEqual([201, 401]);
    expect(await workouts('twin-run')).toBe(1);
  });

  it('the Idempotency-Key is signed: a replay with another key is refused, not applied again', async () => {
    const body = JSON.stringify({ userId, kind: 'keyed-run', startedAt: '2026-11-29T09:00:00Z', sets: [] });
    const signature = await sign({ method: 'POST', pathWithQuery: '/api/workouts', body: enc.encode(body), idempotencyKey: 'k-1' });
    expect((await send(a.url, '/api/workouts', body, signature, { 'idempotency-key': 'k-1' })).status).toBe(201);
    expect((await send(b.url, '/api/workouts', body, signature, { 'idempotency-key': 'k-2' })).status).toBe(401);
    expect((await send(b.url, '/api/workouts', body, signature)).status).toBe(401);
    expect(await workouts('keyed-run')).toBe(1);
  });

  it('an idempotency key is scoped to its route: the same key on another route is another request', async () => {
    const key = `scoped-${randomUUID()}`;
    const post = async (path: string, body: string) =>
      send(a.url, path, body, await sign({ method: 'POST', pathWithQuery: path, body: enc.encode(body), idempotencyKey: key }), {
        'idempotency-key': key,
      });
    const workout = JSON.stringify({ userId, kind: 'scoped-run', startedAt: '2026-11-29T10:00:00Z', sets: [] });
    const user = JSON.stringify({ email: `scoped-${randomUUID()}@example.com`, name: 'Scoped' });
    expect((await post('/api/workouts', workout)).status).toBe(201);
    expect((await post('/api/users', user)).status).toBe(201); // not 422 idempotency_key_reused
  });
});

describe('a flood of signed junk', () => {
  it('leaves legitimate writes at 2xx and records nothing for the junk', async () => {
    const junk = '{}';
    const started = Date.now();
    const flood = 3_000;
    for (let i = 0; i < flood; i += 100) {
      const batch = await Promise.all(
        Array.from({ length: 100 }, async () =>
          send(
            i % 200 === 0 ? a.url : b.url,
            '/api/workouts',
            junk,
            await sign({ method: 'POST', pathWithQuery: '/api/workouts', body: enc.encode(junk) }),
          ),
        ),
      );
      for (const r of batch) expect(r.status).toBe(400);
    }
    console.log(`[replay] ${flood} signed junk forwards answered 400 in ${Date.now() - started} ms`);
    const body = JSON.stringify({ userId, kind: 'after-flood', startedAt: '2026-11-29T11:00:00Z', sets: [] });
    for (const base of [a.url, b.url]) {
      const res = await send(
        base,
        '/api/workouts',
        body,
        await sign({ method: 'POST', pathWithQuery: '/api/workouts', body: enc.encode(body) }),
      );
      expect(res.status).toBe(201);
    }
    // Junk never reached a transaction, so it left no nonce behind: nothing grows with a flood.
    const nonces = Number((await db.admin('SELECT count(*) FROM poolgate_forward_nonces')).rows[0].count);
    expect(nonces).toBeLessThan(20);
  }, 120_000);
});
