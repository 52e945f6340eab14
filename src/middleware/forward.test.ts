/**
 * The edge's signed forwarding of transactional routes, in milliseconds: the real app with
 * `transactional: forwardTo(...)` and a fake `fetch` standing in for the Node function (or the
 * real Node-side app, in process, behind verifyForward). No socket, no database.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import { createApp } from '../app.js';
import type { Session, SessionConnector } from '../db/core/connector.js';
import { createDatabase } from '../db/core/database.js';
import type { QueryResult } from '../db/types.js';
import { jsonBody, takeBody } from '../routes/input.js';
import type { RouteSpec } from '../routes/types.js';
import { createForwardVerifier, SIGNATURE_HEADER, type VerifyResult } from '../security/forward-signature.js';
import { StatsRegistry } from '../stats/registry.js';
import { forwardTo } from './forward.js';
import { verifyForward } from './verify-forward.js';

const SECRET = 'a-test-secret-that-is-long-enough-0123456789';
const BASE = 'https://node.test/.netlify/functions/gateway';
const BASE_PATH = new URL(BASE).pathname;

/** Sessions that answer the few statements the test routes send; counts what ran. */
function tinyConnector() {
  const statements: string[] = [];
  const nonces = new Set<unknown>();
  const session: Session = {
    query: (text, params = []): Promise<QueryResult> => {
      statements.push(text);
      if (text.startsWith('INSERT INTO poolgate_forward_nonces')) {
        const fresh = !nonces.has(params[0]);
        nonces.add(params[0]);
        return Promise.resolve({ rows: [], rowCount: fresh ? 1 : 0 });
      }
      if (text.startsWith('INSERT INTO things')) return Promise.resolve({ rows: [{ id: params[0], name: params[1] }], rowCount: 1 });
      if (text.startsWith('SELECT id, name FROM things')) return Promise.resolve({ rows: [{ id: params[0], name: 'local' }], rowCount: 1 });
      return Promise.resolve({ rows: [], rowCount: 0 });
    },
    begin: () => session.query('BEGIN').then(() => undefined),
    commit: () => session.query('COMMIT'),
    rollback: () => session.query('ROLLBACK').then(() => undefined),
    cancel: () => {},
    release: () => {},
  };
  const connector: SessionConnector = {
    kind: 'pg-pool',
    upstream: 'fake-postgres',
    source: () => ({ acquire: () => Promise.resolve({ session, opened: false }) }),
    close: () => Promise.resolve(),
  };
  return { connector, statements };
}

function routeTable() {
  const ran = { create: 0, read: 0, bodies: [] as string[] };
  const routes: RouteSpec[] = [
    {
      method: 'POST',
      path: '/api/things',
      kind: 'transactional',
      run: (c, db) =>
        db.transaction(async (tx) => {
          ran.create++;
          ran.bodies.push(new TextDecoder().decode(await takeBody(c)));
          const input = await jsonBody(c, z.object({ id: z.string(), name: z.string() }));
          const { rows } = await tx.query('INSERT INTO things (id, name) VALUES ($1, $2)', [input.id, input.name]);
          return { status: 201, body: rows[0] };
        }),
    },
    {
      method: 'GET',
      path: '/api/things/:id',
      kind: 'read',
      run: async (c, db) => {
        ran.read++;
        const { rows } = await db.query('SELECT id, name FROM things WHERE id = $1', [c.req.param('id')]);
        return { status: 200, body: rows[0] };
      },
    },
  ];
  return { routes, ran };
}

interface Sent {
  url: string;
  method: string;
  headers: Headers;
  body: Uint8Array;
  signal: AbortSignal;
  /** The signature, checked as the Node side checks it. */
  verdict: VerifyResult;
}

type FetchInput = string | URL | Request;
const urlOf = (input: FetchInput) => (input instanceof Request ? input.url : input.toString());

