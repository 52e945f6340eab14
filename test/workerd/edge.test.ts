/**
 * The edge app in real workerd (miniflare running the esbuild bundle of src/fitness/entries/worker.ts),
 * against a real Node gateway, the local Neon proxy and a database of this suite's own: reads
 * over Neon HTTP and WebSocket, signed forwarding of writes (and what the Node side refuses),
 * concurrency, the per-request WebSocket pool, isolate stats, and the failure answers for an
 * unreachable Node function and a misconfigured worker.
 *
 * One workerd process runs several workers built from the same bundle, each with its own
 * bindings (and so its own isolate and app): "edge" is the healthy one; the others point at a
 * closed port (for the Node function, or for the Neon endpoint: "neon-down"), at a recorder that
 * keeps what the edge sent, or lack a usable FORWARD_SECRET.
 */
import { randomUUID } from 'node:crypto';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workerdWorker, type WorkerdWorker } from '../../src/local/workerd.js';
import { waitFor } from '../helpers/gateway.js';
import {
  closedPortUrl,
  countRows,
  dbDescOf,
  insertAthlete,
  startEdgeStack,
  workoutBody,
  type Athlete,
  type EdgeStack,
} from '../helpers/edge.js';

const REQUEST_TIMEOUT_MS = 20_000;
const MISCONFIGURED_PASSWORD = 'pw-must-never-show';
const SHORT_SECRET = 'tooShortForwardSecret';
/** The "neon-down" worker's request deadline (REQUEST_TIMEOUT_MS) and query timeout. */
const NEON_DOWN_DEADLINE_MS = 3_000;
const NEON_DOWN_QUERY_TIMEOUT_MS = 2_000;
/** The Host under which the "neon-down" worker answers on miniflare's port. */
const NEON_DOWN_HOST = 'neon-down.local';

interface Answer {
  status: number;
  headers: { get(name: string): string | null };
  text: string;
  body: any;
}

type Fetcher = (
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<{
  status: number;
  headers: { get(name: string): string | null };
  text(): Promise<string>;
}>;

/** One request, body read and parsed; bounded so a hang fails the test instead of stalling it. */
async function ask(
  fetcher: Fetcher,
  url: string,
  init: { method?: string; headers?: Record<string, string>; json?: unknown; body?: string } = {},
): Promise<Answer> {
  const headers = { ...init.headers };
  let body = init.body;
  if (init.json !== undefined) {
    headers['content-type'] ??= 'application/json';
    body = JSON.stringify(init.json);
  }
  const res = await fetcher(url, {
    method: init.method ?? 'GET',
    headers,
    ...(body !== undefined ? { body } : {}),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, text, body: parsed };
}

const nodeFetch: Fetcher = (url, init) => fetch(url, init);

/**
 * Plain HTTP with its own Host header (fetch always sends the URL's): how a client reaches a
 * worker that miniflare routes by host on the same port.
 */
const hostFetch =
  (host: string): Fetcher =>
  (url, init) =>
    new Promise((resolve, reject) => {
      const req = httpRequest(url, { method: init.method ?? 'GET', headers: { ...init.headers, host }, signal: init.signal }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: {
              get: (name) => {
                const v = res.headers[name.toLowerCase()];
                return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
              },
            },
            text: () => Promise.resolve(Buffer.concat(chunks).toString('utf8')),
          }),
        );
      });
      req.on('error', reject);
      req.end(init.body);
    });

/** Keeps every request it gets (as the Node function would have received it) and answers 201. */
interface Recorder {
  url: string;
  requests: { method: string; path: string; headers: Record<string, string>; body: string }[];
  close(): Promise<void>;
}

