/**
 * Bad input against every route, property-based (fast-check) over real HTTP on a gateway backed
 * by a real database (PostgreSQL on TEST_DATABASE_URL, else the embedded PGlite): random JSON,
 * wrong types, huge numbers, unicode, `__proto__` / `constructor` keys, SQL metacharacters, deep
 * nesting, wrong content types, oversized and chunked bodies, bogus Content-Length and broken
 * framing on a raw socket, junk ids, queries and Idempotency-Keys.
 *
 * Every answer must have a status the route documents (never 500), errors must be the JSON shape
 * `{error: {code, message, requestId, fields?}}`, and nothing may carry a connection string,
 * host, user or stack frame. Strings with SQL metacharacters are stored verbatim (read back) or
 * refused, never executed: the tables are all there afterwards and their counts match the 2xx
 * answers. Runs are bounded and seeded: FC_SEED=<n> replays a failure (fast-check prints the
 * seed and path when a property fails).
 */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leaksIn, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';

const SEED = Number(process.env.FC_SEED ?? 20261127);
const BODY_LIMIT = 8_192;
const RUNS = 120;

/** Every error code the README documents; `internal` (a 500) is deliberately not here. */
const ERROR_CODES = new Set([
  'validation_failed',
  'invalid_json',
  'not_found',
  'route_not_found',
  'method_not_allowed',
  'conflict',
  'idempotency_in_progress',
  'idempotency_key_reused',
  'payload_too_large',
  'unsupported_media_type',
  'unauthorized',
  'pool_exhausted',
  'overloaded',
  'database_unavailable',
  'circuit_open',
  'shutting_down',
  'timeout',
]);

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  body: any;
}

let t: TestGateway;
let userId: string;
/** 2xx creations seen, to check the row counts at the end. */
const created = { users: 1, workouts: 0 };

async function call(
  method: string,
  path: string,
  init: { body?: BodyInit | null; headers?: Record<string, string>; duplex?: 'half' } = {},
): Promise<Answer> {
  const res = await fetch(`${t.url}${path}`, { method, ...init, signal: AbortSignal.timeout(20_000) });
  const text = await res.text();
  let body: unknown;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  return { status: res.status, headers: res.headers, text, body };
}

/** The contract every answer keeps: a documented status, the error shape, no internals. */
function check(
  a: { status: number; headers: Headers | Map<string, string>; text: string },
  allowed: readonly number[],
  what: string,
): void {
  const ctx = `${what} → ${a.status} ${a.text.slice(0, 300)}`;
  expect(allowed, ctx).toContain(a.status);
  expect(leaksIn(a.text, t.db), ctx).toEqual([]);
  expect(a.text, ctx).not.toMatch(/\bat (?:async )?[\w.<>]+ \(|node:internal|node_modules|\.ts:\d+/);
  if (a.status < 400) return;
  expect(a.headers.get('content-type'), ctx).toMatch(/^application\/json/);
  const body = JSON.parse(a.text);
  expect(Object.keys(body), ctx).toEqual(['error']);
  const { code, message, requestId, fields, ...rest } = body.error;
  expect(rest, ctx).toEqual({});
  expect(ERROR_CODES.has(code), ctx).toBe(true);
  expect(typeof message, ctx).toBe('string');
  expect(typeof requestId === 'string' && requestId.length > 0, ctx).toBe(true);
  if (fields !== undefined) {
    expect(Array.isArray(fields), ctx).toBe(true);
    for (const f of fields) expect(typeof f.path === 'string' && typeof f.message === 'string', ctx).toBe(true);
  }
}

const count = (a: Answer, kind: keyof typeof created) => {
  if (a.status === 201) created[kind]++;
};

/** JSON text of an object whose entries are written as given (so `__proto__` is a real key). */
const objectText = (entries: [string, string][]) => `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;

// ---- arbitraries -------------------------------------------------------------------------------

const SQL_BITS = [
  "'",
  '"',
  ';',
  '--',
  '/*',
  '*/',
  '\\',
  '%',
  '_',
  '$1',
  '$$',
  "E'",
  "' OR '1'='1",
  "'); DROP TABLE users; --",
  'NULL',
  '\\x00',
  '`',
  '::text',
  'é',
  '🏋️',
  '\u200b',
  '中文',
  ' ',
  'a',
  'Z',
  '0',
];
/** Strings rich in SQL metacharacters and unicode (no NUL, no lone surrogates: both tested apart). */
const sqlish = fc.array(fc.constantFrom(...SQL_BITS), { minLength: 1, maxLength: 8 }).map((parts) => parts.join(''));

