/**
 * App-level tests in milliseconds: the real app (createApp) and the real execution core
 * (createDatabase) over an in-memory session connector, driven with `app.request(...)`. No
 * database, no socket. What is under test: the request id and Server-Timing, per-route stats,
 * error mapping, the body read once, idempotency, the retry rules by route intent, and the
 * cancel-on-client-abort rule.
 *
 * The fake connector answers exactly the statements the idempotency module and the test routes
 * send (matched by prefix), keeps writes of an open transaction apart until COMMIT, and lets a
 * test make chosen statements (or acquires) fail or hang.
 */
import { Hono, type Context } from 'hono';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import { createApp, createPoolgate } from './app.js';
import type { Session, SessionConnector, SessionSource } from './db/core/connector.js';
import { createDatabase } from './db/core/database.js';
import { beginStatement } from './db/connectors/pg-session.js';
import type { Db, QueryResult, Row } from './db/types.js';
import { markFailure, notFound } from './errors.js';
import { Drain } from './lifecycle/drain.js';
import { jsonBody } from './routes/input.js';
import { routeNotFound } from './routes/not-found.js';
import type { AppEnv, RouteSpec } from './routes/types.js';
import { StatsRegistry } from './stats/registry.js';

// ---------------------------------------------------------------------------------------------
// The fake: sessions over two in-memory tables (things, poolgate_idempotency_keys) and advisory locks.

type Outcome = { reject: unknown } | 'hang';

interface FakeSession extends Session {
  readonly id: number;
  readonly statements: string[];
  cancelled: boolean;
  /** Set by release(): whether the core discarded the session. */
  discarded?: boolean;
}

type KeyRow = {
  request_hash: string;
  status: number;
  body: string | null;
  expiresAt: number;
};

const pgError = (code: string, message = `fake error ${code}`) => Object.assign(new Error(message), { code });
const ok = (rows: Row[] = [], rowCount: number | null = rows.length): QueryResult => ({ rows, rowCount });

class FakeConnector implements SessionConnector {
  readonly kind = 'pg-pool';
  readonly upstream = 'fake-postgres';
  readonly sessions: FakeSession[] = [];
  readonly things = new Map<string, Row>();
  readonly keys = new Map<string, KeyRow>();
  readonly #locks = new Map<string, FakeSession>();
  readonly #rules: { match: RegExp; outcome: Outcome; left: number }[] = [];
  readonly #acquireFaults: unknown[] = [];
  #onHang: ((s: FakeSession) => void)[] = [];
  readonly #source: SessionSource = { acquire: () => this.#acquire() };

  source(): SessionSource {
    return this.#source;
  }
  close(): Promise<void> {
    return Promise.resolve();
  }