/** A fake `fetch` that records and verifies each forward, then answers with `answer`. */
function fakeNode(answer: (sent: Sent, attempt: number) => Promise<Response>) {
  const verify = createForwardVerifier({ secret: SECRET });
  const sent: Sent[] = [];
  const fetch = async (input: FetchInput, init: RequestInit = {}): Promise<Response> => {
    const url = new URL(urlOf(input));
    const headers = new Headers(init.headers);
    const body = init.body === undefined || init.body === null ? new Uint8Array() : (init.body as Uint8Array).slice();
    const method = init.method ?? 'GET';
    const pathWithQuery = url.pathname.slice(BASE_PATH.length) + url.search;
    const verdict = await verify({
      method,
      pathWithQuery,
      header: headers.get(SIGNATURE_HEADER),
      idempotencyKey: headers.get('idempotency-key') ?? undefined,
      body,
    });
    const s: Sent = { url: url.href, method, headers, body, signal: init.signal!, verdict };
    sent.push(s);
    return answer(s, sent.length);
  };
  return { fetch, sent };
}

/** A fetch that never answers, but (like a real one) rejects when its signal aborts. */
const never = (s: Sent) =>
  new Promise<Response>((_, reject) => {
    if (s.signal.aborted) reject(s.signal.reason as Error);
    s.signal.addEventListener('abort', () => reject(s.signal.reason as Error), { once: true });
  });

const refusedError = () =>
  new TypeError('fetch failed', { cause: Object.assign(new Error('connect ECONNREFUSED 10.0.0.1:443'), { code: 'ECONNREFUSED' }) });

function edge(
  fetch: (input: FetchInput, init?: RequestInit) => Promise<Response>,
  opts: { timeoutMs?: number; neverSent?: (err: unknown) => boolean } = {},
) {
  const { connector, statements } = tinyConnector();
  const { routes, ran } = routeTable();
  const registry = new StatsRegistry({ scope: 'edge-test' });
  const app = createApp({
    routes,
    database: createDatabase({ sessions: connector }),
    registry,
    bodyLimitBytes: 1024,
    transactional: forwardTo({
      targetUrl: `${BASE}/`,
      secret: SECRET,
      timeoutMs: opts.timeoutMs ?? 2_000,
      fetch,
      neverSent: opts.neverSent,
    }),
  });
  const post = (body: string | Uint8Array, headers: Record<string, string> = {}, path = '/api/things') =>
    app.request(path, { method: 'POST', body: body as BodyInit, headers: { 'content-type': 'application/json', ...headers } });
  const routeStats = async () =>
    ((await (await app.request('/stats')).json()) as { routes: any[] }).routes.find(
      (r) => r.method === 'POST' && r.route === '/api/things',
    );
  return { app, post, ran, statements, routeStats };
}

const errorOf = async (res: Response) => ((await res.json()) as { error: { code: string } }).error;
const created = () => Response.json({ id: 'f', name: 'F' }, { status: 201 });

/** Each test takes milliseconds; a regression that leaves a fake statement or fetch hanging fails fast, not at the suite's 60 s. */
const FAST = { timeout: 2_000 };

beforeEach(() => {
  vi.spyOn(Math, 'random').mockReturnValue(0); // retry backoff: none
});
afterEach(() => {
  vi.restoreAllMocks();
});

