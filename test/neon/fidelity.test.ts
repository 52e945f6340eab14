/**
 * Where the local Neon proxy must behave as Neon's own proxy does (issue 11): every HTTP request
 * runs in a clean session, a client that goes away stops its statement (HTTP and WebSocket), and
 * without `Neon-Raw-Text-Output: true` values come back as typed JSON. Raw fetch and a raw
 * WebSocket against the real proxy and real PostgreSQL; the real driver where it matters.
 */
import { randomBytes } from 'node:crypto';
import { neon, Pool as NeonPool } from '@neondatabase/serverless';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { openRawSocket, pgMessage, startupMessage, useNeonProxy } from '../helpers/neon.js';

let db: TestDatabase;
/** The proxy under test with one pooled connection, so each request surely reuses the last one's. */
let single: NeonProxy;
/** The default-sized pool (10). */
let proxy: NeonProxy;
const role = `poolgate_reader_${randomBytes(4).toString('hex')}`;

beforeAll(async () => {
  db = await createTestDatabase('poolgate_neon_fidelity');
  single = await startNeonProxy({ databaseUrls: [db.url], port: 0, poolMaxPerTarget: 1 });
  proxy = await startNeonProxy({ databaseUrls: [db.url], port: 0 });
  useNeonProxy(proxy);
  await db.admin(`CREATE SCHEMA tenant_a; CREATE TABLE tenant_a.t (x text); INSERT INTO tenant_a.t VALUES ('tenant_a');
    CREATE TABLE public.t (x text); INSERT INTO public.t VALUES ('public'); CREATE SEQUENCE probe_seq`);
  if (db.real) await db.admin(`CREATE ROLE ${role}; GRANT USAGE ON SCHEMA tenant_a TO ${role}`);
});

afterAll(async () => {
  await single?.close();
  await proxy?.close();
  if (db?.real) await db.admin(`DROP OWNED BY ${role}; DROP ROLE ${role}`).catch(() => {});
  await db?.drop();
});

interface Answer {
  status: number;
  body: { rows?: unknown[]; message?: string; [key: string]: unknown };
}

/** A raw `POST /sql`, as the driver sends it unless `headers` say otherwise. */
async function post(base: string, body: unknown, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Answer> {
  const res = await fetch(`${base}/sql`, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'Neon-Connection-String': db.url, 'Neon-Raw-Text-Output': 'true', 'Neon-Array-Mode': 'true', ...headers },
    signal,
  });
  return { status: res.status, body: (await res.json()) as Answer['body'] };
}

const ask = (base: string, query: string) => post(base, { query, params: [] });