  /** The next `times` statements matching `match` fail with `outcome` (or hang until cancelled). */
  inject(match: RegExp, outcome: Outcome, times = 1): void {
    this.#rules.push({ match, outcome, left: times });
  }
  /** The next acquires fail with these values, in order. */
  failAcquire(...errors: unknown[]): void {
    this.#acquireFaults.push(...errors);
  }
  /** Resolves with the session of the next statement that hangs. */
  nextHang(): Promise<FakeSession> {
    return new Promise((resolve) => this.#onHang.push(resolve));
  }
  statementsMatching(re: RegExp): number {
    return this.sessions.flatMap((s) => s.statements).filter((t) => re.test(t)).length;
  }

  #acquire(): Promise<{ session: FakeSession; opened: boolean }> {
    // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- non-Error failures are part of what is tested
    if (this.#acquireFaults.length > 0) return Promise.reject(this.#acquireFaults.shift());
    const session = this.#session(this.sessions.length + 1);
    this.sessions.push(session);
    return Promise.resolve({ session, opened: true });
  }

  #session(id: number): FakeSession {
    let pending: (() => void)[] = []; // writes of the open transaction, applied at COMMIT
    let inTx = false;
    let hung: ((err: unknown) => void) | undefined;
    const end = (commit: boolean) => {
      if (commit) for (const w of pending) w();
      pending = [];
      inTx = false;
      for (const [k, holder] of this.#locks) if (holder === session) this.#locks.delete(k);
    };
    const write = (w: () => void) => (inTx ? pending.push(w) : w());
    const session: FakeSession = {
      id,
      statements: [],
      cancelled: false,
      query: (text, params = []) => {
        if (session.discarded !== undefined) return Promise.reject(new Error('fake: statement on a released session'));
        session.statements.push(text);
        const rule = this.#rules.find((r) => r.left > 0 && r.match.test(text));
        if (rule) {
          rule.left--;
          // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- non-Error failures are part of what is tested
          if (rule.outcome !== 'hang') return Promise.reject(rule.outcome.reject);
          return new Promise<QueryResult>((_, reject) => {
            hung = reject;
            for (const f of this.#onHang.splice(0)) f(session);
          });
        }
        const [p0, p1, p2, p3, p4] = params as [string, string, number, string | null, number];
        if (/^BEGIN/.test(text)) return ((inTx = true), Promise.resolve(ok()));
        if (text === 'COMMIT' || text === 'ROLLBACK') return (end(text === 'COMMIT'), Promise.resolve(ok()));
        if (text.startsWith('SELECT pg_try_advisory_xact_lock(')) {
          const holder = this.#locks.get(p0);
          if (!holder) this.#locks.set(p0, session);
          return Promise.resolve(ok([{ ok: !holder || holder === session }]));
        }
        if (text.startsWith('SELECT request_hash, status, body FROM poolgate_idempotency_keys WHERE key = $1')) {
          const row = this.keys.get(p0);
          return Promise.resolve(ok(row && row.expiresAt > Date.now() ? [row] : []));
        }
        if (text.startsWith('DELETE FROM poolgate_idempotency_keys WHERE key = $1'))
          return (write(() => this.keys.delete(p0)), Promise.resolve(ok()));
        if (text.startsWith('INSERT INTO poolgate_idempotency_keys')) {
          write(() => this.keys.set(p0, { request_hash: p1, status: p2, body: p3, expiresAt: Date.now() + p4 }));
          return Promise.resolve(ok([], 1));
        }
        if (text.startsWith('INSERT INTO things')) {
          if (this.things.has(p0)) return Promise.reject(pgError('23505', 'duplicate key value violates unique constraint "things_pkey"'));
          const row = { id: p0, name: p1 };
          write(() => this.things.set(p0, row));
          return Promise.resolve(ok([row]));
        }
        if (text.startsWith('SELECT id, name FROM things WHERE id = $1')) {
          const row = this.things.get(p0);
          return Promise.resolve(ok(row ? [row] : []));
        }
        if (text.startsWith('DELETE FROM things WHERE id = $1')) {
          const had = this.things.has(p0);
          write(() => this.things.delete(p0));
          return Promise.resolve(ok([], had ? 1 : 0));
        }
        return Promise.reject(new Error(`fake: unexpected statement: ${text}`));
      },
      begin: (o) => session.query(beginStatement(o)).then(() => undefined),
      commit: () => session.query('COMMIT'),
      rollback: () => session.query('ROLLBACK').then(() => undefined),
      cancel: () => {
        session.cancelled = true;
        hung?.(pgError('57014', 'canceling statement due to user request'));
      },
      release: (discard) => {
        session.discarded = discard;
        end(false); // a session given back (or closed) mid-transaction rolls it back
      },
    };
    return session;
  }
}

// ---------------------------------------------------------------------------------------------
// A test route table of our own, and the app over the fake.

const thingInput = z.object({ id: z.string().min(1).max(40), name: z.string().min(1).max(100) });
type ThingInput = z.infer<typeof thingInput>;

const BODY_LIMIT = 256;

function setup(options: { requestTimeoutMs?: number; drain?: Drain } = {}) {
  const fake = new FakeConnector();
  const database = createDatabase({ sessions: fake });
  const registry = new StatsRegistry({ scope: 'app-test', pool: () => database.stats(), breakers: () => database.breakers() });
  const calls = { read: 0, create: 0, remove: 0, parsed: [] as ThingInput[] };
  const logs: string[] = [];
  const idOf = (c: Context<AppEnv>) => c.req.param('id') ?? '';
  const routes: RouteSpec[] = [
    {
      method: 'GET',
      path: '/api/things/:id',
      kind: 'read',
      run: async (c, db) => {
        calls.read++;
        const { rows } = await db.query('SELECT id, name FROM things WHERE id = $1', [idOf(c)]);
        if (!rows[0]) throw notFound('Thing', idOf(c));
        return { status: 200, body: rows[0] };
      },
    },
    {
      method: 'POST',
      path: '/api/things',
      kind: 'transactional',
      // The body is parsed inside the transaction on purpose: a re-run must see the same bytes.
      run: (c, db: Db) =>
        db.transaction(async (tx) => {
          calls.create++;
          const input = await jsonBody(c, thingInput);
          calls.parsed.push(input);
          const { rows } = await tx.query('INSERT INTO things (id, name) VALUES ($1, $2) RETURNING id, name', [input.id, input.name]);
          return { status: 201 as const, body: rows[0] };
        }),
    },
    {
      method: 'DELETE',
      path: '/api/things/:id',
      kind: 'transactional',
      run: async (c, db) => {
        calls.remove++;
        const { rowCount } = await db.query('DELETE FROM things WHERE id = $1', [idOf(c)]);
        if (!rowCount) throw notFound('Thing', idOf(c));
        return { status: 204 };
      },
    },
  ];
  const deps = {
    database,
    registry,
    bodyLimitBytes: BODY_LIMIT,
    requestTimeoutMs: options.requestTimeoutMs,
    drain: options.drain,
    log: (line: string) => logs.push(line),
  };
  const app = createApp({ routes, ...deps });
  const post = (body: string, headers: Record<string, string> = {}) =>
    app.request('/api/things', { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });
  const stats = async () => ((await (await app.request('/stats')).json()) as { routes: any[]; pool?: any }).routes;
  const routeStats = async (method: string, route: string) => (await stats()).find((r) => r.method === method && r.route === route);
  /** poolgate's parts over the same database, for an application's own Hono app. */
  const parts = () => createPoolgate(deps);
  return { app, routes, parts, fake, database, registry, calls, logs, post, stats, routeStats };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const errorOf = async (res: Response) => ((await res.json()) as { error: { code: string; message: string; requestId: string } }).error;
const thing = (id: string, name = `thing ${id}`) => JSON.stringify({ id, name });

/** Each test takes milliseconds; a regression that leaves a fake statement or fetch hanging fails fast, not at the suite's 60 s. */
const FAST = { timeout: 2_000 };

beforeEach(() => {
  // Retry backoff is uniform in [0, cap): with random() = 0 every retry starts at once.
  vi.spyOn(Math, 'random').mockReturnValue(0);
});
afterEach(() => {
  vi.restoreAllMocks();
});

// ---------------------------------------------------------------------------------------------

describe('conn-stats: request id, Server-Timing, per-route stats', FAST, () => {
  it('echoes a valid incoming x-request-id and replaces an invalid one', async () => {
    const t = setup();
    t.fake.things.set('a', { id: 'a', name: 'A' });
    const echoed = await t.app.request('/api/things/a', { headers: { 'x-request-id': 'client-req_1.2:3' } });
    expect(echoed.status).toBe(200);
    expect(echoed.headers.get('x-request-id')).toBe('client-req_1.2:3');

    for (const bad of ['has spaces', 'x'.repeat(129), 'semi;colon', '']) {
      const res = await t.app.request('/api/things/a', { headers: { 'x-request-id': bad } });
      expect(res.headers.get('x-request-id'), JSON.stringify(bad)).toMatch(UUID);
    }
    const none = await t.app.request('/api/things/a');
    expect(none.headers.get('x-request-id')).toMatch(UUID);
    expect(none.headers.get('x-request-id')).not.toBe(echoed.headers.get('x-request-id'));
  });

  it('every response carries its own Server-Timing db entry: client kind and statement count', async () => {
    const t = setup();
    t.fake.things.set('a', { id: 'a', name: 'A' });
    const read = await t.app.request('/api/things/a');
    expect(read.headers.get('server-timing')).toMatch(/(^|, )db;dur=\d+\.\d\d;desc="pg-pool 1q"/);
    expect(read.headers.get('server-timing')).toMatch(/^acquire;dur=\d+\.\d\d, db;.*, total;dur=\d+\.\d\d$/);

    const created = await t.post(thing('b'));
    expect(created.status).toBe(201);
    expect(created.headers.get('server-timing')).toContain('desc="pg-pool 3q"'); // BEGIN, INSERT, COMMIT

    const health = await t.app.request('/health');
    expect(health.headers.get('server-timing')).toContain('desc="none 0q"');
    expect(health.headers.get('x-request-id')).toMatch(UUID);

    // Error answers get them too (the handler never built its own headers).
    const missing = await t.app.request('/api/things/nope');
    expect(missing.status).toBe(404);
    expect(missing.headers.get('server-timing')).toContain('desc="pg-pool 1q"');
    const id = missing.headers.get('x-request-id');
    expect(id).toMatch(UUID);
    expect((await errorOf(missing)).requestId).toBe(id);
  });

  it('/stats counts requests under their route pattern, never the raw URL', async () => {
    const t = setup();
    t.fake.things.set('a', { id: 'a', name: 'A' });
    await t.app.request('/api/things/a');
    await t.app.request('/api/things/a');
    await t.app.request('/api/things/zzz'); // 404 from the route
    await t.post(thing('b'));
    await t.app.request('/no/such/route');

    const routes = await t.stats();
    expect(routes.map((r) => r.route)).not.toContain('/api/things/a');
    const read = routes.find((r) => r.method === 'GET' && r.route === '/api/things/:id');
    expect(read).toMatchObject({ count: 3, errorCount: 1, statusClasses: { '2xx': 2, '4xx': 1 }, clients: { 'pg-pool': 3 } });
    expect(read.queries).toEqual({ sum: 3, perRequest: 1 });
    expect(routes.find((r) => r.method === 'POST' && r.route === '/api/things')).toMatchObject({ count: 1, queries: { sum: 3 } });
    expect(routes.find((r) => r.route === '(unmatched)')).toMatchObject({ method: 'GET', count: 1, statusClasses: { '4xx': 1 } });
  });
});

describe('error mapping: JSON with a stable code, never a stack', FAST, () => {
  it('a unique violation (23505) → 409 conflict', async () => {
    const t = setup();
    expect((await t.post(thing('dup'))).status).toBe(201);
    const res = await t.post(thing('dup'));
    expect(res.status).toBe(409);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await errorOf(res)).toMatchObject({ code: 'conflict' });
    expect(t.fake.things.size).toBe(1);
  });

  it('a deadlock (40P01) on every attempt → 503 database_unavailable + Retry-After, after 3 runs, nothing written', async () => {
    const t = setup();
    t.fake.inject(/^INSERT INTO things/, { reject: pgError('40P01', 'deadlock detected') }, Infinity);
    const res = await t.post(thing('d'));
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('1');
    const error = await errorOf(res);
    expect(error.code).toBe('database_unavailable');
    expect(JSON.stringify(error)).not.toContain('deadlock detected'); // no driver message
    expect(t.calls.create).toBe(3);
    expect(t.fake.sessions.map((s) => s.statements.at(-1))).toEqual(['ROLLBACK', 'ROLLBACK', 'ROLLBACK']);
    expect(t.fake.sessions.every((s) => s.discarded === false)).toBe(true); // rolled back cleanly: reusable
    expect(t.fake.things.size).toBe(0);
    expect((await t.routeStats('POST', '/api/things')).retryCount).toBe(2);
  });

  it('a broken connection (08006) mid-transaction → 503 + Retry-After, session discarded, not re-run', async () => {
    const t = setup();
    t.fake.inject(/^INSERT INTO things/, { reject: pgError('08006', 'connection failure') });
    const res = await t.post(thing('c'));
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('2');
    expect((await errorOf(res)).code).toBe('database_unavailable');
    expect(t.calls.create).toBe(1);
    expect(t.fake.sessions).toHaveLength(1);
    expect(t.fake.sessions[0]!.discarded).toBe(true);
    expect(t.logs.join('\n')).toMatch(/→ 503 database_unavailable \(Error 08006\)/);
  });

  it('a refused connect (ECONNREFUSED) is retried, and once out of attempts → 503 database_unavailable', async () => {
    const t = setup();
    const refused = () => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
    t.fake.failAcquire(refused(), refused(), refused());
    const res = await t.app.request('/api/things/a');
    expect(res.status).toBe(503);
    expect((await errorOf(res)).code).toBe('database_unavailable');
    expect(t.calls.read).toBe(1);
    expect(t.fake.sessions).toHaveLength(0); // three attempts, none got a session
    expect((await t.routeStats('GET', '/api/things/:id')).retryCount).toBe(2);
  });

  it.each([
    ['a plain object', () => ({ weird: true })],
    ['an Event (a socket ErrorEvent)', () => new Event('error')],
    ['a string', () => 'boom'],
  ])('%s thrown by a statement → 500 JSON internal, no stack', async (_name, make) => {
    const t = setup();
    t.fake.inject(/^SELECT id, name FROM things/, { reject: make() });
    const res = await t.app.request('/api/things/a', { headers: { 'x-request-id': 'odd-1' } });
    expect(res.status).toBe(500);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const text = await res.text();
    expect(JSON.parse(text)).toEqual({ error: { code: 'internal', message: expect.any(String), requestId: 'odd-1' } });
    expect(text).not.toMatch(/\bat |stack|weird|\.ts:/);
    expect(res.headers.get('x-request-id')).toBe('odd-1');
    expect(t.fake.sessions[0]!.discarded).toBe(false); // not a connection error: the session is fine
  });

  it('a non-Error thrown by acquire → 500 JSON internal', async () => {
    const t = setup();
    t.fake.failAcquire(new Event('error'));
    const res = await t.post(thing('e'));
    expect(res.status).toBe(500);
    expect(await errorOf(res)).toMatchObject({ code: 'internal' });
    expect(t.calls.create).toBe(0);
  });

  // A non-Error value used to pass conn-stats as a raw throw, so /stats recorded the placeholder 200.
  it('a non-Error thrown by a route is counted as a 5xx in /stats', async () => {
    const t = setup();
    t.fake.inject(/^SELECT id, name FROM things/, { reject: { weird: true } });
    expect((await t.app.request('/api/things/a')).status).toBe(500);
    expect(await t.routeStats('GET', '/api/things/:id')).toMatchObject({ statusClasses: { '5xx': 1 }, errorCount: 1 });
  });

  it('a known path with another method → 405 method_not_allowed JSON with Allow', async () => {
    const t = setup();
    const put = await t.app.request('/api/things/a', { method: 'PUT' });
    expect(put.status).toBe(405);
    expect(put.headers.get('allow')).toBe('GET, DELETE, HEAD');
    expect(await errorOf(put)).toMatchObject({ code: 'method_not_allowed' });
    const post = await t.app.request('/health', { method: 'POST' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    expect((await t.app.request('/api/things/a/more', { method: 'PUT' })).status).toBe(404);
  });

  it('no route → 404 route_not_found JSON', async () => {
    const t = setup();
    const res = await t.app.request('/api/nothing-here', { method: 'PUT' });
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await errorOf(res)).toMatchObject({ code: 'route_not_found', message: 'No route for PUT at this path.' });
  });

  it('the 404 does not echo the request path', async () => {
    const t = setup();
    const res = await t.app.request('/etc/passwd%3Cscript%3E');
    expect(res.status).toBe(404);
    const text = await res.text();
    expect(text).not.toContain('passwd');
    expect(text).not.toContain('/etc');
  });

  it("an application's own Hono app answers its misses the same way with routeNotFound(app), over every route it serves", async () => {
    const t = setup();
    const pg = t.parts();
    const own = new Hono();
    own.get('/', (c) => c.text('home'));
    own.route('/', pg.routes(t.routes));
    own.route('/ops', pg.ops());
    own.notFound(routeNotFound(own));
    own.post('/later', (c) => c.text('added after routeNotFound'));

    const cases = [
      ['PUT', '/api/things/a', 'GET, DELETE, HEAD'],
      ['POST', '/ops/health', 'GET, HEAD'],
      ['DELETE', '/', 'GET, HEAD'],
      ['GET', '/later', 'POST'],
    ] as const;
    for (const [method, path, allow] of cases) {
      const res = await own.request(path, { method });
      expect(res.status, `${method} ${path}`).toBe(405);
      expect(res.headers.get('allow'), `${method} ${path}`).toBe(allow);
      expect(await errorOf(res)).toMatchObject({ code: 'method_not_allowed' });
    }
    const none = await own.request('/api/nothing-here', { method: 'PUT' });
    expect(none.status).toBe(404);
    expect(none.headers.get('content-type')).toMatch(/^application\/json/);
    const error = await errorOf(none);
    expect(error).toMatchObject({
      code: 'route_not_found',
      message: 'No route for PUT at this path.',
      requestId: expect.stringMatching(UUID),
    });
    expect(none.headers.get('x-request-id')).toBe(error.requestId);
    expect((await own.request('/api/things/a/more')).status).toBe(404);
  });

  it('invalid JSON → 400 invalid_json; invalid UTF-8 → 400 invalid_json; schema mismatch → 400 validation_failed', async () => {
    const t = setup();
    const bad = await t.post('{"id": "a", ');
    expect(bad.status).toBe(400);
    expect((await errorOf(bad)).code).toBe('invalid_json');

    const latin1 = await t.app.request('/api/things', {
      method: 'POST',
      body: new Uint8Array([0x7b, 0xff, 0x7d]),
      headers: { 'content-type': 'application/json' },
    });
    expect(latin1.status).toBe(400);
    expect((await errorOf(latin1)).code).toBe('invalid_json');

    const wrong = await t.post(JSON.stringify({ id: '', name: 3 }));
    expect(wrong.status).toBe(400);
    const body = (await wrong.json()) as { error: { code: string; fields: { path: string }[] } };
    expect(body.error.code).toBe('validation_failed');
    expect(body.error.fields.map((f) => f.path).sort()).toEqual(['id', 'name']);
    expect(t.fake.things.size).toBe(0);
  });

  it('a body that is not JSON by content type → 415', async () => {
    const t = setup();
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'application/jsonp']) {
      const res = await t.post(thing('a'), { 'content-type': type });
      expect(res.status, type).toBe(415);
      expect((await errorOf(res)).code).toBe('unsupported_media_type');
    }
    expect((await t.post(thing('ok'), { 'content-type': 'application/merge-patch+json; charset=utf-8' })).status).toBe(201);
  });

  it('a body over the limit → 413 + Connection: close, before any database work, however it is framed', async () => {
    const t = setup();
    const big = JSON.stringify({ id: 'big', name: 'x'.repeat(BODY_LIMIT) });
    const declared = await t.post(big);
    expect(declared.status).toBe(413);
    expect(declared.headers.get('connection')).toBe('close');
    expect((await errorOf(declared)).code).toBe('payload_too_large');

    // Chunked, no Content-Length: the byte cap still holds.
    const chunks = [big.slice(0, 100), big.slice(100, 200), big.slice(200)];
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = chunks.shift();
        if (next === undefined) controller.close();
        else controller.enqueue(new TextEncoder().encode(next));
      },
    });
    const chunked = await t.app.request(
      new Request('http://localhost/api/things', {
        method: 'POST',
        body: stream,
        headers: { 'content-type': 'application/json' },
        duplex: 'half',
      } as RequestInit),
    );
    expect(chunked.status).toBe(413);
    expect(t.fake.sessions).toHaveLength(0);
    expect(t.calls.create).toBe(0);
    // Under the limit, the same way, is fine.
    const small = await t.post(thing('s'));
    expect(small.status).toBe(201);
  });
});

