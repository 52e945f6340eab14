/**
 * The local Neon proxy's own behaviour, beyond SQL conformance: what it refuses (targets not
 * allowed, oversized requests and responses, malformed bodies, unknown paths), CORS, surviving
 * terminated backends, and the CLI as a real process.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { neon, NeonDbError, Pool as NeonPool } from '@neondatabase/serverless';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { runNeonProxyCli, startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { refusedUpgradeStatus, useNeonProxy } from '../helpers/neon.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
/** An address nothing listens on and the proxy was not told about. */
const FOREIGN_URL = 'postgres://postgres:not-this-one@127.0.0.1:1/elsewhere';

let db: TestDatabase;
let proxy: NeonProxy;
let proxyLog: string[];

beforeAll(async () => {
  db = await createTestDatabase('poolgate_neon_proxy');
  proxyLog = [];
  proxy = await startNeonProxy({ databaseUrls: [db.url], port: 0, log: (line) => proxyLog.push(line) });
  useNeonProxy(proxy);
});

afterAll(async () => {
  await proxy?.close();
  await db?.drop();
});

/** A raw `POST /sql` as the driver would send it. */
function post(base: string, body: string, headers: Record<string, string> = {}) {
  return fetch(`${base}/sql`, {
    method: 'POST',
    body,
    headers: { 'Neon-Connection-String': db.url, 'Neon-Raw-Text-Output': 'true', 'Neon-Array-Mode': 'true', ...headers },
  });
}

describe('the wire format', () => {
  it('answers a single query in raw text, array mode, with no CORS grant for a caller without an Origin', async () => {
    const res = await post(proxy.url, JSON.stringify({ query: 'SELECT $1::int AS x, NULL::text AS y', params: ['1'] }));
    expect(res.status).toBe(200);
    expect(res.headers.get('access-control-allow-origin')).toBeNull();
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(await res.json()).toEqual({
      command: 'SELECT',
      rowCount: 1,
      rowAsArray: true,
      fields: [
        { name: 'x', dataTypeID: 23, tableID: 0, columnID: 0, dataTypeSize: 4, dataTypeModifier: -1, format: 'text' },
        { name: 'y', dataTypeID: 25, tableID: 0, columnID: 0, dataTypeSize: -1, dataTypeModifier: -1, format: 'text' },
      ],
      rows: [['1', null]],
    });
  });

  it('returns rows as objects without Neon-Array-Mode, and batches as {results}', async () => {
    const single = await post(proxy.url, JSON.stringify({ query: 'SELECT 1 AS a' }), { 'Neon-Array-Mode': 'false' });
    expect(await single.json()).toMatchObject({ rowAsArray: false, rows: [{ a: '1' }] });
    const batch = await post(
      proxy.url,
      JSON.stringify({
        queries: [
          { query: 'SELECT 1 AS a', params: [] },
          { query: 'SELECT 2 AS b', params: [] },
        ],
      }),
      {
        'Neon-Batch-Isolation-Level': 'RepeatableRead',
      },
    );
    expect(batch.status).toBe(200);
    expect(batch.headers.get('neon-batch-isolation-level')).toBe('RepeatableRead');
    const body = (await batch.json()) as { results: { rows: unknown[] }[] };
    expect(body.results.map((r) => r.rows)).toEqual([[['1']], [['2']]]);
  });

  it('never hands a connection left inside a transaction to the next request', async () => {
    const single = await startNeonProxy({ databaseUrls: [db.url], port: 0, poolMaxPerTarget: 1 });
    try {
      const ask = (query: string) => post(single.url, JSON.stringify({ query, params: [] })).then((r) => r.json());
      await db.admin('CREATE TABLE IF NOT EXISTS leak_probe (x int)');
      expect(await ask('BEGIN')).toMatchObject({ command: 'BEGIN', rowCount: null });
      // Had the BEGIN's connection been reused, this insert would sit in its open transaction, unseen.
      expect(await ask('INSERT INTO leak_probe VALUES (1)')).toMatchObject({ command: 'INSERT', rowCount: 1 });
      expect((await db.admin('SELECT x FROM leak_probe')).rows).toEqual([{ x: 1 }]);
    } finally {
      await single.close();
    }
  });

  it('answers the OPTIONS preflight of an origin it was given', async () => {
    const own = await startNeonProxy({ databaseUrls: [db.url], port: 0, allowedOrigins: ['http://app.local'] });
    const res = await fetch(`${own.url}/sql`, {
      method: 'OPTIONS',
      headers: {
        Origin: 'http://app.local',
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'neon-connection-string',
      },
    });
    await own.close();
    expect(res.status).toBe(204);
    expect(res.headers.get('access-control-allow-origin')).toBe('http://app.local');
    expect(res.headers.get('access-control-allow-methods')).toContain('POST');
    expect(res.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('neon-connection-string');
    expect(res.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('neon-batch-isolation-level');
  });

  it('answers unknown paths with a 404 JSON error, and GET /sql with 405', async () => {
    const res = await fetch(`${proxy.url}/nope`);
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ message: expect.stringContaining('/nope') });
    expect((await fetch(`${proxy.url}/sql`)).status).toBe(405);
  });
});

