/**
 * Graceful shutdown. In-process: close() runs once, lets a slow in-flight request finish,
 * refuses new work meanwhile. As a real process: SIGTERM during a slow transaction lets it commit,
 * refuses new requests, exits 0 and leaves no connection behind on the server.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { adminClient, backendsOf, json, startTestGateway, uniqueName, waitFor, type TestGateway } from '../helpers/gateway.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TSX = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

/** Sends `head` (a request line and some headers, not the blank line that ends them) and returns the socket. */
async function openPartialRequest(url: string, head: string): Promise<{ socket: net.Socket; response: Promise<string> }> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let data = '';
  socket.on('data', (d) => (data += d.toString('utf8')));
  const response = new Promise<string>((resolve) => {
    socket.on('end', () => resolve(data));
    socket.on('close', () => resolve(data));
    socket.on('error', () => resolve(data));
  });
  socket.write(head);
  return { socket, response };
}

describe('in-process close()', () => {
  let t: TestGateway | undefined;
  afterEach(async () => {
    await t?.stop();
    t = undefined;
  });

  it('a second close() returns the same promise, and both resolve', async () => {
    t = await startTestGateway();
    const first = t.gateway.close();
    const second = t.gateway.close();
    expect(second).toBe(first);
    expect(await first).toEqual({ drained: true });
    expect(t.gateway.database.close()).toBe(t.gateway.database.close());
    await expect(fetch(`${t.url}/health`)).rejects.toThrow(); // no longer listening
  });

  it('lets a slow in-flight request finish, refuses new work meanwhile, then reports drained', async () => {
    t = await startTestGateway({ POOL_MAX: '2', SHUTDOWN_TIMEOUT_MS: '10000' });
    const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `drain-${randomUUID()}@example.com`, name: 'Drain' } });
    const locker = await adminClient(t.db);
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
      const slow = json(`${t.url}/api/users/${u.body.id}`);
      await waitFor(() => t!.gateway.database.stats()!.active === 1, { what: 'the slow request to hold a connection' });
      // A client already connected and in the middle of sending its request when shutdown begins.
      const late = await openPartialRequest(t.url, `GET /api/users/00000000-0000-4000-8000-000000000001 HTTP/1.1\r\nHost: 127.0.0.1\r\n`);

      const closing = t.gateway.close(); // stops listening and starts draining before it first awaits
      late.socket.write('\r\n');
      const lateResponse = await late.response;
      expect(lateResponse).toMatch(/^HTTP\/1\.1 503 /);
      expect(lateResponse).toMatch(/\r\nretry-after: 1\r\n/i);
      expect(lateResponse).toContain('"code":"shutting_down"');
      await expect(fetch(`${t.url}/health`)).rejects.toThrow(); // new connections: refused

      await locker.query('COMMIT');
      const done = await slow;
      expect(done.status).toBe(200);
      expect(done.body.id).toBe(u.body.id);
      expect(await closing).toEqual({ drained: true });
    } finally {
      await locker.query('ROLLBACK').catch(() => {});
      await locker.end();
    }
  });
});

const suiteName = onRealPostgres('SIGTERM to the gateway process (real PostgreSQL: checks pg_stat_activity)', PGLITE_CANNOT.serverView);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let db: TestDatabase;
  let child: ChildProcessByStdio<null, Readable, Readable> | undefined;

  afterAll(async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await db?.drop();
  });

  it('lets a slow transaction commit, refuses new requests, exits 0 and leaves no connection', async () => {
    db = await createTestDatabase();
    const applicationName = uniqueName('poolgate-sigterm');
    const proc = spawn(TSX, ['src/fitness/entries/node.ts'], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '',
        DATABASE_URL: db.url,
        PORT: '0',
        APPLICATION_NAME: applicationName,
        POOL_MAX: '3',
        POOL_MIN: '2',
        SHUTDOWN_TIMEOUT_MS: '15000',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = proc;
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d) => (stdout += d));
    proc.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      proc.on('exit', (code, signal) => resolve({ code, signal })),
    );

    const url = await waitFor(() => /Node gateway on (http:\/\/[\d.]+:\d+)/.exec(stdout)?.[1], {
      timeoutMs: 30_000,
      intervalMs: 50,
      what: `the gateway to start (stderr: ${stderr})`,
    });
    const user = await json(`${url}/api/users`, { method: 'POST', json: { email: `sigterm-${randomUUID()}@example.com`, name: 'Sig' } });
    expect(user.status).toBe(201);

    const locker = await adminClient(db);
    try {
      // The workout insert's foreign-key check needs a KEY SHARE lock on this row: it waits.
      await locker.query('BEGIN');
      await locker.query('SELECT 1 FROM users WHERE id = $1 FOR UPDATE', [user.body.id]);
      const slow = json(`${url}/api/workouts`, {
        method: 'POST',
        json: {
          userId: user.body.id,
          kind: 'sigterm',
          startedAt: '2026-08-01T06:00:00Z',
          sets: [{ exercise: 'squat', reps: 5, weightKg: 60 }],
        },
      });
      await waitFor(async () => (await backendsOf(db, applicationName)).some((b) => b.wait_event_type === 'Lock'), {
        what: 'the transaction to wait on the row lock',
      });

      proc.kill('SIGTERM');
      await waitFor(() => stdout.includes('SIGTERM, draining'), { what: 'the gateway to start draining' });

      // New requests are refused: either the port is closed or the drain answers 503.
      const refused = await json(`${url}/api/users/${user.body.id}`).catch((err: Error & { cause?: { code?: string } }) => err);
      if (refused instanceof Error) expect(refused.cause?.code ?? refused.message).toMatch(/ECONNREFUSED|ECONNRESET|UND_ERR_SOCKET/);
      else {
        expect(refused.status).toBe(503);
        expect(refused.body.error.code).toBe('shutting_down');
      }

      await new Promise((r) => setTimeout(r, 1_000));
      expect(proc.exitCode).toBeNull(); // still draining: the transaction holds it open
      await locker.query('COMMIT');

      const done = await slow;
      expect(done.status).toBe(201);
      const rows = await db.admin(
        `SELECT w.id, count(s.*)::int AS sets FROM workouts w LEFT JOIN workout_sets s ON s.workout_id = w.id WHERE w.kind = 'sigterm' GROUP BY w.id`,
      );
      expect(rows.rows).toEqual([{ id: done.body.id, sets: 1 }]);
    } finally {
      await locker.query('ROLLBACK').catch(() => {});
      await locker.end();
    }

    const exit = await Promise.race([
      exited,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no exit; stdout: ${stdout}`)), 20_000)),
    ]);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(stdout).toMatch(/"msg":"poolgate: stopped"}\n/);
    expect(stderr).toBe('');
    await waitFor(async () => (await backendsOf(db, applicationName)).length === 0, { what: 'no connection left on the server' });
  });
});