describe('the body is read once: a re-run transaction parses the same bytes', FAST, () => {
  it.each([
    ['without an Idempotency-Key', {}],
    ['with an Idempotency-Key', { 'idempotency-key': 'retry-key-1' }],
  ])('40P01 once, then success → 201 (%s)', async (_name, headers: Record<string, string>) => {
    const t = setup();
    t.fake.inject(/^INSERT INTO things/, { reject: pgError('40P01', 'deadlock detected') });
    const res = await t.post(JSON.stringify({ id: 'r', name: 'Rerun ☃' }), headers);
    expect(res.status).toBe(201);
    expect(await res.json()).toEqual({ id: 'r', name: 'Rerun ☃' });
    expect(t.calls.create).toBe(2);
    expect(t.calls.parsed).toEqual([
      { id: 'r', name: 'Rerun ☃' },
      { id: 'r', name: 'Rerun ☃' },
    ]);
    expect(t.fake.sessions).toHaveLength(2);
    expect(t.fake.sessions[0]!.statements.at(-1)).toBe('ROLLBACK');
    expect(t.fake.sessions[1]!.statements.at(-1)).toBe('COMMIT');
    expect([...t.fake.things.keys()]).toEqual(['r']);
    expect(t.fake.keys.size).toBe('idempotency-key' in headers ? 1 : 0);
    expect((await t.routeStats('POST', '/api/things')).retryCount).toBe(1);
  });
});