const hugeNumber = fc.constantFrom(1e308, -1e308, 2 ** 53 + 2, -(2 ** 63), 1e-320, -0, 0.5, 10_001, 2_147_483_648, 7 * 24 * 3600 + 1);
const nastyString = fc.oneof(
  sqlish,
  fc.string({ unit: 'grapheme', maxLength: 60 }),
  fc.string({ unit: 'binary', maxLength: 20 }), // lone surrogates and NUL included
  fc.constantFrom(
    '',
    ' ',
    '\u0000',
    'x'.repeat(5_000),
    'not-a-uuid',
    '2026-13-45T99:99:99Z',
    'metric',
    'imperial',
    '00000000-0000-4000-8000-000000000000',
  ),
);
const nastyValue: fc.Arbitrary<unknown> = fc.oneof(
  nastyString,
  hugeNumber,
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.oneof(fc.integer(), nastyString), { maxLength: 3 }),
  fc.dictionary(nastyString, fc.oneof(fc.integer(), nastyString), { maxKeys: 3 }),
);
const dangerousKey = fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__');
const protoPayload = fc.constantFrom('{"polluted":true}', '{"toString":1}', 'null', '[]', '"x"');

const USER_FIELDS = ['email', 'name', 'preferences'];
const WORKOUT_FIELDS = ['userId', 'kind', 'startedAt', 'durationSeconds', 'sets'];
const PREF_FIELDS = ['units', 'weeklyGoal'];

/** An object with some of the schema's fields (wrong types, nasty values) and maybe dangerous keys. */
const shapedBody = (fields: string[], good: () => Record<string, unknown>) =>
  fc
    .record({
      keep: fc.subarray(fields),
      nasty: fc.array(fc.tuple(fc.constantFrom(...fields), nastyValue), { maxLength: 3 }),
      danger: fc.array(fc.tuple(dangerousKey, protoPayload), { maxLength: 2 }),
    })
    .map(({ keep, nasty, danger }) => {
      const g = good();
      const entries = new Map<string, string>();
      for (const k of keep) if (g[k] !== undefined) entries.set(k, JSON.stringify(g[k]));
      for (const [k, v] of nasty) entries.set(k, JSON.stringify(v) ?? 'null');
      const list = [...entries];
      for (const [k, v] of danger) list.push([k, v]);
      return objectText(list);
    });

const goodUser = () => ({ email: `u-${randomUUID()}@example.com`, name: 'Prop', preferences: { units: 'metric', weeklyGoal: 3 } });
const goodWorkout = () => ({
  userId,
  kind: 'run',
  startedAt: '2026-11-27T07:00:00Z',
  durationSeconds: 60,
  sets: [{ exercise: 'squat', reps: 5, weightKg: 20 }],
});
const goodPrefs = () => ({ units: 'imperial', weeklyGoal: 4 });

const contentType = fc.constantFrom(
  'application/json',
  'application/json; charset=utf-8',
  'APPLICATION/JSON',
  'application/merge-patch+json',
  'application/jsonx',
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  'application/xml',
  '',
);

