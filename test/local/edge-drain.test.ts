/**
 * Ctrl-C lets the requests already inside the edge finish ("a newcomer's first hour", case 2). The
 * topology drained the Node gateway, waited a fixed 500 ms and killed workerd: a read blocked on a
 * lock got "Empty reply from server" and a slow upload "Broken pipe". Now a Node front on EDGE_PORT
 * proxies to workerd and counts the requests in flight; on Ctrl-C it answers new ones 503
 * shutting_down, lets those in flight finish within SHUTDOWN_TIMEOUT_MS (the gateway stays up for
 * the writes they forward), answers what still runs at the deadline with 503, and only then stops
 * workerd.
 *
 * A read is held inside the edge by a test transaction's LOCK TABLE on real PostgreSQL, and seen
 * waiting in pg_stat_activity; the embedded PGlite has no such view, so these need TEST_DATABASE_URL.
 */
import http from 'node:http';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { DEMO_USER_ID } from '../../src/fitness/seed.js';
import { createTestDatabase, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';
import { spawnTopology, stopAll, tempDir, topologyEnv, type TopologyProcess } from './topology-process.js';

const dirs: { remove(): Promise<void> }[] = [];
const dbs: TestDatabase[] = [];
afterAll(async () => {
  await stopAll();
  await Promise.all([...dirs.map((d) => d.remove()), ...dbs.map((d) => d.drop())]);
});

interface Answer {
  status: number;
  body: string;
}

/** A request by node:http whose body is sent in the parts given, `next()` sending the next part. */
function request(url: string, method = 'GET', parts: string[] = []) {
  const req = http.request(url, { method, headers: parts.length ? { 'content-type': 'application/json' } : {} });
  const answer = new Promise<Answer>((resolve, reject) => {
    req.once('error', reject);
    req.once('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.once('end', () => resolve({ status: res.statusCode!, body }));
      res.once('error', reject);
    });
  });
  answer.catch(() => {});
  const queue = [...parts];
  const next = () =>
    new Promise<void>((resolve, reject) => {
      const part = queue.shift();
      if (part === undefined) return reject(new Error('no part left'));
      const done = (err?: Error | null) => (err ? reject(err) : resolve());
      if (queue.length === 0) req.end(part, () => done());
      else req.write(part, done);
    });
  if (parts.length === 0) req.end();
  return { answer, next };
}

async function startOn(db: TestDatabase, shutdownTimeoutMs: number): Promise<{ proc: TopologyProcess; edgeUrl: string }> {
  const dir = await tempDir('edge-drain');
  dirs.push(dir);
  const env: Record<string, string> = {
    ...(await topologyEnv(`${dir.path}/pglite`)),
    DATABASE_URL: db.url,
    SEED: 'true',
    SHUTDOWN_TIMEOUT_MS: String(shutdownTimeoutMs),
  };
  const proc = spawnTopology(env);
  await proc.waitForLine(/^poolgate: try /);
  return { proc, edgeUrl: `http://127.0.0.1:${env.EDGE_PORT}` };
}

/** A transaction holding `users` exclusively: every read of it waits until release(). */
async function lockUsers(db: TestDatabase): Promise<{ release(): Promise<void> }> {
  const client = new pg.Client({ connectionString: db.url });
  client.on('error', () => {});
  await client.connect();
  await client.query('BEGIN');
  await client.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
  return {
    async release() {
      await client.query('COMMIT').catch(() => {});
      await client.end().catch(() => {});
    },
  };
}

/** Statements of this database waiting on a lock (the edge's reads through the Neon proxy). */
async function lockWaits(db: TestDatabase): Promise<number> {
  const { rows } = await db.admin(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
  );
  return (rows[0] as { n: number }).n;
}

const errorCode = (answer: Answer) => (JSON.parse(answer.body) as { error: { code: string } }).error.code;

const workout = JSON.stringify({ userId: DEMO_USER_ID, kind: 'slow-upload', startedAt: '2026-11-27T07:00:00Z', sets: [] });

describe.skipIf(!realPostgresUrl)('Ctrl-C with requests inside the edge (needs TEST_DATABASE_URL: pg_stat_activity)', () => {
  it('a blocked read and a slow upload in flight both get their full answers; a new request gets 503 shutting_down', async () => {
    const db = await createTestDatabase('poolgate_edge_drain');
    dbs.push(db);
    const { proc, edgeUrl } = await startOn(db, 60_000);
    const lock = await lockUsers(db);
    try {
      const upload = request(`${edgeUrl}/api/workouts`, 'POST', [workout.slice(0, 20), workout.slice(20)]);
      await upload.next(); // headers and the first part are on their way; the rest waits
      const read = request(`${edgeUrl}/api/users/${DEMO_USER_ID}`);
      await waitFor(async () => (await lockWaits(db)) >= 1, { timeoutMs: 20_000, what: 'the read to wait on the lock' });

      proc.pressCtrlC();
      await proc.waitForLine(/^poolgate: draining the edge \(2 requests in flight/, 15_000);
      const late = await request(`${edgeUrl}/health`).answer;
      expect(late.status).toBe(503);
      expect(errorCode(late)).toBe('shutting_down');

      await upload.next(); // the rest of the body, after Ctrl-C
      await lock.release();
      const [readAnswer, uploadAnswer] = await Promise.all([read.answer, upload.answer]);
      expect(readAnswer.status, readAnswer.body).toBe(200);
      expect((JSON.parse(readAnswer.body) as { id: string }).id).toBe(DEMO_USER_ID);
      expect(uploadAnswer.status, uploadAnswer.body).toBe(201);
      expect((JSON.parse(uploadAnswer.body) as { kind: string }).kind).toBe('slow-upload');
    } finally {
      await lock.release();
    }
    expect(await proc.waitForExit(60_000), proc.stdout() + proc.stderr()).toEqual({ code: 0, signal: null });
    expect(proc.stdout()).toMatch(/^poolgate: edge drained$/m);
  }, 300_000);

  it('what still runs at the deadline (SHUTDOWN_TIMEOUT_MS) is answered 503 shutting_down, and the stop goes on', async () => {
    const db = await createTestDatabase('poolgate_edge_drain');
    dbs.push(db);
    const { proc, edgeUrl } = await startOn(db, 2_000);
    const lock = await lockUsers(db);
    try {
      const read = request(`${edgeUrl}/api/users/${DEMO_USER_ID}`);
      await waitFor(async () => (await lockWaits(db)) >= 1, { timeoutMs: 20_000, what: 'the read to wait on the lock' });
      proc.pressCtrlC();
      const answer = await read.answer;
      expect(answer.status, answer.body).toBe(503);
      expect(errorCode(answer)).toBe('shutting_down');
      expect(await proc.waitForExit(60_000), proc.stdout() + proc.stderr()).toEqual({ code: 0, signal: null });
      expect(proc.stdout()).toMatch(/^poolgate: edge drain deadline passed: 1 request answered 503$/m);
    } finally {
      await lock.release();
    }
  }, 300_000);
});