describe('bad requests get 400 with a JSON message', () => {
  it.each([
    ['malformed JSON', '{"query": ', {}, /could not parse the HTTP request body/],
    ['a body that is not a query', '[1,2]', {}, /must be an object/],
    ['a non-string query', '{"query": 5, "params": []}', {}, /"query" as a string/],
    ['non-array params', '{"query": "SELECT 1", "params": "x"}', {}, /"params" as an array/],
    ['an unknown isolation level', '{"queries": []}', { 'Neon-Batch-Isolation-Level': 'Chaos' }, /invalid isolation level/],
    [
      'a connection string that is not a URL',
      '{"query": "SELECT 1"}',
      { 'Neon-Connection-String': 'not a url' },
      /invalid connection string/,
    ],
    [
      'a connection string without a database',
      '{"query": "SELECT 1"}',
      { 'Neon-Connection-String': 'postgres://u@127.0.0.1:5432' },
      /missing database/,
    ],
  ] as const)('%s', async (_name, body, headers, message) => {
    const res = await post(proxy.url, body, headers);
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toBe('application/json');
    const json = (await res.json()) as { message: string; code: unknown; severity: unknown; detail: unknown };
    expect(json.message).toMatch(message);
    // As Neon: code and severity "" when there is no Postgres error, the other fields null.
    expect(json).toMatchObject({ code: '', severity: '', detail: null });
  });

  it('a missing connection string', async () => {
    const res = await fetch(`${proxy.url}/sql`, { method: 'POST', body: '{"query":"SELECT 1"}' });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ message: 'missing the Neon-Connection-String header' });
  });

  it('the driver reports a 400 as NeonDbError with the message', async () => {
    const sql = neon(db.url);
    const err = await sql.transaction([sql`SELECT 1`], { isolationLevel: 'Chaos' as never }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NeonDbError);
    expect((err as Error).message).toBe('invalid isolation level');
  });
});

describe('targets that are not allowed are refused', () => {
  it('over HTTP with Neon’s 400 JSON error, without echoing credentials', async () => {
    const before = proxy.stats().refusedCount;
    const res = await post(proxy.url, '{"query":"SELECT 1"}', { 'Neon-Connection-String': FOREIGN_URL });
    expect(res.status).toBe(400);
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({ message: 'this proxy does not serve 127.0.0.1:1', code: '', severity: '' });
    expect(text).not.toContain('not-this-one');
    // As from Neon: a NeonDbError with the message, not "Server error (HTTP status 403): {json}".
    const err = await neon(FOREIGN_URL)`SELECT 1`.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NeonDbError);
    expect((err as Error).message).toBe('this proxy does not serve 127.0.0.1:1');
    expect(proxy.stats().refusedCount).toBe(before + 2);
    expect(proxyLog.join('\n')).not.toContain('not-this-one');
  });

  it('over WebSocket: the upgrade is refused and the driver fails to connect', async () => {
    const before = proxy.stats().refusedCount;
    const status = await refusedUpgradeStatus(proxy, '127.0.0.1:1');
    expect(status).toBe(403);
    const pool = new NeonPool({ connectionString: FOREIGN_URL, connectionTimeoutMillis: 5_000 });
    pool.on('error', () => {});
    await expect(pool.query('SELECT 1')).rejects.toThrow();
    await pool.end().catch(() => {});
    expect(proxy.stats().refusedCount).toBe(before + 2);
    expect(proxy.stats().wsActiveCount).toBe(0);
  });

  it('a WebSocket without ?address is a 400, another path a 404', async () => {
    const statusOf = (path: string) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(`ws://${proxy.host}:${proxy.port}${path}`);
        ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
        ws.on('error', () => resolve(-1));
      });
    expect(await statusOf('/v2')).toBe(400);
    expect(await statusOf('/v1')).toBe(404);
  });
});