describe('every HTTP request runs in a clean session', () => {
  it.each([
    ['search_path', 'SET search_path TO tenant_a, public', 'SELECT x FROM t', [['public']]],
    [
      'set_config(…, false) in a batch',
      { batch: "SELECT set_config('search_path', 'tenant_a, public', false)" },
      'SELECT x FROM t',
      [['public']],
    ],
    ['statement_timeout', 'SET statement_timeout = 50', 'SELECT pg_sleep(0.2)::text AS slept', [['']]],
    ['a temp table', 'CREATE TEMP TABLE tmp_probe (x int)', "SELECT to_regclass('pg_temp.tmp_probe')::text", [[null]]],
    ['a prepared statement', 'PREPARE probe_stmt AS SELECT 1', 'SELECT count(*)::int FROM pg_prepared_statements', [['0']]],
    ['LISTEN', 'LISTEN probe_channel', 'SELECT count(*)::int FROM pg_listening_channels()', [['0']]],
    ['a sequence’s currval', "SELECT nextval('probe_seq')", "SELECT currval('probe_seq')", '55000'],
  ] as const)('%s set in one request is gone in the next', async (_name, setup, probe, expected) => {
    const setupAnswer =
      typeof setup === 'string' ? await ask(single.url, setup) : await post(single.url, { queries: [{ query: setup.batch, params: [] }] });
    expect(setupAnswer.status, JSON.stringify(setupAnswer.body)).toBe(200);
    const answer = await ask(single.url, probe);
    if (typeof expected === 'string') {
      // "currval of sequence … is not yet defined in this session"
      expect(answer.body.code).toBe(expected);
      return;
    }
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    expect(answer.body.rows).toEqual(expected);
  });

  it('SET ROLE does not outlive its request', async ({ skip }) => {
    if (!db.real) skip('roles need TEST_DATABASE_URL');
    expect((await ask(single.url, `SET ROLE ${role}`)).status).toBe(200);
    expect((await ask(single.url, 'SELECT current_user::text')).body.rows).toEqual([['postgres']]);
    expect((await ask(single.url, `SET SESSION AUTHORIZATION ${role}`)).status).toBe(200);
    expect((await ask(single.url, 'SELECT session_user::text, current_user::text')).body.rows).toEqual([['postgres', 'postgres']]);
  });

  it('a session advisory lock is released when its request ends', async ({ skip }) => {
    if (!db.real) skip('needs a second backend: TEST_DATABASE_URL');
    expect((await ask(single.url, 'SELECT pg_advisory_lock(42)')).status).toBe(200);
    // The next request waits for the pooled connection, so its reset has run by then.
    expect((await ask(single.url, 'SELECT 1')).status).toBe(200);
    const other = await db.admin('SELECT pg_try_advisory_lock(42) AS got');
    expect(other.rows).toEqual([{ got: true }]);
    await db.admin('SELECT pg_advisory_unlock(42)');
  });

  it('the reset keeps the connection: the request after a SET runs on the same backend, not a new one', async ({ skip }) => {
    if (!db.real) skip('PGlite has one backend for every connection: needs TEST_DATABASE_URL');
    // What the reset costs is measured by the bench (edge reads through the proxy), not asserted here.
    const backend = async () => (await ask(single.url, 'SELECT pg_backend_pid()::text AS pid')).body.rows;
    const first = await backend();
    expect((await ask(single.url, 'SET search_path TO tenant_a')).status).toBe(200);
    expect(await backend()).toEqual(first);
  });
});

/** Long enough that a statement gone from pg_stat_activity was surely stopped, not finished. */
const SLEEP_S = 600;

/** Whether a statement carrying `marker` is running on the server. */
async function running(marker: string): Promise<boolean> {
  const r = await db.admin(`SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()`, [
    `%${marker}%`,
  ]);
  return (r.rowCount ?? 0) > 0;
}

describe('a client that goes away stops its statement', () => {
  // Each statement would run for ten minutes on its own: gone at all means the proxy stopped it.
  it('an aborted HTTP query is stopped on the server', async ({ skip }) => {
    if (!db.real) skip('needs pg_stat_activity: TEST_DATABASE_URL');
    const marker = `abort_probe_${randomBytes(3).toString('hex')}`;
    const ac = new AbortController();
    const pending = ask2(proxy.url, `SELECT pg_sleep(${SLEEP_S}) /* ${marker} */`, ac.signal);
    await waitFor(() => running(marker));
    ac.abort();
    await pending;
    await waitFor(async () => !(await running(marker)));
  });

  it('20 aborted long statements do not jam the 10-connection pool', async ({ skip }) => {
    if (!db.real) skip('needs pg_stat_activity: TEST_DATABASE_URL');
    const marker = `jam_probe_${randomBytes(3).toString('hex')}`;
    const ac = new AbortController();
    const pending = Array.from({ length: 20 }, () => ask2(proxy.url, `SELECT pg_sleep(${SLEEP_S}) /* ${marker} */`, ac.signal));
    await waitFor(
      async () =>
        (await db.admin(`SELECT 1 FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active'`, [`%${marker}%`])).rowCount === 10,
    );
    ac.abort();
    await Promise.all(pending);
    // A jammed pool would hold this until the sleeps end, far past the test's timeout.
    const answer = await post(proxy.url, { query: 'SELECT 1 AS one', params: [] });
    expect(answer.body.rows).toEqual([['1']]);
    await waitFor(async () => !(await running(marker)));
  });

  it('a WebSocket closed mid-statement stops the statement', async ({ skip }) => {
    if (!db.real) skip('needs pg_stat_activity: TEST_DATABASE_URL');
    const marker = `ws_probe_${randomBytes(3).toString('hex')}`;
    const { hostname, port, pathname, username } = new URL(db.url);
    const { ws, received } = await openRawSocket(proxy, `${hostname}:${port}`);
    ws.send(startupMessage(username, pathname.slice(1)));
    // ReadyForQuery ('Z', length 5) ends the startup.
    await waitFor(() => Promise.resolve(Buffer.concat(received).includes(Buffer.from([0x5a, 0, 0, 0, 5]))));
    ws.send(pgMessage('Q', `SELECT pg_sleep(${SLEEP_S}) /* ${marker} */\0`));
    await waitFor(() => running(marker));
    ws.terminate();
    await waitFor(async () => !(await running(marker)));
  });
});