describe('idempotency', FAST, () => {
  it('same key, same body → the stored answer, replayed; the route ran once', async () => {
    const t = setup();
    const key = { 'idempotency-key': 'key-1' };
    const first = await t.post(thing('k'), key);
    expect(first.status).toBe(201);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    expect(first.headers.get('server-timing')).toContain('desc="pg-pool 7q"');
    const firstBody = await first.text();

    const again = await t.post(thing('k'), key);
    expect(again.status).toBe(201);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(await again.text()).toBe(firstBody);
    expect(again.headers.get('server-timing')).toContain('desc="pg-pool 4q"'); // BEGIN, lock, lookup, COMMIT
    expect(t.calls.create).toBe(1);
    expect(t.fake.statementsMatching(/^INSERT INTO things/)).toBe(1);
    expect(await t.routeStats('POST', '/api/things')).toMatchObject({ count: 2, replayCount: 1 });

    // Without the key, the same body is a new request (and conflicts).
    expect((await t.post(thing('k'))).status).toBe(409);
  });

  it('same key, different body (or path) → 422 idempotency_key_reused; the route did not run', async () => {
    const t = setup();
    const key = { 'idempotency-key': 'key-2' };
    expect((await t.post(thing('one'), key)).status).toBe(201);
    const other = await t.post(thing('two'), key);
    expect(other.status).toBe(422);
    expect((await errorOf(other)).code).toBe('idempotency_key_reused');
    const otherQuery = await t.app.request('/api/things?x=1', {
      method: 'POST',
      body: thing('one'),
      headers: { 'content-type': 'application/json', ...key },
    });
    expect(otherQuery.status).toBe(422);
    expect(t.calls.create).toBe(1);
    expect([...t.fake.things.keys()]).toEqual(['one']);
  });

  it('an invalid key → 400 validation_failed, before the body or the database is touched', async () => {
    const t = setup();
    for (const bad of ['k'.repeat(256), 'has space', 'nön-ascii']) {
      const res = await t.app.request('/api/things', {
        method: 'POST',
        body: thing('x'),
        headers: { 'content-type': 'application/json', 'idempotency-key': bad },
      });
      expect(res.status, bad).toBe(400);
      const body = (await res.json()) as { error: { code: string; fields: unknown } };
      expect(body.error).toMatchObject({ code: 'validation_failed', fields: [{ path: 'Idempotency-Key' }] });
    }
    expect(t.fake.sessions).toHaveLength(0);
    expect(t.calls.create).toBe(0);
    // The longest valid key is accepted.
    expect((await t.post(thing('x'), { 'idempotency-key': 'k'.repeat(255) })).status).toBe(201);
  });

  it('a twin while the first still runs → 409 idempotency_in_progress + Retry-After', async () => {
    const t = setup();
    const key = { 'idempotency-key': 'key-3' };
    t.fake.inject(/^INSERT INTO things/, 'hang');
    const hang = t.fake.nextHang();
    const first = t.post(thing('slow'), key);
    const session = await hang;
    const twin = await t.post(thing('slow'), key);
    expect(twin.status).toBe(409);
    expect(twin.headers.get('retry-after')).toBe('1');
    expect((await errorOf(twin)).code).toBe('idempotency_in_progress');
    session.cancel(); // let the first one end (57014, as a cancelled statement: not retried)
    expect((await first).status).toBe(504);
    expect(t.fake.keys.size).toBe(0);
    expect(t.calls.create).toBe(1);
  });

  it('an expired record does not replay: the route runs again', async () => {
    const t = setup();
    const key = { 'idempotency-key': 'key-4' };
    expect((await t.post(thing('e1'), key)).status).toBe(201);
    t.fake.keys.get('POST /api/things key-4')!.expiresAt = Date.now() - 1;
    t.fake.things.clear();
    const again = await t.post(thing('e1'), key);
    expect(again.status).toBe(201);
    expect(again.headers.get('idempotent-replayed')).toBeNull();
    expect(t.calls.create).toBe(2);
  });
});

