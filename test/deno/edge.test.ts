/**
 * The Netlify Edge entry under real Deno (the npm `deno` binary, offline): the esbuild bundle of
 * src/fitness/entries/netlify-edge.ts served by test/deno/serve-edge.ts, configured through Deno.env,
 * against a real Node gateway, the local Neon proxy and a database of this suite's own. Reads go
 * over Neon HTTP and WebSocket; a write is forwarded, signed, and lands in Postgres.
 *
 * Deno runs with network access to 127.0.0.1 only and read access to the bundle and this folder,
 * so the bundle cannot reach anything else (nor download anything).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/gateway.js';
import { countRows, dbDescOf, insertAthlete, startEdgeStack, workoutBody, type Athlete, type EdgeStack } from '../helpers/edge.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '../..');
const DENO = join(repoRoot, 'node_modules/.bin/deno');
const START_TIMEOUT_MS = 60_000;
const REQUEST_TIMEOUT_MS = 20_000;

let stack: EdgeStack;
let deno: ChildProcess | undefined;
let edge: string;
let athlete: Athlete;
let writer: Athlete;
const denoOutput: string[] = [];

/** Starts Deno on the bundle; resolves with its base URL once it prints `listening <port>`. */
function startDeno(bundlePath: string, env: Record<string, string>): Promise<string> {
  const child = spawn(
    DENO,
    [
      'run',
      '--no-prompt',
      '--no-config',
      '--no-lock',
      '--no-remote',
      '--no-npm',
      '--allow-net=127.0.0.1',
      '--allow-env',
      `--allow-read=${dirname(bundlePath)},${here}`,
      join(here, 'serve-edge.ts'),
      bundlePath,
    ],
    {
      cwd: dirname(bundlePath),
      // Only what Deno itself needs, plus the edge configuration: no POOLGATE_ENV/NODE_ENV from the test run.
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', NO_COLOR: '1', DENO_NO_UPDATE_CHECK: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  deno = child;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`deno did not start within ${START_TIMEOUT_MS} ms:\n${denoOutput.join('')}`)),
      START_TIMEOUT_MS,
    );
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => {
      denoOutput.push(chunk.toString('utf8'));
      stdout += chunk.toString('utf8');
      const m = /listening (\d+)/.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolve(`http://127.0.0.1:${m[1]}`);
      }
    });
    child.stderr.on('data', (chunk: Buffer) => denoOutput.push(chunk.toString('utf8')));
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`deno exited (${code ?? signal}) before listening:\n${denoOutput.join('')}`));
    });
  });
}

/** SIGTERM, then SIGKILL if it has not exited within 5 s. */
async function stopDeno(): Promise<void> {
  const child = deno;
  deno = undefined;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

beforeAll(async () => {
  stack = await startEdgeStack('netlify-edge', 'poolgate_deno');
  athlete = await insertAthlete(stack.db);
  writer = await insertAthlete(stack.db);
  edge = await startDeno(stack.bundlePath, stack.edgeEnv);
});

afterAll(async () => {
  await stopDeno();
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