describe('forwardTo: what travels to the Node function', FAST, () => {
  it('a signed request with the exact body bytes, the idempotency key and the request id; nothing else of the caller', async () => {
    const node = fakeNode(() => Promise.resolve(created()));
    const e = edge(node.fetch);
    const bytes = new TextEncoder().encode('{"id":"f",   "name":"Zoë ☃"}\n');
    const res = await e.post(
      bytes,
      { 'idempotency-key': 'fwd-1', 'x-request-id': 'edge-req-1', authorization: 'Bearer caller' },
      '/api/things?src=t',
    );
    expect(res.status).toBe(201);

    expect(node.sent).toHaveLength(1);
    const [s] = node.sent;
    expect(s!.verdict).toMatchObject({ ok: true });
    expect(s!.url).toBe(`${BASE}/api/things?src=t`);
    expect(s!.method).toBe('POST');
    expect(Array.from(s!.body)).toEqual(Array.from(bytes));
    expect(s!.headers.get('idempotency-key')).toBe('fwd-1');
    expect(s!.headers.get('x-request-id')).toBe('edge-req-1');
    expect(s!.headers.get('content-type')).toBe('application/json');
    expect(s!.headers.get('authorization')).toBeNull();
    // The route did not run here, and no database work happened at the edge.
    expect(e.ran.create).toBe(0);
    expect(e.statements).toHaveLength(0);
  });

  it('a tampered body or path would not verify (the fake checks what the Node side checks)', async () => {
    const node = fakeNode(() => Promise.resolve(created()));
    const e = edge(node.fetch);
    await e.post('{"id":"f","name":"F"}');
    const s = node.sent[0]!;
    const verify = createForwardVerifier({ secret: SECRET });
    const header = s.headers.get(SIGNATURE_HEADER);
    const other = new TextEncoder().encode('{"id":"g","name":"F"}');
    expect(await verify({ method: 'POST', pathWithQuery: '/api/things', header, body: other })).toMatchObject({ ok: false });
    expect(await verify({ method: 'POST', pathWithQuery: '/api/thing', header, body: s.body })).toMatchObject({ ok: false });
    expect(await verify({ method: 'POST', pathWithQuery: '/api/things', header, body: s.body })).toMatchObject({ ok: true });
  });

  it("the Node side's answer comes back as is, with its Server-Timing renamed node-*", async () => {
    const node = fakeNode(() =>
      Promise.resolve(
        new Response('{"id":"f","name":"F"}', {
          status: 201,
          headers: {
            'content-type': 'application/json',
            'server-timing': 'acquire;dur=0.25, db;dur=1.50;desc="pg-pool 3q", total;dur=2.00',
            'x-request-id': 'node-side-id',
            'x-extra': 'kept',
            // Hop-by-hop and framing headers of the Node hop must not leak into the edge's answer.
            connection: 'keep-alive',
            'keep-alive': 'timeout=5',
            'transfer-encoding': 'chunked',
            'content-length': '999',
          },
        }),
      ),
    );
    const e = edge(node.fetch);
    const res = await e.post('{"id":"f","name":"F"}', { 'x-request-id': 'edge-req-2' });
    expect(res.status).toBe(201);
    expect(await res.text()).toBe('{"id":"f","name":"F"}');
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(res.headers.get('x-extra')).toBe('kept');
    for (const name of ['connection', 'keep-alive', 'transfer-encoding', 'content-length']) expect(res.headers.get(name), name).toBeNull();
    expect(res.headers.get('x-request-id')).toBe('edge-req-2');
    const timing = res.headers.get('server-timing')!;
    expect(timing).toMatch(/^forward;dur=\d+\.\d\d, acquire;dur=0\.00, db;dur=0\.00;desc="forwarded 0q", total;dur=\d+\.\d\d, /);
    expect(timing.endsWith(', node-acquire;dur=0.25, node-db;dur=1.50;desc="pg-pool 3q", node-total;dur=2.00')).toBe(true);
    expect(await e.routeStats()).toMatchObject({ count: 1, clients: { forwarded: 1 }, statusClasses: { '2xx': 1 } });
  });

  it("the Node side's consistency token and every one of its cookies come back (the application's own, and the token's)", async () => {
    const headers = new Headers({ 'content-type': 'application/json', 'poolgate-consistency': 'lsn=0/3000060' });
    headers.append('set-cookie', 'session=abc; Path=/; HttpOnly');
    headers.append('set-cookie', 'poolgate_consistency=lsn%3D0%2F3000060; Path=/; Max-Age=300; HttpOnly; SameSite=Lax');
    const node = fakeNode(() => Promise.resolve(new Response('{"id":"f","name":"F"}', { status: 201, headers })));
    const res = await edge(node.fetch).post('{"id":"f","name":"F"}');
    expect(res.status).toBe(201);
    expect(res.headers.get('poolgate-consistency')).toBe('lsn=0/3000060');
    expect(res.headers.getSetCookie()).toEqual([
      'session=abc; Path=/; HttpOnly',
      'poolgate_consistency=lsn%3D0%2F3000060; Path=/; Max-Age=300; HttpOnly; SameSite=Lax',
    ]);
  });

  it("the Node side's errors and empty answers pass through unchanged", async () => {
    const answers = [
      Response.json({ error: { code: 'conflict', message: 'dup', requestId: 'r' } }, { status: 409 }),
      new Response(null, { status: 204 }),
    ];
    const node = fakeNode(() => Promise.resolve(answers.shift()!));
    const e = edge(node.fetch);
    const conflict = await e.post('{"id":"f","name":"F"}');
    expect(conflict.status).toBe(409);
    expect(await conflict.json()).toEqual({ error: { code: 'conflict', message: 'dup', requestId: 'r' } });
    const empty = await e.post('{"id":"f","name":"F"}');
    expect(empty.status).toBe(204);
    expect(await empty.text()).toBe('');
  });

  it('read routes run at the edge, not forwarded', async () => {
    const node = fakeNode(() => Promise.resolve(created()));
    const e = edge(node.fetch);
    const res = await e.app.request('/api/things/x');
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ id: 'x', name: 'local' });
    expect(node.sent).toHaveLength(0);
    expect(e.ran.read).toBe(1);
  });
});