const BODY_ROUTES = [
  {
    method: 'POST',
    path: () => '/api/users',
    pattern: '/api/users',
    kind: 'users' as const,
    ok: [201, 409],
    fields: USER_FIELDS,
    good: goodUser,
  },
  {
    method: 'PATCH',
    path: () => `/api/users/${userId}/preferences`,
    pattern: '/api/users/:id/preferences',
    kind: undefined,
    ok: [200],
    fields: PREF_FIELDS,
    good: goodPrefs,
  },
  {
    method: 'POST',
    path: () => '/api/workouts',
    pattern: '/api/workouts',
    kind: 'workouts' as const,
    ok: [201],
    fields: WORKOUT_FIELDS,
    good: goodWorkout,
  },
];
/** A body route may answer its success, or refuse: 400, 404 (a referenced row is missing), 409, 413, 415. */
const BODY_ERRORS = [400, 404, 409, 413, 415];

const assertProperty = <T>(prop: fc.IAsyncPropertyWithHooks<T> | fc.IAsyncProperty<T>, numRuns = RUNS) =>
  fc.assert(prop, { seed: SEED, numRuns });

// ---- setup ---------------------------------------------------------------------------------------

beforeAll(async () => {
  t = await startTestGateway({ BODY_LIMIT_BYTES: String(BODY_LIMIT), POOL_MAX: '4', POOL_MIN: '1' });
  const u = await call('POST', '/api/users', {
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: `owner-${randomUUID()}@example.com`, name: 'Owner' }),
  });
  expect(u.status).toBe(201);
  userId = u.body.id;
});

afterAll(async () => {
  await t?.stop();
});

// ---- properties ----------------------------------------------------------------------------------