describe("the route's intent decides what the core retries", FAST, () => {
  const lost = [
    ['Connection terminated unexpectedly', () => markFailure(new Error('Connection terminated unexpectedly'), 'connection_lost')],
    ['57P01 admin_shutdown', () => pgError('57P01', 'terminating connection due to administrator command')],
  ] as const;

  it.each(lost)('a read route: its single statement runs again after %s', async (_name, make) => {
    const t = setup();
    t.fake.things.set('a', { id: 'a', name: 'A' });
    t.fake.inject(/^SELECT id, name FROM things/, { reject: make() });
    const res = await t.app.request('/api/things/a');
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ id: 'a', name: 'A' });
    expect(t.fake.sessions).toHaveLength(2);
    expect(t.fake.sessions[0]!.discarded).toBe(true); // a broken connection is never reused
    expect(t.fake.sessions[1]!.discarded).toBe(false);
    expect(t.calls.read).toBe(1); // the statement was retried, not the route
    expect((await t.routeStats('GET', '/api/things/:id')).retryCount).toBe(1);
  });

  it.each(lost)('a transactional route: its single statement is not run again after %s', async (_name, make) => {
    const t = setup();
    t.fake.things.set('a', { id: 'a', name: 'A' });
    t.fake.inject(/^DELETE FROM things/, { reject: make() });
    const res = await t.app.request('/api/things/a', { method: 'DELETE' });
    expect(res.status).toBe(503);
    expect((await errorOf(res)).code).toBe('database_unavailable');
    expect(t.fake.statementsMatching(/^DELETE FROM things/)).toBe(1);
    expect(t.fake.sessions).toHaveLength(1);
    expect(t.fake.sessions[0]!.discarded).toBe(true);
    expect((await t.routeStats('DELETE', '/api/things/:id')).retryCount).toBe(0);
  });

  it('a statement that provably never reached the server (53300 on acquire) is retried for a transactional route too', async () => {
    const t = setup();
    t.fake.things.set('a', { id: 'a', name: 'A' });
    t.fake.failAcquire(pgError('53300', 'sorry, too many clients already'));
    const res = await t.app.request('/api/things/a', { method: 'DELETE' });
    expect(res.status).toBe(204);
    expect(t.fake.things.has('a')).toBe(false);
    expect((await t.routeStats('DELETE', '/api/things/:id')).retryCount).toBe(1);
  });
});