describe('forwardTo: failures, and when a forward is sent again', FAST, () => {
  it('a fetch that rejects → 503 upstream_unavailable + Retry-After, sent once without a key', async () => {
    const node = fakeNode(() => Promise.reject(refusedError()));
    const e = edge(node.fetch);
    const res = await e.post('{"id":"f","name":"F"}');
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('2');
    expect(await errorOf(res)).toMatchObject({ code: 'upstream_unavailable' });
    expect(node.sent).toHaveLength(1);
  });

  it('with an Idempotency-Key it is sent again once, freshly signed', async () => {
    const node = fakeNode(() => Promise.reject(refusedError()));
    const e = edge(node.fetch);
    const res = await e.post('{"id":"f","name":"F"}', { 'idempotency-key': 'k-1' });
    expect(res.status).toBe(503);
    expect((await errorOf(res)).code).toBe('upstream_unavailable');
    expect(node.sent).toHaveLength(2);
    const [first, second] = node.sent.map((s) => s.verdict);
    expect(first).toMatchObject({ ok: true });
    expect(second).toMatchObject({ ok: true });
    expect(first).not.toEqual(second); // a new nonce each time
    expect(node.sent[0]!.headers.get(SIGNATURE_HEADER)).not.toBe(node.sent[1]!.headers.get(SIGNATURE_HEADER));
    expect(node.sent.map((s) => s.headers.get('idempotency-key'))).toEqual(['k-1', 'k-1']);
  });

  it('with an Idempotency-Key, a second attempt that is answered wins', async () => {
    const node = fakeNode((_s, attempt) => (attempt === 1 ? Promise.reject(refusedError()) : Promise.resolve(created())));
    const e = edge(node.fetch);
    const res = await e.post('{"id":"f","name":"F"}', { 'idempotency-key': 'k-2' });
    expect(res.status).toBe(201);
    expect(node.sent).toHaveLength(2);
    expect(await e.routeStats()).toMatchObject({ retryCount: 1, statusClasses: { '2xx': 1 } });
  });

  it("without a key it is sent again only when neverSent(err) says so, and neverSent sees the fetch's own error", async () => {
    const thrown: unknown[] = [];
    const node = fakeNode(() => {
      const err = refusedError();
      thrown.push(err);
      return Promise.reject(err);
    });
    const seen: unknown[] = [];
    const yes = edge(node.fetch, { neverSent: (err) => (seen.push(err), true) });
    expect((await yes.post('{"id":"f","name":"F"}')).status).toBe(503);
    expect(node.sent).toHaveLength(2);
    expect(seen[0]).toBe(thrown[0]);

    node.sent.length = 0;
    const no = edge(node.fetch, { neverSent: () => false });
    expect((await no.post('{"id":"f","name":"F"}')).status).toBe(503);
    expect(node.sent).toHaveLength(1);
  });

  it('a fetch that never answers → 504 upstream_timeout after timeoutMs, aborted, not resent (key or not)', async () => {
    for (const headers of [{}, { 'idempotency-key': 'k-3' }] as Record<string, string>[]) {
      const node = fakeNode(never);
      const e = edge(node.fetch, { timeoutMs: 50, neverSent: () => true });
      const started = performance.now();
      const res = await e.post('{"id":"f","name":"F"}', headers);
      const took = performance.now() - started;
      expect(res.status).toBe(504);
      expect((await errorOf(res)).code).toBe('upstream_timeout');
      expect(took).toBeGreaterThanOrEqual(45); // it waited for timeoutMs; the fetch alone would never end
      expect(node.sent).toHaveLength(1);
      expect(node.sent[0]!.signal.aborted).toBe(true);
    }
  });

  it('a client that leaves aborts the forward → 499, the fetch aborted, not resent', async () => {
    const node = fakeNode(never);
    const e = edge(node.fetch, { neverSent: () => true });
    const controller = new AbortController();
    const pending = e.app.request(
      new Request('http://localhost/api/things', {
        method: 'POST',
        body: '{"id":"f","name":"F"}',
        headers: { 'content-type': 'application/json', 'idempotency-key': 'k-4' },
        signal: controller.signal,
      }),
    );
    await vi.waitFor(() => expect(node.sent).toHaveLength(1), { timeout: 500, interval: 1 });
    controller.abort();
    const res = await pending;
    expect(res.status).toBe(499);
    expect(node.sent[0]!.signal.aborted).toBe(true);
    expect(node.sent).toHaveLength(1);
  });

  it('an oversized body is refused at the edge (413) and never forwarded', async () => {
    const node = fakeNode(() => Promise.resolve(created()));
    const e = edge(node.fetch);
    const res = await e.post(JSON.stringify({ id: 'f', name: 'x'.repeat(2_000) }));
    expect(res.status).toBe(413);
    expect(node.sent).toHaveLength(0);
  });
});