describe(`bad input, property-based (seed ${SEED})`, () => {
  it('random JSON with random content types on every body route', async () => {
    await assertProperty(
      fc.asyncProperty(fc.constantFrom(...BODY_ROUTES), fc.jsonValue({ maxDepth: 4 }), contentType, async (route, value, type) => {
        const a = await call(route.method, route.path(), { headers: type ? { 'content-type': type } : {}, body: JSON.stringify(value) });
        check(a, [...route.ok, ...BODY_ERRORS], `${route.method} ${route.path()} ${type} ${JSON.stringify(value).slice(0, 200)}`);
        if (route.kind) count(a, route.kind);
      }),
    );
  }, 120_000);

  it('schema-shaped bodies with wrong types, huge numbers, unicode and __proto__/constructor keys', async () => {
    const before = Object.getOwnPropertyNames(Object.prototype).sort();
    await assertProperty(
      fc.asyncProperty(
        fc.constantFrom(...BODY_ROUTES).chain((route) => fc.tuple(fc.constant(route), shapedBody(route.fields, route.good))),
        async ([route, text]) => {
          const a = await call(route.method, route.path(), { headers: { 'content-type': 'application/json' }, body: text });
          check(a, [...route.ok, ...BODY_ERRORS], `${route.method} ${route.path()} ${text.slice(0, 300)}`);
          if (route.kind) count(a, route.kind);
          // A dangerous key never slips through the strict schemas.
          if (/"(__proto__|constructor|prototype|toString|hasOwnProperty|valueOf|__defineGetter__)"\s*:/.test(text))
            expect(a.status, text).toBe(400);
        },
      ),
      200,
    );
    expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(before);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  }, 120_000);

  it('SQL metacharacters and unicode in accepted strings are stored verbatim (trimmed) and read back', async () => {
    await assertProperty(
      fc.asyncProperty(sqlish, sqlish, sqlish, async (kind, exercise, name) => {
        const w = await call('POST', '/api/workouts', {
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ userId, kind, startedAt: '2026-11-27T08:00:00Z', sets: [{ exercise, reps: 1 }] }),
        });
        check(w, [201, 400], `workout kind=${JSON.stringify(kind)} exercise=${JSON.stringify(exercise)}`);
        count(w, 'workouts');
        const valid = kind.trim().length >= 1 && kind.trim().length <= 50 && exercise.trim().length >= 1 && exercise.trim().length <= 100;
        expect(w.status, `${JSON.stringify(kind)} / ${JSON.stringify(exercise)}`).toBe(valid ? 201 : 400);
        if (w.status === 201) {
          const back = await call('GET', `/api/workouts/${w.body.id}`);
          check(back, [200], 'read back');
          expect(back.body.kind).toBe(kind.trim());
          expect(back.body.sets[0].exercise).toBe(exercise.trim());
        }
        const u = await call('POST', '/api/users', {
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ email: `sql-${randomUUID()}@example.com`, name }),
        });
        check(u, [201, 400], `user name=${JSON.stringify(name)}`);
        count(u, 'users');
        if (u.status === 201) {
          const back = await call('GET', `/api/users/${u.body.id}`);
          expect(back.body.name).toBe(name.trim());
        }
      }),
      100,
    );
  }, 120_000);

  it('NUL bytes and lone surrogates are refused or stored, never a 500', async () => {
    await assertProperty(
      fc.asyncProperty(fc.string({ unit: 'binary', minLength: 1, maxLength: 30 }), async (s) => {
        const w = await call('POST', '/api/workouts', {
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ userId, kind: s, startedAt: '2026-11-27T09:00:00Z', sets: [] }),
        });
        check(w, [201, 400], `kind=${JSON.stringify(s)}`);
        count(w, 'workouts');
        if (s.includes('\u0000') && s.trim().length > 0 && s.trim().length <= 50) expect(w.body.error?.code).toBe('validation_failed');
      }),
    );
  }, 120_000);

  it('deep nesting anywhere in the body is refused (400, or 413 past the body limit)', async () => {
    await assertProperty(
      fc.asyncProperty(
        fc.constantFrom(...BODY_ROUTES),
        fc.integer({ min: 1, max: 6_000 }),
        fc.constantFrom('[', '{"a":'),
        fc.constantFrom('top', 'field'),
        async (route, depth, open, where) => {
          const close = open === '[' ? ']' : '}';
          const deep = `${open.repeat(depth)}1${close.repeat(depth)}`;
          const text = where === 'top' ? deep : objectText([[route.fields[0]!, deep]]);
          const a = await call(route.method, route.path(), { headers: { 'content-type': 'application/json' }, body: text });
          check(a, text.length > BODY_LIMIT ? [413] : [400], `${route.method} depth ${depth} ${where}`);
        },
      ),
      100,
    );
  }, 120_000);

  it('oversized bodies are refused with 413, with a Content-Length or chunked', async () => {
    const answered4xx = async (method: string, pattern: string): Promise<number> =>
      (await call('GET', '/stats')).body.routes.find((r: { method: string; route: string }) => r.method === method && r.route === pattern)
        ?.statusClasses['4xx'] ?? 0;
    let cutMidUpload = 0;
    await assertProperty(
      fc.asyncProperty(
        fc.constantFrom(...BODY_ROUTES),
        fc.integer({ min: BODY_LIMIT + 1, max: BODY_LIMIT * 4 }),
        fc.boolean(),
        fc.integer({ min: 1, max: 5_000 }),
        async (route, size, chunked, chunkSize) => {
          const bytes = new TextEncoder().encode(`{"x":"${'y'.repeat(size)}"}`);
          const body = chunked
            ? new ReadableStream<Uint8Array>({
                start(c) {
                  for (let i = 0; i < bytes.length; i += chunkSize) c.enqueue(bytes.subarray(i, i + chunkSize));
                  c.close();
                },
              })
            : bytes;
          const what = `${route.method} ${size} bytes ${chunked ? `chunked by ${chunkSize}` : 'with Content-Length'}`;
          const before = await answered4xx(route.method, route.pattern);
          let a: Answer;
          try {
            a = await call(route.method, route.path(), {
              headers: { 'content-type': 'application/json' },
              body,
              ...(chunked ? { duplex: 'half' as const } : {}),
            });
          } catch (err) {
            // The gateway answers 413 as soon as the limit is passed and stops reading; a client still
            // uploading small chunks can see the connection close before it reads that answer.
            if (!chunked) throw err;
            cutMidUpload++;
            const cause = (err as { cause?: { code?: string } }).cause?.code;
            expect(cause, `${what}: ${String(err)}`).toBe('UND_ERR_SOCKET');
            await waitFor(async () => (await answered4xx(route.method, route.pattern)) === before + 1, {
              timeoutMs: 3_000,
              what: `${what}: the gateway to have answered a 4xx`,
            });
            return;
          }
          check(a, [413], what);
        },
      ),
      60,
    );
    console.log(`[bad-input] oversized: ${cutMidUpload} chunked uploads saw the connection close before reading their 413`);
  }, 120_000);

  it('small chunked bodies are read whole, however they are split', async () => {
    await assertProperty(
      fc.asyncProperty(fc.integer({ min: 1, max: 40 }), async (chunkSize) => {
        const bytes = new TextEncoder().encode(
          JSON.stringify({ userId, kind: 'chunked', startedAt: '2026-11-27T10:00:00Z', sets: [{ exercise: 'row', reps: 3 }] }),
        );
        const body = new ReadableStream<Uint8Array>({
          start(c) {
            for (let i = 0; i < bytes.length; i += chunkSize) c.enqueue(bytes.subarray(i, i + chunkSize));
            c.close();
          },
        });
        const a = await call('POST', '/api/workouts', { headers: { 'content-type': 'application/json' }, body, duplex: 'half' });
        check(a, [201], `chunks of ${chunkSize}`);
        count(a, 'workouts');
      }),
      40,
    );
  }, 120_000);

  it('junk ids, query strings, methods and paths', async () => {
    const id = fc.oneof(fc.uuid(), fc.string({ maxLength: 40 }), sqlish, fc.constant(randomUUID()));
    const query = fc.dictionary(
      fc.constantFrom('limit', 'cursor', 'x', '__proto__', 'limit[]'),
      fc.oneof(
        fc.string({ maxLength: 30 }),
        fc.integer().map(String),
        sqlish,
        fc.constantFrom('0', '-1', '101', '1e3', 'NaN', '99999999999999999999', 'MjAyNi0xMS0yN1QwNzowMDowMFp8bm90LWEtdXVpZA'),
      ),
      { maxKeys: 3 },
    );
    await assertProperty(
      fc.asyncProperty(
        fc.constantFrom(
          { method: 'GET', path: (i: string) => `/api/users/${i}`, ok: [200, 400, 404] },
          { method: 'GET', path: (i: string) => `/api/users/${i}/workouts`, ok: [200, 400, 404] },
          { method: 'GET', path: (i: string) => `/api/users/${i}/summary`, ok: [200, 400, 404] },
          { method: 'GET', path: (i: string) => `/api/workouts/${i}`, ok: [200, 400, 404] },
          { method: 'DELETE', path: (i: string) => `/api/workouts/${i}`, ok: [204, 400, 404] },
          { method: 'PUT', path: (i: string) => `/api/workouts/${i}`, ok: [404, 405] },
          { method: 'POST', path: (i: string) => `/api/users/${i}`, ok: [404, 405] },
          { method: 'GET', path: (i: string) => `/api/${i}`, ok: [404] },
        ),
        id,
        query,
        async (route, rawId, q) => {
          const path = `${route.path(encodeURIComponent(rawId))}?${new URLSearchParams(q).toString()}`;
          const a = await call(route.method, path);
          check(a, route.ok, `${route.method} ${path}`);
        },
      ),
      200,
    );
    // The owner's workouts page with real data and junk queries: 200 or 400, never more.
    await assertProperty(
      fc.asyncProperty(query, async (q) => {
        const a = await call('GET', `/api/users/${userId}/workouts?${new URLSearchParams(q).toString()}`);
        check(a, [200, 400], `list ${JSON.stringify(q)}`);
      }),
      100,
    );
  }, 120_000);

  it('junk Idempotency-Keys', async () => {
    await assertProperty(
      fc.asyncProperty(
        fc.oneof(
          fc.string({ minLength: 0, maxLength: 300 }).filter((s) => /^[\x20-\x7e]*$/.test(s)),
          fc.constantFrom(' ', 'a b', 'x'.repeat(256), "k'; DROP TABLE poolgate_idempotency_keys; --"),
        ),
        async (key) => {
          const a = await call('POST', '/api/workouts', {
            headers: { 'content-type': 'application/json', 'idempotency-key': key },
            body: JSON.stringify({ userId, kind: 'idem', startedAt: '2026-11-27T11:00:00Z', sets: [] }),
          });
          check(a, [201, 400, 409, 422], `key ${JSON.stringify(key)}`);
          if (a.status === 201 && a.headers.get('idempotent-replayed') !== 'true') created.workouts++;
        },
      ),
    );
  }, 120_000);
});