describe('size limits', () => {
  let small: NeonProxy;

  beforeAll(async () => {
    small = await startNeonProxy({ databaseUrls: [db.url], port: 0, maxRequestBytes: 1024, maxResponseBytes: 4096 });
  });

  afterAll(async () => {
    useNeonProxy(proxy);
    await small?.close();
  });

  it('a request body over the limit gets 413 (Neon: "request is too large")', async () => {
    const res = await post(small.url, JSON.stringify({ query: 'SELECT $1::text', params: ['x'.repeat(2000)] }));
    expect(res.status).toBe(413);
    expect(await res.json()).toMatchObject({ message: 'request is too large (max is 1024 bytes)' });
    const ok = await post(small.url, JSON.stringify({ query: 'SELECT $1::text', params: ['x'.repeat(500)] }));
    expect(ok.status).toBe(200);
  });

  it('a response over the limit gets 507 and the proxy keeps serving', async () => {
    useNeonProxy(small);
    const sql = neon(db.url);
    const err = await sql`SELECT repeat('x', 1000) FROM generate_series(1, 10)`.catch((e: unknown) => e);
    expect(String(err)).toContain('Server error (HTTP status 507): ');
    expect(String(err)).toContain('response is too large (max is 4096 bytes)');
    // Over several statements of a batch too; the half-done transaction is abandoned.
    const batchErr = await sql
      .transaction([sql`SELECT repeat('y', 3000) AS a`, sql`SELECT repeat('z', 3000) AS b`])
      .catch((e: unknown) => e);
    expect(String(batchErr)).toContain('HTTP status 507');
    expect(await sql`SELECT repeat('x', 1000) AS a`).toEqual([{ a: 'x'.repeat(1000) }]);
  });
});

describe('an allowed database that does not answer', () => {
  let lonely: NeonProxy;

  beforeAll(async () => {
    lonely = await startNeonProxy({ databaseUrls: [FOREIGN_URL], port: 0 });
  });

  afterAll(async () => {
    await lonely?.close();
  });

  it('HTTP gets a 5xx JSON error, which the driver reports as a server error', async () => {
    const res = await post(lonely.url, '{"query":"SELECT 1"}', { 'Neon-Connection-String': FOREIGN_URL });
    expect(res.status).toBe(502);
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({ message: expect.stringContaining('ECONNREFUSED') });
    expect(text).not.toContain('not-this-one');
  });

  it('refuses the upgrade with 502 when the TCP connect fails (the database is reached before the WebSocket opens)', async () => {
    const status = await refusedUpgradeStatus(lonely, '127.0.0.1:1');
    expect(status).toBe(502);
    expect(lonely.stats()).toMatchObject({ wsActiveCount: 0 });
  });
});

describe('close()', () => {
  it('drops open WebSockets, stops listening, and returns the same promise twice', async () => {
    const own = await startNeonProxy({ databaseUrls: [db.url], port: 0 });
    const client = await new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(`ws://${own.host}:${own.port}/v2?address=${new URL(db.url).host}`);
      ws.on('open', () => resolve(ws));
      ws.on('error', reject);
    });
    const closed = new Promise<void>((resolve) => client.on('close', () => resolve()));
    expect(own.stats().wsActiveCount).toBe(1);
    const first = own.close();
    expect(own.close()).toBe(first);
    await first;
    await closed;
    expect(own.stats().wsActiveCount).toBe(0);
    await expect(fetch(`${own.url}/sql`, { method: 'OPTIONS' })).rejects.toThrow();
  });
});

describe('terminated backends', () => {
  it('a pg_terminate_backend of the pooled connections does not crash the proxy', async ({ skip }) => {
    if (!db.real) skip('PGlite has a single backend that pg_terminate_backend cannot end; needs TEST_DATABASE_URL');
    const sql = neon(db.url);
    // Warm several pooled connections, one of them busy when the terminate lands.
    await Promise.all([1, 2, 3].map((n) => sql`SELECT ${n}::int AS n`));
    const busy = sql`SELECT pg_sleep(10)`.catch((e: unknown) => e);
    await waitFor(
      async () =>
        (await db.admin(`SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'`)).rowCount === 1,
    );
    // Everything on this database but the admin pool is the proxy's (a pool's application_name
    // is whatever its first request carried, so it is not a reliable filter).
    const proxyBackends = `FROM pg_stat_activity WHERE datname = current_database() AND application_name <> 'poolgate-test-admin'`;
    const killed = await db.admin(`SELECT pg_terminate_backend(pid) ${proxyBackends}`);
    expect(killed.rowCount).toBeGreaterThanOrEqual(2);
    const busyErr = (await busy) as NeonDbError;
    expect(busyErr).toBeInstanceOf(NeonDbError);
    expect(busyErr.code).toBe('57P01');
    await waitFor(async () => (await db.admin(`SELECT 1 ${proxyBackends}`)).rowCount === 0);
    expect(await sql`SELECT 'alive' AS state`).toEqual([{ state: 'alive' }]);
  });

  it('a terminated WebSocket session closes its pipe; new sessions work', async ({ skip }) => {
    if (!db.real) skip('PGlite has a single backend that pg_terminate_backend cannot end; needs TEST_DATABASE_URL');
    const pool = new NeonPool({ connectionString: db.url, max: 1 });
    pool.on('error', () => {});
    const client = await pool.connect();
    client.on('error', () => {});
    const pid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    await db.admin('SELECT pg_terminate_backend($1)', [pid]);
    await waitFor(() => Promise.resolve(proxy.stats().wsActiveCount === 0));
    client.release(true);
    expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await pool.end();
  });
});

