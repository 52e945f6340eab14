/**
 * Attacks on the edge → Node signature, against a gateway started with FORWARD_SECRET: unsigned,
 * malformed, signed with the wrong key, tampered body, path, query or method, stale (more than
 * 300 s old, or as far in the future), and a replay of a request that was accepted once. Every
 * one gets the same 401 JSON (only the request id differs), and none runs a statement: row
 * counts, the pool's acquisitions and the per-route query counts in /stats do not move.
 * Runs on real PostgreSQL and on the embedded fallback.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createForwardSigner, SIGNATURE_HEADER } from '../../src/security/forward-signature.js';
import { json, leaksIn, seenResponses, startTestGateway, type JsonResponse, type TestGateway } from '../helpers/gateway.js';

const SECRET = 'forward-secret-for-the-attack-suite-0123456789';
const sign = createForwardSigner(SECRET);
const OPS_TOKEN = 'ops-token-for-the-signature-suite-0123';
const wrongKey = createForwardSigner('another-secret-of-the-same-length-0123456789ab');
const enc = new TextEncoder();

describe('forwarded-request signature attacks', () => {
  let t: TestGateway;
  let userId: string;

  const send = async (
    method: string,
    path: string,
    body: string | undefined,
    signature: string | undefined,
    headers: Record<string, string> = {},
  ): Promise<JsonResponse> =>
    json(`${t.url}${path}`, {
      method,
      headers: {
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(signature ? { [SIGNATURE_HEADER]: signature } : {}),
        ...headers,
      },
      body,
    });

  const signed = async (method: string, path: string, body?: string) =>
    send(method, path, body, await sign({ method, pathWithQuery: path, body: enc.encode(body ?? '') }));

  beforeAll(async () => {
    t = await startTestGateway({ FORWARD_SECRET: SECRET, POOLGATE_ENV: '', OPS_TOKEN });
    const res = await signed('POST', '/api/users', JSON.stringify({ email: `sig-${randomUUID()}@example.com`, name: 'Sig' }));
    expect(res.status).toBe(201);
    userId = res.body.id;
  });

  afterAll(async () => {
    await t?.stop();
  });

  const counts = async () => {
    const { rows } = await t.db.admin(
      'SELECT (SELECT count(*)::int FROM users) AS users, (SELECT count(*)::int FROM workouts) AS workouts, (SELECT count(*)::int FROM poolgate_idempotency_keys) AS keys',
    );
    const stats = (await json(`${t.url}/stats`, { headers: { authorization: `Bearer ${OPS_TOKEN}` } })).body;
    const queries = stats.routes
      .filter((r: { route: string }) => r.route.startsWith('/api/'))
      .reduce((n: number, r: { queries: { sum: number } }) => n + r.queries.sum, 0);
    return { ...rows[0], queries, acquisitions: stats.pool.acquisitionCount as number };
  };

  it('every tampered, stale, unsigned or replayed request gets the same 401; only a replay reaches the database, to be refused by its nonce', async () => {
    const path = '/api/workouts';
    const body = JSON.stringify({ userId, kind: 'attack', startedAt: '2026-11-27T07:00:00Z', sets: [{ exercise: 'squat', reps: 5 }] });
    const now = Math.floor(Date.now() / 1000);

    // A request that is accepted once, to be replayed below.
    const replayable = await sign({ method: 'POST', pathWithQuery: path, body: enc.encode(body) });
    const first = await send('POST', path, body, replayable);
    expect(first.status).toBe(201);

    const before = await counts();
    const attacks: Record<string, () => Promise<JsonResponse>> = {
      unsigned: () => send('POST', path, body, undefined),
      'empty header': () => send('POST', path, body, undefined, { [SIGNATURE_HEADER]: '' }),
      malformed: () => send('POST', path, body, 't=abc,n=zz,v1=???'),
      'wrong key': async () => send('POST', path, body, await wrongKey({ method: 'POST', pathWithQuery: path, body: enc.encode(body) })),
      'tampered body': async () =>
        send('POST', path, body.replace('attack', 'attacc'), await sign({ method: 'POST', pathWithQuery: path, body: enc.encode(body) })),
      'tampered path': async () =>
        send(
          'POST',
          '/api/users',
          JSON.stringify({ email: `x-${randomUUID()}@example.com`, name: 'X' }),
          await sign({ method: 'POST', pathWithQuery: path, body: enc.encode(body) }),
        ),
      'tampered query': async () =>
        send(
          'GET',
          `/api/users/${userId}/workouts?limit=100`,
          undefined,
          await sign({ method: 'GET', pathWithQuery: `/api/users/${userId}/workouts?limit=1`, body: new Uint8Array() }),
        ),
      'tampered method': async () =>
        send(
          'DELETE',
          `/api/workouts/${first.body.id}`,
          undefined,
          await sign({ method: 'GET', pathWithQuery: `/api/workouts/${first.body.id}`, body: new Uint8Array() }),
        ),
      'stale (301 s old)': async () =>
        send('POST', path, body, await sign({ method: 'POST', pathWithQuery: path, body: enc.encode(body), timestampSec: now - 301 })),
      'stale (1 h old)': async () =>
        send('POST', path, body, await sign({ method: 'POST', pathWithQuery: path, body: enc.encode(body), timestampSec: now - 3600 })),
      'from the future (310 s ahead)': async () =>
        send('POST', path, body, await sign({ method: 'POST', pathWithQuery: path, body: enc.encode(body), timestampSec: now + 310 })),
      'replayed with an Idempotency-Key added': () => send('POST', path, body, replayable, { 'idempotency-key': `attack-${randomUUID()}` }),
      'read, unsigned': () => send('GET', `/api/users/${userId}`, undefined, undefined),
    };

    const answers: Record<string, JsonResponse> = {};
    for (const [name, attack] of Object.entries(attacks)) answers[name] = await attack();
    const after = await counts();
    // A replay's signature is valid: its nonce, recorded with the first request's rows, refuses it
    // inside a transaction that writes nothing.
    answers.replayed = await send('POST', path, body, replayable);
    const afterReplay = await counts();
    console.log(
      `[forward-signature] ${Object.keys(attacks).length} attacks → ${JSON.stringify(Object.fromEntries(Object.entries(answers).map(([k, r]) => [k, r.status])))}; before ${JSON.stringify(before)} after ${JSON.stringify(after)}`,
    );

    const shape = (r: JsonResponse) =>
      JSON.stringify({
        status: r.status,
        type: r.headers.get('content-type'),
        code: r.body?.error?.code,
        message: r.body?.error?.message,
        keys: Object.keys(r.body?.error ?? {}),
      });
    const expected = shape(answers.unsigned!);
    for (const [name, r] of Object.entries(answers)) {
      expect(r.status, name).toBe(401);
      expect(r.body.error, name).toMatchObject({ code: 'unauthorized', requestId: expect.any(String) });
      expect(shape(r), name).toBe(expected); // the same answer, whichever check failed
    }
    expect(after).toEqual(before); // no rows, no connection taken, no statement counted
    expect({ ...afterReplay, queries: 0, acquisitions: 0 }).toEqual({ ...before, queries: 0, acquisitions: 0 }); // no rows
  });

  it('a correctly signed request still works afterwards (the attacks did not poison the nonce store)', async () => {
    const res = await signed('GET', `/api/users/${userId}`);
    expect(res.status).toBe(200);
  });

  it('no response leaked internals', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, t.db))).toEqual([]);
  });
});