async function startRecorder(): Promise<Recorder> {
  const requests: Recorder['requests'] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers[k] = v;
      requests.push({ method: req.method ?? '', path: req.url ?? '', headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(201, { 'content-type': 'application/json' }).end('{"recorded":true}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

let stack: EdgeStack;
let recorder: Recorder;
let mf: Miniflare;
let edge: string;
let athlete: Athlete;
/** Writes go to this user, so the read figures of `athlete` stay exact. */
let writer: Athlete;
/** Where the "neon-down" worker's Neon endpoint (NEON_PROXY_URL) points: nothing listens there. */
let neonDownUrl: string;
const runtimeOutput: string[] = [];

/** A fetcher for one of the non-entry workers. */
async function workerFetcher(name: string): Promise<Fetcher> {
  // miniflare types this through workers-types we do not install; it is a fetch all the same.
  const worker = (await mf.getWorker(name)) as unknown as { fetch: Fetcher };
  return (url, init) => worker.fetch(url, init);
}

beforeAll(async () => {
  stack = await startEdgeStack('worker', { prefix: 'poolgate_workerd' });
  athlete = await insertAthlete(stack.db);
  writer = await insertAthlete(stack.db);
  recorder = await startRecorder();
  const closed = await closedPortUrl();
  neonDownUrl = await closedPortUrl();
  const worker = (name: string, bindings: Record<string, string>) => workerdWorker(name, stack.bundlePath, bindings);
  // Served over HTTP on the same port for requests whose Host is `host` (as a client would reach it,
  // so an exception the worker fails to catch shows as whatever workerd answers, not as a rejection).
  const routed = (w: WorkerdWorker, host: string): WorkerdWorker => ({
    ...w,
    config: { ...w.config, triggers: [{ type: 'fetch', pattern: `${host}/*` }] },
  });
  mf = new Miniflare({
    host: '127.0.0.1',
    port: 0,
    // What the workers print (console.log/error) arrives here, one line at a time.
    handleStructuredLogs: ({ message }) => void runtimeOutput.push(message),
    workers: [
      worker('edge', stack.edgeEnv),
      worker('unreachable', { ...stack.edgeEnv, NODE_FUNCTION_URL: closed, FORWARD_TIMEOUT_MS: '8000' }),
      worker('capture', { ...stack.edgeEnv, NODE_FUNCTION_URL: recorder.url }),
      worker('no-secret', {
        DATABASE_URL: `postgres://edge:${MISCONFIGURED_PASSWORD}@127.0.0.1:5432/nowhere`,
        NEON_PROXY_URL: stack.proxyUrl,
        NODE_FUNCTION_URL: `${stack.nodeUrl}/hidden-path`,
      }),
      worker('short-secret', { ...stack.edgeEnv, FORWARD_SECRET: SHORT_SECRET }),
      worker('no-token', { ...stack.edgeEnv, OPS_TOKEN: '', DASHBOARD: 'on' }),
      worker('dashboard', { ...stack.edgeEnv, DASHBOARD: 'on' }),
      routed(
        worker('neon-down', {
          ...stack.edgeEnv,
          NEON_PROXY_URL: neonDownUrl,
          REQUEST_TIMEOUT_MS: String(NEON_DOWN_DEADLINE_MS),
          QUERY_TIMEOUT_MS: String(NEON_DOWN_QUERY_TIMEOUT_MS),
        }),
        NEON_DOWN_HOST,
      ),
    ],
  });
  edge = (await mf.ready).origin;
});

afterAll(async () => {
  // Each step runs even if the one before failed (e.g. workerd never started).
  await mf?.dispose().catch(() => {});
  await recorder?.close().catch(() => {});
  await stack?.stop();
});

const workoutCounts = async () => ({ workouts: await countRows(stack.db, 'workouts'), sets: await countRows(stack.db, 'workout_sets') });

describe('reads at the edge, through the Neon driver', () => {
  it('answers GET /api/users/:id over Neon HTTP with the rows inserted through pg', async () => {
    const before = stack.proxy.stats().httpRequestCount;
    const res = await ask(nodeFetch, `${edge}/api/users/${athlete.userId}`);
    expect(res.status, res.text).toBe(200);
    expect(res.body).toEqual(athlete.expectedUser);
    expect(dbDescOf(res.headers.get('server-timing'))).toBe('neon-http 1q');
    // It really went through the proxy's /sql endpoint, not some other path.
    expect(stack.proxy.stats().httpRequestCount).toBeGreaterThan(before);
  });

  it('answers GET /api/workouts/:id with one HTTP batch (workout + sets)', async () => {
    const res = await ask(nodeFetch, `${edge}/api/workouts/${athlete.strengthWorkoutId}`);
    expect(res.status, res.text).toBe(200);
    expect(dbDescOf(res.headers.get('server-timing'))).toBe('neon-http 2q');
    expect(res.body).toMatchObject({
      id: athlete.strengthWorkoutId,
      userId: athlete.userId,
      kind: 'strength',
      startedAt: '2026-03-02T07:00:00.000Z',
      durationSeconds: 3600,
      sets: [
        { exercise: 'squat', reps: 5, weightKg: 100 },
        { exercise: 'squat', reps: 5, weightKg: 102.5 },
        { exercise: 'bench press', reps: 8, weightKg: 60 },
      ],
    });
  });

  it('answers GET /api/users/:id/summary with exact aggregates in one Neon HTTP read batch, no WebSocket', async () => {
    const opened = stack.proxy.stats().wsOpenedCount;
    const res = await ask(nodeFetch, `${edge}/api/users/${athlete.userId}/summary`);
    expect(res.status, res.text).toBe(200);
    expect(res.body).toEqual(athlete.expectedSummary);
    expect(dbDescOf(res.headers.get('server-timing'))).toBe('neon-http 3q');
    expect(stack.proxy.stats().wsOpenedCount).toBe(opened);
  });

  it('answers GET /api/users/:id/workouts/latest (an interactive read) over a WebSocket session of its own', async () => {
    const opened = stack.proxy.stats().wsOpenedCount;
    const res = await ask(nodeFetch, `${edge}/api/users/${athlete.userId}/workouts/latest`);
    expect(res.status, res.text).toBe(200);
    expect(res.body).toMatchObject(athlete.expectedLatest);
    expect(dbDescOf(res.headers.get('server-timing'))).toMatch(/^neon-ws \d+q$/);
    expect(stack.proxy.stats().wsOpenedCount).toBe(opened + 1);
  });

  it('answers 404 not_found for an unknown user, over Neon HTTP', async () => {
    const res = await ask(nodeFetch, `${edge}/api/users/${randomUUID()}`);
    expect(res.status).toBe(404);
    expect(res.body.error.code).toBe('not_found');
    expect(dbDescOf(res.headers.get('server-timing'))).toBe('neon-http 1q');
  });
});

describe('reads with the Neon endpoint down', () => {
  /** A 503 the client can act on: JSON error code, Retry-After, no stack, no address (how fast is the bench's business). */
  async function expectUnavailable(path: string) {
    const started = performance.now();
    const res = await ask(hostFetch(NEON_DOWN_HOST), `${edge}${path}`);
    const ms = performance.now() - started;
    expect(res.status, `${path} after ${Math.round(ms)} ms: ${res.headers.get('content-type')} ${res.text}`).toBe(503);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(res.body?.error?.code).toMatch(/^(database_unavailable|circuit_open)$/);
    expect(res.body.error.requestId).toEqual(expect.any(String));
    expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(res.text).not.toContain('\n    at ');
    expect(res.text).not.toContain(new URL(neonDownUrl).host);
  }

  it('the WebSocket read path (GET /api/users/:id/workouts/latest) answers 503 JSON', async () => {
    await expectUnavailable(`/api/users/${athlete.userId}/workouts/latest`);
  });

  it('the HTTP read path (GET /api/users/:id) answers 503 JSON', async () => {
    await expectUnavailable(`/api/users/${athlete.userId}`);
  });
});

describe('writes, forwarded signed to the Node function', () => {
  it('validates before it signs: a body that fails the route schema is 400 at the edge and never forwarded', async () => {
    const nodeBefore = gatewayRoute('POST', '/api/workouts')?.count ?? 0;
    for (const json of [{}, { userId: writer.userId, kind: 'x' }, []]) {
      const res = await ask(nodeFetch, `${edge}/api/workouts`, { method: 'POST', json });
      expect(res.status, res.text).toBe(400);
      expect(res.body.error.code).toBe('validation_failed');
    }
    expect(gatewayRoute('POST', '/api/workouts')?.count ?? 0).toBe(nodeBefore);
  });

  it('forwards POST /api/workouts; the rows are in Postgres and the edge can read them back', async () => {
    const before = await workoutCounts();
    const nodeBefore = gatewayRoute('POST', '/api/workouts')?.count ?? 0;
    const res = await ask(nodeFetch, `${edge}/api/workouts`, { method: 'POST', json: workoutBody(writer.userId, 'forwarded-run') });
    expect(res.status, res.text).toBe(201);
    const timing = res.headers.get('server-timing') ?? '';
    expect(timing).toMatch(/(^|,\s*)forward;dur=[\d.]+/);
    expect(dbDescOf(timing)).toBe('forwarded 0q');
    expect(timing).toMatch(/node-db;dur=[\d.]+;desc="pg-pool \d+q"/);

    const id = res.body.id as string;
    const { rows } = await stack.db.admin('SELECT user_id, kind, duration_seconds FROM workouts WHERE id = $1', [id]);
    expect(rows).toEqual([{ user_id: writer.userId, kind: 'forwarded-run', duration_seconds: 1500 }]);
    const sets = await stack.db.admin(
      'SELECT exercise, reps, weight_kg::float8 AS w FROM workout_sets WHERE workout_id = $1 ORDER BY position',
      [id],
    );
    expect(sets.rows).toEqual([
      { exercise: 'sprint', reps: 4, w: null },
      { exercise: 'lunge', reps: 12, w: 20 },
    ]);
    expect(await workoutCounts()).toEqual({ workouts: before.workouts + 1, sets: before.sets + 2 });
    // The Node gateway served it, on its pg Pool.
    expect(gatewayRoute('POST', '/api/workouts')?.count).toBe(nodeBefore + 1);
    expect(gatewayRoute('POST', '/api/workouts')?.clients['pg-pool']).toBeGreaterThanOrEqual(1);

    const back = await ask(nodeFetch, `${edge}/api/workouts/${id}`);
    expect(back.status).toBe(200);
    expect(back.body).toEqual(res.body);
  });

  it('the Node gateway refuses the same POST without a valid signature (401) and writes nothing', async () => {
    const before = await workoutCounts();
    const unsigned = await ask(nodeFetch, `${stack.nodeUrl}/api/workouts`, { method: 'POST', json: workoutBody(writer.userId) });
    expect(unsigned.status).toBe(401);
    expect(unsigned.body.error.code).toBe('unauthorized');
    const forged = await ask(nodeFetch, `${stack.nodeUrl}/api/workouts`, {
      method: 'POST',
      json: workoutBody(writer.userId),
      headers: { 'x-poolgate-signature': `t=${Math.floor(Date.now() / 1000)},n=${randomUUID()},v1=${'A'.repeat(43)}` },
    });
    expect(forged.status).toBe(401);
    expect(forged.body.error.code).toBe('unauthorized');
    expect(await workoutCounts()).toEqual(before);
  });

  it('an Idempotency-Key the Node side would refuse (300 characters) is a 400 at the edge, nothing signed or forwarded', async () => {
    const before = recorder.requests.length;
    const capture = await workerFetcher('capture');
    for (const key of ['k'.repeat(300), 'has space']) {
      const res = await ask(capture, 'http://edge.local/api/workouts', {
        method: 'POST',
        json: workoutBody(writer.userId, 'bad-key-run'),
        headers: { 'idempotency-key': key },
      });
      expect(res.status, key).toBe(400);
      expect(res.body.error.code).toBe('validation_failed');
    }
    expect(recorder.requests).toHaveLength(before);
  });

  it('a signature the edge made is refused when the body is tampered with, accepted once, then refused as a replay', async () => {
    const body = workoutBody(writer.userId, 'captured-run');
    const viaCapture = await ask(await workerFetcher('capture'), 'http://edge.local/api/workouts', { method: 'POST', json: body });
    expect(viaCapture.status).toBe(201);
    expect(recorder.requests).toHaveLength(1);
    const sent = recorder.requests.at(-1)!;
    expect(sent.path).toBe('/api/workouts');
    expect(sent.headers['x-poolgate-signature']).toMatch(/^t=\d+,n=[\w-]+,v2=[\w-]{43}$/);
    const replay = (payload: string, path = sent.path) =>
      ask(nodeFetch, `${stack.nodeUrl}${path}`, {
        method: sent.method,
        body: payload,
        headers: { 'content-type': sent.headers['content-type']!, 'x-poolgate-signature': sent.headers['x-poolgate-signature']! },
      });

    const before = await workoutCounts();
    const tampered = await replay(sent.body.replace('captured-run', 'tampered-run'));
    expect(tampered.status).toBe(401);
    const otherPath = await replay(sent.body, '/api/users');
    expect(otherPath.status).toBe(401);
    expect(await workoutCounts()).toEqual(before);

    const first = await replay(sent.body);
    expect(first.status, first.text).toBe(201);
    expect(first.body.kind).toBe('captured-run');
    const again = await replay(sent.body);
    expect(again.status).toBe(401);
    expect(again.body.error.code).toBe('unauthorized');
    expect(await workoutCounts()).toEqual({ workouts: before.workouts + 1, sets: before.sets + 2 });
    expect(await countRows(stack.db, 'workouts', "WHERE kind = 'tampered-run'")).toBe(0);
  });

  it('answers 503 upstream_unavailable when the Node function is unreachable, and writes nothing', async () => {
    const before = await workoutCounts();
    const res = await ask(await workerFetcher('unreachable'), 'http://edge.local/api/workouts', {
      method: 'POST',
      json: workoutBody(writer.userId),
    });
    expect(res.status, res.text).toBe(503);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(res.headers.get('retry-after')).toBe('2');
    expect(res.body).toEqual({ error: { code: 'upstream_unavailable', message: expect.any(String), requestId: expect.any(String) } });
    expect(res.text).not.toContain('127.0.0.1');
    expect(await workoutCounts()).toEqual(before);
  });
});

describe('capacity and the per-request WebSocket pool', () => {
  it('serves 50 concurrent reads (HTTP and WebSocket paths), all correct', async () => {
    const paths = Array.from({ length: 50 }, (_, i) =>
      i % 5 === 0
        ? `/api/users/${athlete.userId}/workouts/latest`
        : i % 2 === 0
          ? `/api/users/${athlete.userId}`
          : `/api/workouts/${athlete.strengthWorkoutId}`,
    );
    const answers = await Promise.all(paths.map((p) => ask(nodeFetch, `${edge}${p}`)));
    const statuses = answers.map((a) => a.status);
    expect(statuses).toEqual(paths.map(() => 200));
    answers.forEach((a, i) => {
      const p = paths[i]!;
      if (p.endsWith('/latest')) expect(a.body).toMatchObject(athlete.expectedLatest);
      else if (p.startsWith('/api/users/')) expect(a.body).toEqual(athlete.expectedUser);
      else expect(a.body.sets).toHaveLength(3);
    });
  });

  it('serves 30 sequential WebSocket reads, each on a pool of its own that is ended afterwards', async () => {
    const opened = stack.proxy.stats().wsOpenedCount;
    for (let i = 0; i < 30; i++) {
      const res = await ask(nodeFetch, `${edge}/api/users/${athlete.userId}/workouts/latest`);
      expect(res.status, `request ${i + 1}: ${res.text}`).toBe(200);
      expect(res.body).toMatchObject(athlete.expectedLatest);
      expect(dbDescOf(res.headers.get('server-timing'))).toMatch(/^neon-ws /);
    }
    // One WebSocket per request (a shared module-scope pool would open one, then hang)…
    expect(stack.proxy.stats().wsOpenedCount).toBe(opened + 30);
    // …and each is closed by the pool.end() handed to waitUntil.
    await waitFor(() => stack.proxy.stats().wsActiveCount === 0, { timeoutMs: 10_000, what: 'the edge WebSockets to close' });
  });
});

describe('stats at the edge', () => {
  it("/stats is the isolate's own, counting each request once under its route and client", async () => {
    const snap = async () =>
      (await ask(nodeFetch, `${edge}/stats`, { headers: { authorization: `Bearer ${stack.opsToken}` } })).body as {
        scope: string;
        routes: { method: string; route: string; count: number; clients: Record<string, number> }[];
      };
    const route = (s: Awaited<ReturnType<typeof snap>>, method: string, path: string) =>
      s.routes.find((r) => r.method === method && r.route === path);
    const before = await snap();
    expect(before.scope).toBe('workerd isolate');
    await ask(nodeFetch, `${edge}/api/users/${athlete.userId}`);
    await ask(nodeFetch, `${edge}/api/users/${athlete.userId}/workouts/latest`);
    const post = await ask(nodeFetch, `${edge}/api/workouts`, { method: 'POST', json: workoutBody(writer.userId, 'stats-run') });
    expect(post.status).toBe(201);
    const after = await snap();
    const delta = (method: string, path: string, client: string) =>
      (route(after, method, path)?.clients[client] ?? 0) - (route(before, method, path)?.clients[client] ?? 0);
    expect(delta('GET', '/api/users/:id', 'neon-http')).toBe(1);
    expect(delta('GET', '/api/users/:id/workouts/latest', 'neon-ws')).toBe(1);
    expect(delta('POST', '/api/workouts', 'forwarded')).toBe(1);
    // Nothing at the edge ever ran on a pg Pool.
    expect(after.routes.every((r) => !('pg-pool' in r.clients))).toBe(true);
  });
});

describe('the edge’s figures outside development', () => {
  const bearer = () => ({ authorization: `Bearer ${stack.opsToken}` });

  it('/stats, /metrics and readiness details need OPS_TOKEN; /health and readiness’s status stay open', async () => {
    for (const path of ['/stats', '/metrics']) {
      const res = await ask(nodeFetch, `${edge}${path}`);
      expect(res.status, path).toBe(401);
      expect(res.body.error.code).toBe('unauthorized');
      expect(res.text).not.toContain('routes');
      expect((await ask(nodeFetch, `${edge}${path}`, { headers: bearer() })).status, path).toBe(200);
    }
    expect((await ask(nodeFetch, `${edge}/health`)).status).toBe(200);
    const bare = await ask(nodeFetch, `${edge}/health/ready`);
    expect(Object.keys(bare.body)).toEqual(['status']);
    expect((await ask(nodeFetch, `${edge}/health/ready`, { headers: bearer() })).body).toHaveProperty('breakers');
  });

  it('without OPS_TOKEN (and not in development) they are closed to everyone', async () => {
    const fetcher = await workerFetcher('no-token');
    for (const path of ['/stats', '/metrics']) {
      const res = await ask(fetcher, `http://edge.local${path}`);
      expect(res.status, path).toBe(401);
      expect(res.body.error.message).toContain('OPS_TOKEN');
    }
    expect(Object.keys((await ask(fetcher, 'http://edge.local/health/ready')).body)).toEqual(['status']);
    // DASHBOARD=on changes nothing there: a page whose figures no one may read is refused too.
    const page = await ask(fetcher, 'http://edge.local/dashboard');
    expect(page.status).toBe(401);
    expect(page.body.error.message).toContain('OPS_TOKEN');
  });

  it('the dashboard is off by default; with DASHBOARD=on workerd serves the page and uPlot from the bundle', async () => {
    expect((await ask(nodeFetch, `${edge}/dashboard`)).status).toBe(404);
    const fetcher = await workerFetcher('dashboard');
    const page = await ask(fetcher, 'http://edge.local/dashboard');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
    const uplot = await ask(fetcher, 'http://edge.local/dashboard/uplot.js');
    expect(uplot.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    expect(uplot.text).toContain('var uPlot=');
  });
});

describe('a misconfigured worker', () => {
  const forbidden = () => [
    MISCONFIGURED_PASSWORD,
    SHORT_SECRET,
    stack.forwardSecret,
    'postgres://',
    'hidden-path',
    '127.0.0.1',
    stack.db.url,
  ];

  it('without FORWARD_SECRET outside development answers 500 "misconfigured", naming the variable and nothing secret', async () => {
    const fetcher = await workerFetcher('no-secret');
    for (const path of ['/api/users/' + athlete.userId, '/health']) {
      const res = await ask(fetcher, `http://edge.local${path}`);
      expect(res.status).toBe(500);
      expect(res.body.error.code).toBe('internal');
      expect(res.body.error.message).toMatch(/misconfigured/);
      expect(res.body.error.message).toContain('FORWARD_SECRET');
      for (const s of forbidden()) expect(res.text).not.toContain(s);
    }
    const logged = runtimeOutput.join('');
    expect(logged).toMatch(/poolgate is misconfigured: FORWARD_SECRET/);
    expect(logged).not.toContain(MISCONFIGURED_PASSWORD);
  });

  it('with a FORWARD_SECRET shorter than 32 characters answers 500 without echoing it', async () => {
    const res = await ask(await workerFetcher('short-secret'), `http://edge.local/api/users/${athlete.userId}`);
    expect(res.status).toBe(500);
    expect(res.body.error.message).toMatch(/misconfigured: FORWARD_SECRET: must be at least 32 characters/);
    for (const s of forbidden()) expect(res.text).not.toContain(s);
    expect(runtimeOutput.join('')).not.toContain(SHORT_SECRET);
  });
});

function gatewayRoute(method: string, route: string) {
  return stack.gateway.registry.snapshot().routes.find((r) => r.method === method && r.route === route);
}