// ---- raw HTTP framing ----------------------------------------------------------------------------

/**
 * Sends `request` on a fresh socket and parses every HTTP response that comes back. After a
 * pause the socket is half-closed, so a request waiting for body bytes that will never come
 * meets the end of the stream (half-closing at once would make Node drop the answers still due).
 */
function rawExchange(request: string): Promise<{ status: number; headers: Map<string, string>; text: string }[]> {
  return new Promise((resolve) => {
    const port = Number(new URL(t.url).port);
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', () => {});
    const halfClose = setTimeout(() => socket.end(), 300);
    const timer = setTimeout(() => socket.destroy(), 5_000);
    socket.on('close', () => {
      clearTimeout(halfClose);
      clearTimeout(timer);
      resolve(parseResponses(Buffer.concat(chunks)));
    });
    socket.write(request);
  });
}

function parseResponses(buf: Buffer) {
  const out: { status: number; headers: Map<string, string>; text: string }[] = [];
  let rest = buf;
  while (rest.length) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) throw new Error(`a partial response: ${rest.toString().slice(0, 200)}`);
    const [statusLine, ...lines] = rest.subarray(0, end).toString('latin1').split('\r\n');
    const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(statusLine!)?.[1]);
    const headers = new Map(
      lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()] as [string, string]),
    );
    const length = Number(headers.get('content-length') ?? 0);
    const text = rest.subarray(end + 4, end + 4 + length).toString('utf8');
    out.push({ status, headers, text });
    rest = rest.subarray(end + 4 + length);
  }
  return out;
}