describe('edge → Node in process: forwardTo against verifyForward', FAST, () => {
  function nodeSide() {
    const { connector, statements } = tinyConnector();
    const { routes, ran } = routeTable();
    const rejected: string[] = [];
    const app = createApp({
      routes,
      database: createDatabase({ sessions: connector }),
      registry: new StatsRegistry({ scope: 'node-test' }),
      bodyLimitBytes: 1024,
      verify: verifyForward({ secret: SECRET, onReject: (reason) => rejected.push(reason) }),
    });
    return { app, ran, rejected, statements };
  }

  it('a forwarded request is accepted and run on the Node side; copies, tampering and unsigned calls are 401', async () => {
    const node = nodeSide();
    const captured: { url: string; init: RequestInit }[] = [];
    const fetch = async (input: FetchInput, init: RequestInit = {}) => {
      captured.push({ url: urlOf(input), init: { ...init, headers: new Headers(init.headers) } });
      return node.app.request(urlOf(input).replace(BASE, 'http://node.test'), init);
    };
    const e = edge(fetch);
    const text = '{"id":"n1",  "name":"Zoë"}';
    const res = await e.post(text, { 'x-request-id': 'e2e-1' });
    expect(res.status).toBe(201);
    expect(await res.json()).toEqual({ id: 'n1', name: 'Zoë' });
    expect(node.ran.bodies).toEqual([text]);
    expect(res.headers.get('server-timing')).toMatch(
      /, node-acquire;dur=[\d.]+, node-db;dur=[\d.]+;desc="pg-pool 4q", node-total;dur=[\d.]+$/,
    );
    expect(node.rejected).toEqual([]);

    const { url, init } = captured[0]!;
    const direct = (body: BodyInit | undefined, headers: Headers) =>
      node.app.request(url.replace(BASE, 'http://node.test'), { method: 'POST', body, headers });
    const signed = init.headers as Headers;
    const copy = await direct(init.body as BodyInit, signed);
    expect(copy.status).toBe(401);
    expect((await errorOf(copy)).code).toBe('unauthorized');
    expect((await direct('{"id":"n1",  "name":"Eve"}', signed)).status).toBe(401);
    const unsigned = new Headers(signed);
    unsigned.delete(SIGNATURE_HEADER);
    expect((await direct(text, unsigned)).status).toBe(401);
    // The copy's signature is valid: its nonce, already recorded with the first request's work, refuses it.
    expect(node.rejected).toEqual(['bad_signature', 'missing']);
    expect(node.ran.create).toBe(1);
    expect(node.statements.filter((s) => s.startsWith('INSERT INTO things'))).toHaveLength(1);
  });
});
