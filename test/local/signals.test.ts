/**
 * `npm start` owns its signals (issue 10, case 1). Ctrl-C used to hit miniflare's exit hook first:
 * the process exited 130 at once, printed no "SIGINT" line, and a request in flight got a
 * connection reset. Now Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or
 * SIGTERM drains the edge (its requests in flight finish, the gateway still taking the writes they
 * forward), then the Node gateway, stops the Neon proxy and the embedded database, says each step,
 * and exits 0; a second Ctrl-C exits at once.
 *
 * A request is held in flight by owning the embedded PGlite's single backend from a transaction
 * of the test's own: the gateway's statements queue behind it until the test commits.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from '../../src/local/embedded.js';
import { DEMO_USER_ID } from '../../src/fitness/seed.js';
import { isListening, spawnTopology, stopAll, tempDir, topologyEnv, type TopologyProcess } from './topology-process.js';

const OPS_TOKEN = randomBytes(24).toString('base64url');
const dirs: { remove(): Promise<void> }[] = [];

afterAll(async () => {
  await stopAll();
  await Promise.all(dirs.map((d) => d.remove()));
});

interface Running {
  proc: TopologyProcess;
  env: Record<string, string>;
  dataDir: string;
  edgeUrl: string;
  nodeUrl: string;
  embeddedPort: number;
}

async function startRunning(options: { npm?: boolean } = {}): Promise<Running> {
  const dir = await tempDir('signals');
  dirs.push(dir);
  const dataDir = `${dir.path}/pglite`;
  const env: Record<string, string> = { ...(await topologyEnv(dataDir)), OPS_TOKEN, SHUTDOWN_TIMEOUT_MS: '20000' };
  const proc = spawnTopology(env, options);
  await proc.waitForLine(/^poolgate: try /);
  const embeddedPort = Number(/embedded PGlite on 127\.0\.0\.1:(\d+)/.exec(proc.stdout())![1]);
  return { proc, env, dataDir, edgeUrl: `http://127.0.0.1:${env.EDGE_PORT}`, nodeUrl: `http://127.0.0.1:${env.NODE_PORT}`, embeddedPort };
}

/** One read through the edge (Neon proxy → PGlite). */
async function readThroughEdge(t: Running): Promise<void> {
  const res = await fetch(`${t.edgeUrl}/api/users/${DEMO_USER_ID}`, { signal: AbortSignal.timeout(15_000) });
  expect(res.status).toBe(200);
  expect(((await res.json()) as { id: string }).id).toBe(DEMO_USER_ID);
}

/**
 * Starts a write through the edge that waits in the Node gateway: the test's own transaction owns
 * PGlite's one backend. Resolves once the gateway holds a pool connection for it.
 */
async function holdWriteInFlight(t: Running): Promise<{ response: Promise<Response>; release(): Promise<void> }> {
  const locker = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${t.embeddedPort}/postgres` });
  locker.on('error', () => {}); // a forced exit cuts it
  await locker.connect();
  await locker.query('BEGIN');
  await locker.query('SELECT 1');
  const response = fetch(`${t.edgeUrl}/api/workouts`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      userId: DEMO_USER_ID,
      kind: 'in-flight',
      startedAt: '2026-11-27T07:00:00Z',
      sets: [{ exercise: 'squat', reps: 5 }],
    }),
    signal: AbortSignal.timeout(30_000),
  });
  response.catch(() => {});
  const deadline = Date.now() + 15_000;
  for (;;) {
    const stats = await fetch(`${t.nodeUrl}/stats`, { headers: { authorization: `Bearer ${OPS_TOKEN}` } });
    const body = (await stats.json()) as { pool?: { active: number } };
    if ((body.pool?.active ?? 0) >= 1) break;
    if (Date.now() > deadline) throw new Error(`the write never reached the gateway's pool: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    response,
    async release() {
      await locker.query('COMMIT').catch(() => {});
      await locker.end().catch(() => {});
    },
  };
}

/** The data dir opens again in this process (lock released, files intact) and holds `workoutId`. */
async function expectReopens(dataDir: string, workoutId?: string): Promise<void> {
  const db = await startEmbeddedPostgres({ dataDir });
  try {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    const users = await client.query('SELECT id FROM users WHERE id = $1', [DEMO_USER_ID]);
    expect(users.rowCount).toBe(1);
    if (workoutId) expect((await client.query('SELECT id FROM workouts WHERE id = $1', [workoutId])).rowCount).toBe(1);
    await client.end();
  } finally {
    await db.stop();
  }
}

