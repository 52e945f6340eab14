/**
 * The Netlify Edge entry under real Deno (the npm `deno` binary, offline): the esbuild bundle of
 * src/fitness/entries/netlify-edge.ts served by test/deno/serve-edge.ts, configured through Deno.env,
 * against a real Node gateway, the local Neon proxy and a database of this suite's own. Reads go
 * over Neon HTTP and WebSocket; a write is forwarded, signed, and lands in Postgres.
 *
 * Deno runs with network access to 127.0.0.1 only and read access to the bundle and this folder,
 * so the bundle cannot reach anything else (nor download anything).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDenoEdge, type DenoEdge } from '../helpers/deno.js';
import { waitFor } from '../helpers/gateway.js';
import { countRows, dbDescOf, insertAthlete, startEdgeStack, workoutBody, type Athlete, type EdgeStack } from '../helpers/edge.js';

const REQUEST_TIMEOUT_MS = 20_000;

let stack: EdgeStack;
let deno: DenoEdge | undefined;
let edge: string;
let athlete: Athlete;
let writer: Athlete;

beforeAll(async () => {
  stack = await startEdgeStack('netlify-edge', { prefix: 'poolgate_deno' });
  athlete = await insertAthlete(stack.db);
  writer = await insertAthlete(stack.db);
  deno = await startDenoEdge(stack.bundlePath, stack.edgeEnv);
  edge = deno.url;
});

afterAll(async () => {
  await deno?.stop();
  await stack?.stop();
});

async function ask(path: string, init: { method?: string; json?: unknown; headers?: Record<string, string> } = {}) {
  const res = await fetch(`${edge}${path}`, {
    method: init.method ?? 'GET',
    headers: { ...(init.json !== undefined ? { 'content-type': 'application/json' } : {}), ...init.headers },
    ...(init.json !== undefined ? { body: JSON.stringify(init.json) } : {}),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, body: text ? JSON.parse(text) : undefined };
}

describe('Netlify Edge entry under Deno', () => {
  it('answers GET /api/users/:id over Neon HTTP with the rows inserted through pg', async () => {
    const before = stack.proxy.stats().httpRequestCount;
    const res = await ask(`/api/users/${athlete.userId}`);
    expect(res.status, res.text).toBe(200);
    expect(res.body).toEqual(athlete.expectedUser);
    expect(dbDescOf(res.headers.get('server-timing'))).toBe('neon-http 1q');
    expect(stack.proxy.stats().httpRequestCount).toBeGreaterThan(before);
  });

  it('answers GET /api/workouts/:id with one HTTP batch', async () => {
    const res = await ask(`/api/workouts/${athlete.strengthWorkoutId}`);
    expect(res.status, res.text).toBe(200);
    expect(dbDescOf(res.headers.get('server-timing'))).toBe('neon-http 2q');
    expect(res.body.sets).toEqual([
      { exercise: 'squat', reps: 5, weightKg: 100 },
      { exercise: 'squat', reps: 5, weightKg: 102.5 },
      { exercise: 'bench press', reps: 8, weightKg: 60 },
    ]);
  });

  it('answers /workouts/latest over a WebSocket pool of its own, and closes it without waitUntil', async () => {
    const opened = stack.proxy.stats().wsOpenedCount;
    for (let i = 0; i < 5; i++) {
      const res = await ask(`/api/users/${athlete.userId}/workouts/latest`);
      expect(res.status, res.text).toBe(200);
      expect(res.body).toMatchObject(athlete.expectedLatest);
      expect(dbDescOf(res.headers.get('server-timing'))).toMatch(/^neon-ws \d+q$/);
    }
    expect(stack.proxy.stats().wsOpenedCount).toBe(opened + 5);
    await waitFor(() => stack.proxy.stats().wsActiveCount === 0, { timeoutMs: 10_000, what: 'the Deno WebSockets to close' });
  });

  it('forwards POST /api/workouts, signed, to the Node function; the rows are in Postgres', async () => {
    const before = { workouts: await countRows(stack.db, 'workouts'), sets: await countRows(stack.db, 'workout_sets') };
    const res = await ask('/api/workouts', { method: 'POST', json: workoutBody(writer.userId, 'deno-run') });
    expect(res.status, res.text).toBe(201);
    const timing = res.headers.get('server-timing') ?? '';
    expect(timing).toMatch(/(^|,\s*)forward;dur=[\d.]+/);
    expect(dbDescOf(timing)).toBe('forwarded 0q');
    expect(timing).toMatch(/node-db;dur=[\d.]+;desc="pg-pool \d+q"/);

    const { rows } = await stack.db.admin('SELECT user_id, kind, duration_seconds FROM workouts WHERE id = $1', [res.body.id]);
    expect(rows).toEqual([{ user_id: writer.userId, kind: 'deno-run', duration_seconds: 1500 }]);
    expect(await countRows(stack.db, 'workouts')).toBe(before.workouts + 1);
    expect(await countRows(stack.db, 'workout_sets')).toBe(before.sets + 2);
    const node = stack.gateway.registry.snapshot().routes.find((r) => r.method === 'POST' && r.route === '/api/workouts');
    expect(node?.clients['pg-pool']).toBe(1);
  });

  it("/stats is the Deno isolate's own, and needs OPS_TOKEN outside development", async () => {
    for (const path of ['/stats', '/metrics']) expect((await ask(path)).status, path).toBe(401);
    const res = await ask('/stats', { headers: { authorization: `Bearer ${stack.opsToken}` } });
    expect(res.status).toBe(200);
    expect(res.body.scope).toBe('netlify-edge isolate');
    const route = (method: string, path: string) =>
      res.body.routes.find((r: { method: string; route: string }) => r.method === method && r.route === path);
    expect(route('GET', '/api/users/:id').clients).toEqual({ 'neon-http': 1 });
    expect(route('POST', '/api/workouts').clients).toEqual({ forwarded: 1 });
  });
});
