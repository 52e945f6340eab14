/**
 * The local Neon proxy runs on a developer's machine next to their browser (issue 20): a web page
 * must not drive it (Origin and Host checked, CORS only for the origins it was given), a flood of
 * distinct passwords must not open backends past its bound, Neon's `options=endpoint=…` hint works
 * over the WebSocket as over HTTP, and a database that accepts TCP and never answers gets an
 * answer within the connect timeout. Real proxy, real PostgreSQL (a private cluster for the
 * bound), the real Neon driver.
 */
import { request } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { Pool as NeonPool } from '@neondatabase/serverless';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { createTestDatabase, onRealPostgres, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { useNeonProxy } from '../helpers/neon.js';
import { privatePostgresAvailable, startPrivatePostgres, type PrivatePostgres } from '../helpers/private-postgres.js';

const EDGE_ORIGIN = 'http://127.0.0.1:8787';

let db: TestDatabase;
let proxy: NeonProxy;

beforeAll(async () => {
  db = await createTestDatabase('poolgate_neon_safety');
  proxy = await startNeonProxy({ databaseUrls: [db.url], port: 0, allowedOrigins: [EDGE_ORIGIN] });
  useNeonProxy(proxy);
});

afterAll(async () => {
  await proxy?.close();
  await db?.drop();
});

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A raw HTTP request (node:http, so Host can be anything, as a rebound DNS name makes it). */
function raw(method: string, path: string, headers: Record<string, string>, body = ''): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: proxy.host, port: proxy.port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const SQL_HEADERS = () => ({ 'Neon-Connection-String': db.url, 'Neon-Raw-Text-Output': 'true', 'Neon-Array-Mode': 'true' });
const VERSION_QUERY = JSON.stringify({ query: 'SELECT version()', params: [] });

/** The status a WebSocket upgrade with these headers gets (101 when it opens). */
function upgradeStatus(headers: Record<string, string>): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://${proxy.host}:${proxy.port}/v2?address=${new URL(db.url).host}`, { headers });
    ws.on('open', () => {
      ws.close();
      resolve(101);
    });
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.on('error', () => {});
  });
}