describe('raw HTTP framing: bogus Content-Length and broken chunking', () => {
  const head = (path: string, extra: string) =>
    `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n${extra}\r\n`;
  const good = () => JSON.stringify({ userId, kind: 'raw', startedAt: '2026-11-27T12:00:00Z', sets: [] });

  it('any Content-Length header: a documented JSON answer, or the request is refused as bad HTTP', async () => {
    const clValue = fc.oneof(
      fc.integer({ min: 0, max: 200 }).map(String),
      fc.constantFrom(
        '-1',
        'abc',
        '',
        ' 12',
        '0x10',
        '1e3',
        '99999999999999999999',
        '18446744073709551616',
        '5, 5',
        String(BODY_LIMIT + 1),
      ),
      fc.string({ maxLength: 12 }).filter((s) => /^[\x21-\x7e ]*$/.test(s)),
    );
    await assertProperty(
      fc.asyncProperty(clValue, fc.boolean(), async (cl, twice) => {
        const body = good();
        const extra = `Content-Length: ${cl}\r\n${twice ? `Content-Length: ${body.length}\r\n` : ''}`;
        const responses = await rawExchange(head('/api/workouts', extra) + body);
        expect(responses.length, `CL ${JSON.stringify(cl)}`).toBeGreaterThanOrEqual(1);
        for (const r of responses) {
          check(r, [201, 400, 413, 415], `CL ${JSON.stringify(cl)}${twice ? ' twice' : ''}`);
          if (r.status === 201) created.workouts++;
        }
      }),
      100,
    );
  }, 120_000);

  it('broken chunked framing and conflicting framing headers are refused as JSON 400s', async () => {
    const body = good();
    const cases: Record<string, string> = {
      'bad chunk size': head('/api/workouts', 'Transfer-Encoding: chunked\r\n') + `zz\r\n${body}\r\n0\r\n\r\n`,
      'chunk shorter than declared': head('/api/workouts', 'Transfer-Encoding: chunked\r\n') + `ff\r\n${body}\r\n0\r\n\r\n`,
      'no final chunk': head('/api/workouts', 'Transfer-Encoding: chunked\r\n') + `${body.length.toString(16)}\r\n${body}\r\n`,
      'Content-Length and chunked':
        head('/api/workouts', `Content-Length: 3\r\nTransfer-Encoding: chunked\r\n`) +
        `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
      'body cut short (Content-Length larger than sent)': head('/api/workouts', `Content-Length: ${body.length + 50}\r\n`) + body,
      'oversized chunked':
        head('/api/workouts', 'Transfer-Encoding: chunked\r\n') +
        `${(BODY_LIMIT + 10).toString(16)}\r\n${'a'.repeat(BODY_LIMIT + 10)}\r\n0\r\n\r\n`,
    };
    const seen: Record<string, number[]> = {};
    for (const [name, request] of Object.entries(cases)) {
      const responses = await rawExchange(request);
      seen[name] = responses.map((r) => r.status);
      expect(responses.length, name).toBeGreaterThanOrEqual(1);
      for (const r of responses) check(r, name === 'oversized chunked' ? [413] : [400], name);
    }
    // Node's parser takes "gzip, chunked" as chunked and hands over the bytes as they are: a documented answer either way.
    const gz = await rawExchange(
      head('/api/workouts', 'Transfer-Encoding: gzip, chunked\r\n') + `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
    );
    seen['gzip, chunked'] = gz.map((r) => r.status);
    for (const r of gz) {
      check(r, [201, 400], 'gzip, chunked');
      if (r.status === 201) created.workouts++;
    }
    console.log(`[bad-input] framing: ${JSON.stringify(seen)}`);
  }, 60_000);
});