/** `ask`, aborted by `signal`; resolves either way (an abort is the point). */
function ask2(base: string, query: string, signal: AbortSignal): Promise<unknown> {
  return post(base, { query, params: [] }, {}, signal).catch((e: unknown) => e);
}

describe('Neon-Raw-Text-Output', () => {
  const typed = `SELECT 1::int AS i, (-2)::int2 AS s, true AS b, false AS bf, ARRAY[1,2] AS a, '{"k":[1,2.5],"n":null}'::jsonb AS j,
    '[1]'::json AS js, 9007199254740993::int8 AS big, 1.50::numeric AS n, 1.5::float8 AS f, 0.25::float4 AS f4,
    'NaN'::float8 AS nan, '-Infinity'::float8 AS ninf, NULL::int AS z, ARRAY['a b', NULL, 'NULL', 'q"\\']::text[] AS ta,
    ARRAY[[true,false],[NULL,true]] AS ba, ARRAY[1,2]::int8[] AS ba8, '{}'::int[] AS empty, 'x'::text AS t, '2024-01-02'::date AS d,
    ARRAY['{"a":1}'::jsonb] AS ja, '[0:1]={5,6}'::int[] AS bounded`;

  it('absent: values come back typed as Neon types them', async () => {
    const res = await post(proxy.url, { query: typed, params: [] }, { 'Neon-Raw-Text-Output': '', 'Neon-Array-Mode': 'false' });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.rows).toEqual([
      {
        i: 1,
        s: -2,
        b: true,
        bf: false,
        a: [1, 2],
        j: { k: [1, 2.5], n: null },
        js: [1],
        big: '9007199254740993',
        n: '1.50',
        f: 1.5,
        f4: 0.25,
        nan: 'NaN',
        ninf: '-Infinity',
        z: null,
        ta: ['a b', null, 'NULL', 'q"\\'],
        ba: [
          [true, false],
          [null, true],
        ],
        ba8: ['1', '2'],
        empty: [],
        t: 'x',
        d: '2024-01-02',
        ja: [{ a: 1 }],
        bounded: [5, 6],
      },
    ]);
  });

  it('"true": every value as Postgres text', async () => {
    const res = await post(
      proxy.url,
      { query: 'SELECT 1::int AS i, true AS b, ARRAY[1,2] AS a', params: [] },
      { 'Neon-Array-Mode': 'false' },
    );
    expect(res.body.rows).toEqual([{ i: '1', b: 't', a: '{1,2}' }]);
  });

  it('the real driver (which always asks for raw text) still parses its own types', async () => {
    const sql = neon(db.url);
    expect(await sql`SELECT 1::int AS i, true AS b, ARRAY[1,2] AS a, '{"k":1}'::jsonb AS j, 5::int8 AS big`).toEqual([
      { i: 1, b: true, a: [1, 2], j: { k: 1 }, big: '5' },
    ]);
  });
});