describe('a web page cannot drive the proxy', () => {
  it('a hostile origin’s preflight is refused: no CORS grant, no allowed headers', async () => {
    const res = await raw('OPTIONS', '/sql', {
      Origin: 'https://evil.example',
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'neon-connection-string',
    });
    expect(res.status).toBe(403);
    expect(res.headers['access-control-allow-origin']).toBeUndefined();
    expect(res.headers['access-control-allow-headers']).toBeUndefined();
  });

  it('a hostile origin’s POST runs no SQL', async () => {
    const res = await raw('POST', '/sql', { ...SQL_HEADERS(), Origin: 'https://evil.example' }, VERSION_QUERY);
    expect(res.status).toBe(403);
    expect(res.headers['access-control-allow-origin']).toBeUndefined();
    expect(res.body).not.toContain('PostgreSQL');
    expect(JSON.parse(res.body)).toMatchObject({ message: expect.stringContaining('origin') });
  });

  it('a rebound DNS name (Host: evil.example) is refused, on HTTP and WebSocket', async () => {
    const res = await raw('POST', '/sql', { ...SQL_HEADERS(), Host: `evil.example:${proxy.port}` }, VERSION_QUERY);
    expect(res.status).toBe(403);
    expect(res.body).not.toContain('PostgreSQL');
    expect(await upgradeStatus({ Host: `evil.example:${proxy.port}` })).toBe(403);
  });

  it('a hostile origin’s WebSocket is refused before it reaches the database', async () => {
    expect(await upgradeStatus({ Origin: 'https://evil.example' })).toBe(403);
  });

  it('the origins it was given, loopback Host names and non-browser clients are served', async () => {
    const preflight = await raw('OPTIONS', '/sql', {
      Origin: EDGE_ORIGIN,
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'neon-connection-string',
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers['access-control-allow-origin']).toBe(EDGE_ORIGIN);
    expect(preflight.headers.vary).toContain('Origin');
    const fromEdge = await raw('POST', '/sql', { ...SQL_HEADERS(), Origin: EDGE_ORIGIN }, VERSION_QUERY);
    expect(fromEdge.status).toBe(200);
    expect(fromEdge.headers['access-control-allow-origin']).toBe(EDGE_ORIGIN);
    for (const host of [`localhost:${proxy.port}`, `127.0.0.1:${proxy.port}`, `[::1]:${proxy.port}`]) {
      expect((await raw('POST', '/sql', { ...SQL_HEADERS(), Host: host }, VERSION_QUERY)).status, host).toBe(200);
    }
    expect(await upgradeStatus({ Origin: EDGE_ORIGIN })).toBe(101);
    expect(await upgradeStatus({})).toBe(101);
  });
});

describe('smaller doors', () => {
  const sql = (body: string, headers: Record<string, string> = {}) => raw('POST', '/sql', { ...SQL_HEADERS(), ...headers }, body);

  it('COPY is refused over HTTP only for STDOUT/STDIN in the statement, not in a comment or a string', async () => {
    for (const query of [
      "COPY (SELECT 1) TO '/nonexistent-poolgate-dir/x' -- not to stdout",
      "COPY (SELECT 1) TO '/nonexistent-poolgate-dir/to stdout' /* from stdin */",
    ]) {
      const res = await sql(JSON.stringify({ query, params: [] }));
      expect(res.status, query).toBe(400);
      expect(JSON.parse(res.body).message, query).not.toMatch(/not supported over HTTP/);
    }
    const stdout = await sql(JSON.stringify({ query: "COPY (SELECT 1) /* '/file' */ TO STDOUT", params: [] }));
    expect(JSON.parse(stdout.body).message).toMatch(/not supported over HTTP/);
  });

  it('each request’s application_name is the one its connection has, on a reused connection too', async ({ skip }) => {
    if (!db.real) skip('PGlite ignores application_name; needs TEST_DATABASE_URL');
    const single = await startNeonProxy({ databaseUrls: [db.url], port: 0, poolMaxPerTarget: 1 });
    try {
      for (const name of ['first-app', 'second-app', 'first-app']) {
        const url = new URL(db.url);
        url.searchParams.set('application_name', name);
        const res = await fetch(`${single.url}/sql`, {
          method: 'POST',
          body: JSON.stringify({ query: "SELECT current_setting('application_name')", params: [] }),
          headers: { ...SQL_HEADERS(), 'Neon-Connection-String': url.toString() },
        });
        expect(((await res.json()) as { rows: unknown[] }).rows).toEqual([[name]]);
      }
    } finally {
      await single.close();
    }
  });

  it('a 10k-deep parameter is a 400 for the request, not a 502 from the proxy', async () => {
    const deep = `${'['.repeat(10_000)}1${']'.repeat(10_000)}`;
    const res = await sql(`{"query":"SELECT $1::text","params":[${deep}]}`);
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body)).toMatchObject({ message: expect.stringContaining('nested') });
  });

  it('a JSON-number parameter above 2^53 keeps its digits', async () => {
    const res = await sql(
      '{"query":"SELECT $1::numeric::text AS a, $2::numeric[]::text AS b","params":[9007199254740993, [12345678901234567890]]}',
    );
    expect(res.status, res.body).toBe(200);
    expect(JSON.parse(res.body).rows).toEqual([['9007199254740993', '{12345678901234567890}']]);
  });
});

describe('Neon’s options=endpoint=… hint over the WebSocket', () => {
  it('the real driver’s Pool connects with it, and the rest of options still applies', async () => {
    const url = new URL(db.url);
    url.searchParams.set('options', 'endpoint=ep-cool-darkness-123456 -c statement_timeout=4321');
    const pool = new NeonPool({ connectionString: url.toString(), max: 1 });
    try {
      const { rows } = await pool.query('SHOW statement_timeout');
      expect(rows).toEqual([{ statement_timeout: '4321ms' }]);
    } finally {
      await pool.end();
    }
  });

  it('project=… alone leaves no options at all', async () => {
    const url = new URL(db.url);
    url.searchParams.set('options', 'project=ep-cool-darkness-123456');
    const pool = new NeonPool({ connectionString: url.toString(), max: 1 });
    try {
      expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await pool.end();
    }
  });
});