describe('afterwards', () => {
  it('every table is still there, row counts match the 2xx answers, and no 5xx was recorded', async () => {
    const { rows } = await t.db.admin(
      `SELECT (SELECT count(*)::int FROM users) AS users, (SELECT count(*)::int FROM user_preferences) AS prefs,
              (SELECT count(*)::int FROM workouts) AS workouts, (SELECT count(*)::int FROM workout_sets) AS sets,
              (SELECT count(*)::int FROM poolgate_idempotency_keys) AS keys`,
    );
    const deleted =
      (await call('GET', '/stats')).body.routes.find(
        (r: { method: string; route: string }) => r.method === 'DELETE' && r.route === '/api/workouts/:id',
      )?.statusClasses['2xx'] ?? 0;
    console.log(
      `[bad-input] rows ${JSON.stringify(rows[0])}; expected users ${created.users}, workouts ${created.workouts} − ${deleted} deleted`,
    );
    expect(rows[0].users).toBe(created.users);
    expect(rows[0].prefs).toBe(created.users);
    expect(rows[0].workouts).toBe(created.workouts - deleted);
    const stats = (await call('GET', '/stats')).body;
    const fivexx = stats.routes.filter((r: { statusClasses: Record<string, number> }) => r.statusClasses['5xx']);
    expect(fivexx).toEqual([]);
    expect(t.logs.filter((l) => /→ 5\d\d/.test(l))).toEqual([]);
  });
});