describe('CLI', () => {
  it('starts, prints its address without the password, serves a query, exits 0 on SIGTERM', async () => {
    const withPassword = new URL(db.url);
    withPassword.password = 'cli-secret-pw';
    // The tsx binary `npx tsx` resolves to, run directly: npm exec does not forward SIGTERM (it
    // exits 143 and orphans the child), so through npx the CLI's own exit code is unobservable.
    const child = spawn(
      'node_modules/.bin/tsx',
      ['src/local/neon-proxy/cli.ts', '--database-url', withPassword.toString(), '--port', '0', '--allow-origin', 'http://127.0.0.1:8787'],
      {
        cwd: repoRoot,
        env: { ...process.env, DATABASE_URL: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true, // its own process group, so cleanup reaches tsx's child too
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await waitFor(() => Promise.resolve(/listening on http:\/\/\S+:\d+/.test(stdout)), 30_000);
      const firstLine = stdout.split('\n')[0]!;
      expect(firstLine).not.toContain('cli-secret-pw');
      const url = /listening on (http:\/\/\S+:\d+)/.exec(firstLine)![1]!;
      const { hostname, port } = new URL(url);
      useNeonProxy({ host: hostname, port: Number(port) });
      try {
        expect(await neon(db.url)`SELECT 40 + 2 AS answer`).toEqual([{ answer: 42 }]);
      } finally {
        useNeonProxy(proxy);
      }
      // --allow-origin: that origin's preflight is granted, any other refused.
      const preflight = (origin: string) =>
        fetch(`${url}/sql`, { method: 'OPTIONS', headers: { Origin: origin, 'Access-Control-Request-Method': 'POST' } });
      const granted = await preflight('http://127.0.0.1:8787');
      expect(granted.status).toBe(204);
      expect(granted.headers.get('access-control-allow-origin')).toBe('http://127.0.0.1:8787');
      expect((await preflight('https://evil.example')).status).toBe(403);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stdout).toContain('neon-proxy: closed');
      expect(stdout + stderr).not.toContain('cli-secret-pw');
    } finally {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });

  it('bad arguments: exit 1 with one line on stderr and no password', async () => {
    const child = spawn(
      'npx',
      ['tsx', 'src/local/neon-proxy/cli.ts', '--database-url', 'postgres://u:cli-secret-pw@127.0.0.1:5432/x', '--port', 'abc'],
      {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (output += d.toString('utf8')));
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    expect(code).toBe(1);
    const lines = output.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^neon-proxy: --port must be a number/);
    expect(output).not.toContain('cli-secret-pw');
  });

  it.each([
    [['--database-url', 'mysql://u:cli-secret-pw@h/x'], /database URL #1 is invalid/],
    [[], /no database: pass --database-url or set DATABASE_URL/],
    [['--database-url'], /argument missing/],
    [['--bogus', 'postgres://u:cli-secret-pw@h/x'], /Unknown option '--bogus'/],
    [['--database-url', 'postgres://postgres@127.0.0.1:5432/x', 'postgres://u:cli-secret-pw@h/x'], /unexpected argument #3/],
    [['--database-url', 'postgres://u:cli-secret-pw@h/x', '--allow-origin', 'ftp://x'], /--allow-origin must be an http\(s\) origin/],
  ])('runNeonProxyCli(%j) returns 1', async (argv, message) => {
    const lines: string[] = [];
    const original = console.error;
    console.error = (line: string) => lines.push(line);
    try {
      expect(await runNeonProxyCli(argv, {})).toBe(1);
    } finally {
      console.error = original;
    }
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(message);
    expect(lines[0]).not.toContain('cli-secret-pw');
  });
});

async function waitFor(check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