describe('a database that accepts TCP and never answers', () => {
  let silent: Server;
  const sockets = new Set<Socket>();
  let url: string;
  let quiet: NeonProxy;

  beforeAll(async () => {
    silent = createServer((socket) => {
      sockets.add(socket);
      // Reads (and drops) what it is sent, so it sees a client hang up; it never answers.
      socket.resume();
      socket.on('error', () => {});
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as { port: number }).port;
    url = `postgres://postgres:secret-pw@127.0.0.1:${port}/silent`;
    quiet = await startNeonProxy({ databaseUrls: [url], port: 0, connectTimeoutMs: 300 });
  });

  afterAll(async () => {
    await quiet?.close();
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => silent?.close(() => resolve()));
  });

  it('HTTP answers 502 in Neon’s error shape within the connect timeout, and the sockets are closed', async () => {
    const res = await fetch(`${quiet.url}/sql`, {
      method: 'POST',
      body: '{"query":"SELECT 1","params":[]}',
      headers: { 'Neon-Connection-String': url },
    });
    expect(res.status).toBe(502);
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({ message: expect.stringContaining('300 ms'), code: '' });
    expect(text).not.toContain('secret-pw');
    // 12 at once, more than a target's 10 connections: each one answers, none is left hanging.
    const many = await Promise.all(
      Array.from({ length: 12 }, () =>
        fetch(`${quiet.url}/sql`, { method: 'POST', body: '{"query":"SELECT 1"}', headers: { 'Neon-Connection-String': url } }),
      ),
    );
    expect(many.map((r) => r.status)).toEqual(Array(12).fill(502));
    await Promise.all(many.map((r) => r.text()));
  });

  it('requests that go away while connecting give their connection slots back at once, not at the timeout', async () => {
    const patient = await startNeonProxy({ databaseUrls: [url], port: 0, connectTimeoutMs: 120_000, poolMaxPerTarget: 2 });
    try {
      const ac = new AbortController();
      const pending = Array.from({ length: 2 }, () =>
        fetch(`${patient.url}/sql`, {
          method: 'POST',
          body: '{"query":"SELECT 1"}',
          headers: { 'Neon-Connection-String': url },
          signal: ac.signal,
        }).catch((e: unknown) => e),
      );
      await waitFor(() => sockets.size === 2);
      ac.abort();
      await Promise.all(pending);
      // Both connects are dropped: the silent server sees its sockets close, the slots are free.
      await waitFor(() => sockets.size === 0);
      await waitFor(() => patient.stats().backendCount === 0);
    } finally {
      await patient.close();
    }
  });

  it('a WebSocket session’s startup is cut at the connect timeout: the driver fails instead of hanging', async () => {
    useNeonProxy(quiet);
    const pool = new NeonPool({ connectionString: url, max: 1 });
    pool.on('error', () => {});
    try {
      await expect(pool.query('SELECT 1')).rejects.toThrow();
    } finally {
      useNeonProxy(proxy);
      await pool.end().catch(() => {});
    }
    expect(quiet.stats().wsActiveCount).toBe(0);
  });
});

describe.skipIf(!realPostgresUrl || !privatePostgresAvailable)('one pool per password, bounded', () => {
  const BOUND = 3;
  let cluster: PrivatePostgres;
  let bounded: NeonProxy;
  let base: URL;

  beforeAll(async () => {
    cluster = await startPrivatePostgres();
    // The role may hold no more backends than the bound: one more and Postgres refuses it, so a
    // proxy that opened one per password would fail requests here instead of only crowding the server.
    const admin = new pg.Client({ connectionString: cluster.url() });
    await admin.connect();
    await admin.query(`CREATE ROLE flood LOGIN CONNECTION LIMIT ${BOUND}`);
    await admin.end();
    base = new URL(cluster.url());
    base.username = 'flood';
    bounded = await startNeonProxy({ databaseUrls: [base.toString()], port: 0, maxBackends: BOUND });
  }, 60_000);

  afterAll(async () => {
    await bounded?.close();
    await cluster?.destroy();
  });

  it(
    onRealPostgres('150 requests with 150 different (ignored) passwords open no more backends than the bound', 'a private cluster'),
    async () => {
      const answers = await Promise.all(
        Array.from({ length: 150 }, async (_, i) => {
          const url = new URL(base);
          url.password = `pw-${i}`;
          const res = await fetch(`${bounded.url}/sql`, {
            method: 'POST',
            body: '{"query":"SELECT 1 AS one","params":[]}',
            headers: { 'Neon-Connection-String': url.toString(), 'Neon-Array-Mode': 'true', 'Neon-Raw-Text-Output': 'true' },
          });
          return `${res.status} ${await res.text()}`.slice(0, 200);
        }),
      );
      expect(answers.filter((a) => !a.startsWith('200 '))).toEqual([]);
      expect(bounded.stats().backendCount).toBeLessThanOrEqual(BOUND);
      expect(bounded.stats().poolCount).toBeLessThanOrEqual(BOUND);
      // Ordinary clients still get in.
      const other = new pg.Client({ connectionString: cluster.url() });
      await other.connect();
      await other.end();
    },
    60_000,
  );
});

async function waitFor(check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