const STOP_LINES = [
  /^poolgate: SIGINT, stopping/,
  /^poolgate: draining the edge/,
  /^poolgate: edge drained$/,
  /^poolgate: edge app \(workerd\) stopped/,
  /^poolgate: draining the Node gateway/,
  /^poolgate: Node gateway drained, pool ended/,
  /^poolgate: Neon proxy stopped/,
  /^poolgate: embedded PGlite stopped/,
  /^poolgate: stopped$/,
];

/** Every line of `expected`, in that order, each once. */
function expectLinesInOrder(stdout: string, expected: RegExp[]): void {
  const lines = stdout.split('\n');
  const at = expected.map((re) => lines.findIndex((l) => re.test(l)));
  expect(
    at.every((i) => i >= 0),
    stdout,
  ).toBe(true);
  expect(
    [...at].sort((a, b) => a - b),
    stdout,
  ).toEqual(at);
  for (const re of expected)
    expect(
      lines.filter((l) => re.test(l)),
      stdout,
    ).toHaveLength(1);
}

describe('Ctrl-C on the topology (tsx src/fitness/entries/local.ts, what npm start runs)', () => {
  it('drains the write in flight, stops every part saying so, exits 0, and the data dir opens again', async () => {
    const t = await startRunning();
    await readThroughEdge(t);
    const write = await holdWriteInFlight(t);

    t.proc.pressCtrlC();
    await t.proc.waitForLine(/^poolgate: draining the edge \(1 request in flight/, 15_000);
    expect(await isListening(Number(t.env.EDGE_PORT))).toBe(true); // the edge still answers while it drains
    await write.release();

    const res = await write.response;
    expect(res.status).toBe(201); // answered through the edge, not reset
    const workout = (await res.json()) as { id: string };
    expect(await t.proc.waitForExit(30_000)).toEqual({ code: 0, signal: null });
    expectLinesInOrder(t.proc.stdout(), STOP_LINES);
    expect(t.proc.stderr()).toBe('');
    expect(await isListening(Number(t.env.EDGE_PORT))).toBe(false); // workerd is gone too
    await expectReopens(t.dataDir, workout.id);
  }, 300_000);

  it('a second Ctrl-C exits at once (130), and still leaves no workerd and no lock behind', async () => {
    const t = await startRunning();
    await readThroughEdge(t);
    const write = await holdWriteInFlight(t); // the drain cannot finish while this waits

    t.proc.pressCtrlC();
    await t.proc.waitForLine(/^poolgate: draining the edge/, 15_000);
    await new Promise((r) => setTimeout(r, 1_000)); // a human's second Ctrl-C, not the same one delivered twice
    t.proc.pressCtrlC();
    // The drain cannot end while the write is held (released below): an exit at all is "at once".
    expect(await t.proc.waitForExit(30_000)).toEqual({ code: 130, signal: null });
    expect(t.proc.stderr()).toMatch(/^poolgate: SIGINT again; exiting now without finishing the shutdown \(exit code 130\)$/m);
    await write.release();
    expect(await isListening(Number(t.env.EDGE_PORT))).toBe(false);
    await expectReopens(t.dataDir); // the lock went with the process; PGlite recovers its own files
  }, 300_000);

  it('SIGTERM to the process alone (kill <pid>) stops it the same way, exit 0', async () => {
    const t = await startRunning();
    await readThroughEdge(t);
    process.kill(t.proc.pid, 'SIGTERM');
    expect(await t.proc.waitForExit(30_000)).toEqual({ code: 0, signal: null });
    expectLinesInOrder(t.proc.stdout(), [/^poolgate: SIGTERM, stopping/, ...STOP_LINES.slice(1)]);
    await expectReopens(t.dataDir);
  }, 300_000);
});

describe('Ctrl-C on npm start itself', () => {
  it('runs the same graceful stop under npm (npm and sh, and the topology, all get the SIGINT)', async () => {
    const t = await startRunning({ npm: true });
    await readThroughEdge(t);
    t.proc.pressCtrlC();
    const exit = await t.proc.waitForExit(30_000);
    expectLinesInOrder(t.proc.stdout(), STOP_LINES);
    expect(t.proc.stdout() + t.proc.stderr()).not.toMatch(/exiting now/);
    // The topology exits 0 (above); npm passes that on where /bin/sh is bash, but where it is dash
    // `sh -c` dies of the SIGINT it got too once its child is done, and npm re-raises that on itself.
    expect(exit.code === 0 || exit.signal === 'SIGINT', JSON.stringify(exit)).toBe(true);
    expect(await isListening(Number(t.env.EDGE_PORT))).toBe(false);
    await expectReopens(t.dataDir);
  }, 300_000);
});