describe('smaller Neon-isms', () => {
  it('loopback names are one host in the allow-list: localhost = 127.0.0.1 = ::1', async () => {
    const port = new URL(db.url).port || '5432';
    const viaName = new URL(db.url);
    viaName.hostname = 'localhost';
    const own = await startNeonProxy({ databaseUrls: [viaName.toString()], port: 0 });
    try {
      for (const host of ['127.0.0.1', '[::1]', 'localhost']) {
        const url = new URL(db.url);
        url.hostname = host;
        const res = await post(own.url, { query: 'SELECT 1', params: [] }, { 'Neon-Connection-String': url.toString() });
        // ::1 may have no server listening (a 502), but it must not be refused.
        expect(res.body.message ?? '', host).not.toMatch(/does not serve/);
      }
      const status = await new Promise<number>((resolve) => {
        const ws = new WebSocket(`ws://${own.host}:${own.port}/v2?address=127.0.0.1:${port}`);
        ws.on('open', () => {
          ws.close();
          resolve(101);
        });
        ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
        ws.on('error', () => {});
      });
      expect(status).toBe(101);
      expect(own.stats().refusedCount).toBe(0);
    } finally {
      await own.close();
    }
  });

  it('a Neon ?options=endpoint%3D… is accepted and not passed to Postgres', async () => {
    const url = new URL(db.url);
    url.searchParams.set('options', 'endpoint=ep-cool-darkness-123456 -c search_path=tenant_a,public');
    const res = await post(proxy.url, { query: 'SELECT x FROM t', params: [] }, { 'Neon-Connection-String': url.toString() });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.rows).toEqual([['tenant_a']]);
    const sql = neon(`${db.url}?options=endpoint%3Dep-cool-darkness-123456`);
    expect(await sql`SELECT 1 AS one`).toEqual([{ one: 1 }]);
  });

  it('COPY … TO STDOUT / FROM STDIN over HTTP is refused clearly, not a 0-row success', async () => {
    for (const query of ['COPY (SELECT 1) TO STDOUT', '/* c */ copy t FROM stdin']) {
      const res = await ask(proxy.url, query);
      expect(res.status, query).toBe(400);
      expect(res.body.message).toMatch(/COPY .* not supported over HTTP/);
    }
  });
});

describe('log lines follow the log level', () => {
  it.each(['silent', 'info', 'debug'] as const)('%s', async (logLevel) => {
    const lines: string[] = [];
    const own = await startNeonProxy({ databaseUrls: [db.url], port: 0, log: (line) => lines.push(line), logLevel });
    try {
      expect((await ask(own.url, 'SELECT 1')).status).toBe(200);
      await post(own.url, { query: 'SELECT 1', params: [] }, { 'Neon-Connection-String': 'postgres://u@127.0.0.1:1/x' });
      useNeonProxy(own);
      const pool = new NeonPool({ connectionString: db.url, max: 1 });
      await pool.query('SELECT 1');
      await pool.end();
      await waitFor(() => Promise.resolve(own.stats().wsActiveCount === 0));
    } finally {
      useNeonProxy(proxy);
      await own.close();
    }
    const expected = {
      silent: [],
      info: [/POST \/sql 400 /],
      debug: [/POST \/sql 200 /, /POST \/sql 400 /, /WebSocket to .* closed \(session ended\)/],
    }[logLevel];
    expect(lines).toHaveLength(expected.length);
    expected.forEach((pattern, i) => expect(lines[i]).toMatch(pattern));
    // A normal end of a WebSocket session is never reported as the database closing on it.
    expect(lines.join('\n')).not.toContain('database closed the connection');
  });
});

async function waitFor(check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