describe('cancellation: a client that leaves, a deadline that passes', FAST, () => {
  it('the client aborts while a read statement runs → cancel() on the session, released with discard', async () => {
    const t = setup();
    t.fake.inject(/^SELECT id, name FROM things/, 'hang');
    const hang = t.fake.nextHang();
    const controller = new AbortController();
    const pending = t.app.request(new Request('http://localhost/api/things/a', { signal: controller.signal }));
    const session = await hang;
    expect(session.cancelled).toBe(false);
    controller.abort();
    const res = await pending;
    expect(session.cancelled).toBe(true);
    expect(session.discarded).toBe(true);
    expect(res.status).toBe(499);
    expect((await errorOf(res)).code).toBe('client_closed');
    expect(t.fake.sessions).toHaveLength(1); // not retried
    expect(await t.routeStats('GET', '/api/things/:id')).toMatchObject({ statusClasses: { '4xx': 1 } });
  });

  it('the client aborts mid-transaction → cancelled, discarded without a ROLLBACK on it, nothing committed', async () => {
    const t = setup();
    t.fake.inject(/^INSERT INTO things/, 'hang');
    const hang = t.fake.nextHang();
    const controller = new AbortController();
    const pending = t.app.request(
      new Request('http://localhost/api/things', {
        method: 'POST',
        body: thing('gone'),
        headers: { 'content-type': 'application/json', 'idempotency-key': 'abort-1' },
        signal: controller.signal,
      }),
    );
    const session = await hang;
    controller.abort();
    expect((await pending).status).toBe(499);
    expect(session.cancelled).toBe(true);
    expect(session.discarded).toBe(true);
    expect(session.statements).not.toContain('ROLLBACK');
    expect(session.statements).not.toContain('COMMIT');
    expect(t.fake.things.size).toBe(0);
    expect(t.fake.keys.size).toBe(0);
  });

  it('a client already gone before any database work → no session is taken', async () => {
    const t = setup();
    const res = await t.app.request(new Request('http://localhost/api/things/a', { signal: AbortSignal.abort() }));
    expect(res.status).toBe(499);
    expect(t.fake.sessions).toHaveLength(0);
  });

  it("the request's deadline passes while a statement runs → 504 timeout, cancelled and discarded", async () => {
    const t = setup({ requestTimeoutMs: 30 });
    t.fake.inject(/^SELECT id, name FROM things/, 'hang');
    const started = performance.now();
    const res = await t.app.request('/api/things/a');
    const took = performance.now() - started;
    expect(res.status).toBe(504);
    expect((await errorOf(res)).code).toBe('timeout');
    expect(took).toBeGreaterThanOrEqual(25); // it waited for the deadline; the statement alone would never end
    expect(t.fake.sessions[0]).toMatchObject({ cancelled: true, discarded: true });
    expect(t.fake.sessions).toHaveLength(1);
  });
});

describe('drain', FAST, () => {
  it('while draining the API answers 503 shutting_down (Connection: close); health and stats still answer', async () => {
    const drain = new Drain();
    const t = setup({ drain });
    t.fake.inject(/^SELECT id, name FROM things/, 'hang');
    const hang = t.fake.nextHang();
    const inFlight = t.app.request('/api/things/a');
    const session = await hang;
    expect(drain.inFlight).toBe(1);

    let drained = false;
    const draining = drain.start(1_000).then((v) => (drained = v));
    const refused = await t.app.request('/api/things/b');
    expect(refused.status).toBe(503);
    expect(refused.headers.get('connection')).toBe('close');
    expect(refused.headers.get('retry-after')).toBe('1');
    expect((await errorOf(refused)).code).toBe('shutting_down');
    expect((await t.app.request('/health')).status).toBe(200);
    expect((await t.app.request('/health/ready')).status).toBe(503);
    expect(drained).toBe(false);

    session.cancel();
    const finished = await inFlight;
    expect(finished.headers.get('connection')).toBe('close');
    await draining;
    expect(drained).toBe(true);
    expect(drain.inFlight).toBe(0);
  });
});
