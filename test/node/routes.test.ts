/**
 * Every fitness route over real HTTP against a real database: success, validation (400 naming the
 * fields), not found, conflict, content type, body limits (declared and chunked), bad JSON and
 * unknown routes. Runs on real PostgreSQL and on the embedded fallback.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { json, leaksIn, seenResponses, startTestGateway, type TestGateway } from '../helpers/gateway.js';

const BODY_LIMIT = 512;
let t: TestGateway;
let api: string;

beforeAll(async () => {
  t = await startTestGateway({ BODY_LIMIT_BYTES: String(BODY_LIMIT) });
  api = `${t.url}/api`;
});

afterAll(async () => {
  await t?.stop();
});

const fieldsOf = (body: { error?: { fields?: { path: string }[] } }) => (body.error?.fields ?? []).map((f) => f.path).sort();

function expectErrorShape(body: any, code: string) {
  expect(body).toEqual({
    error: expect.objectContaining({ code, message: expect.any(String), requestId: expect.any(String) }),
  });
  expect(Object.keys(body.error).sort()).toEqual(
    body.error.fields ? ['code', 'fields', 'message', 'requestId'] : ['code', 'message', 'requestId'],
  );
}

let seq = 0;
async function createUser(extra: Record<string, unknown> = {}) {
  const res = await json(`${api}/users`, {
    method: 'POST',
    json: { email: `user${++seq}-${randomUUID()}@example.com`, name: `User ${seq}`, ...extra },
  });
  expect(res.status).toBe(201);
  return res.body as { id: string; email: string };
}

async function createWorkout(userId: string, extra: Record<string, unknown> = {}) {
  const res = await json(`${api}/workouts`, {
    method: 'POST',
    json: { userId, kind: 'strength', startedAt: '2026-02-01T10:00:00Z', sets: [], ...extra },
  });
  expect(res.status, res.text).toBe(201);
  return res.body as { id: string; startedAt: string };
}

describe('POST /api/users', () => {
  it('creates a user with default preferences (201)', async () => {
    const res = await json(`${api}/users`, { method: 'POST', json: { email: 'ada@example.com', name: 'Ada' } });
    expect(res.status).toBe(201);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(res.body).toEqual({
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      email: 'ada@example.com',
      name: 'Ada',
      preferences: { units: 'metric', weeklyGoal: null },
      createdAt: expect.any(String),
    });
    expect(Number.isNaN(Date.parse(res.body.createdAt))).toBe(false);
  });

  it('stores given preferences', async () => {
    const res = await json(`${api}/users`, {
      method: 'POST',
      json: { email: 'grace@example.com', name: 'Grace', preferences: { units: 'imperial', weeklyGoal: 5 } },
    });
    expect(res.status).toBe(201);
    expect(res.body.preferences).toEqual({ units: 'imperial', weeklyGoal: 5 });
  });

  it('refuses invalid fields with 400 naming each of them', async () => {
    const res = await json(`${api}/users`, {
      method: 'POST',
      json: { email: 'not-an-email', name: '', preferences: { units: 'furlongs' } },
    });
    expect(res.status).toBe(400);
    expectErrorShape(res.body, 'validation_failed');
    expect(fieldsOf(res.body)).toEqual(['email', 'name', 'preferences.units']);
  });

  it('refuses unknown keys and missing fields', async () => {
    const res = await json(`${api}/users`, { method: 'POST', json: { email: 'x@example.com', nickname: 'x' } });
    expect(res.status).toBe(400);
    expect(fieldsOf(res.body)).toContain('name');
    expect(res.body.error.fields.length).toBe(2); // missing name + unrecognised key
  });

  it('answers 409 conflict for a duplicate email, case-insensitively', async () => {
    const first = await json(`${api}/users`, { method: 'POST', json: { email: 'dup@example.com', name: 'One' } });
    expect(first.status).toBe(201);
    const again = await json(`${api}/users`, { method: 'POST', json: { email: 'DUP@example.com', name: 'Two' } });
    expect(again.status).toBe(409);
    expectErrorShape(again.body, 'conflict');
    expect(again.text).not.toMatch(/users_email_key|duplicate key/);
  });

  it('answers 415 for a body that is not declared as JSON', async () => {
    const res = await json(`${api}/users`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: '{"email":"a@b.co","name":"A"}',
    });
    expect(res.status).toBe(415);
    expectErrorShape(res.body, 'unsupported_media_type');
    const none = await json(`${api}/users`, { method: 'POST', body: new Uint8Array([123, 125]) });
    expect(none.status).toBe(415);
  });

  it('answers 400 invalid_json for malformed JSON', async () => {
    const res = await json(`${api}/users`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"email": "a@b.co", ',
    });
    expect(res.status).toBe(400);
    expectErrorShape(res.body, 'invalid_json');
    const empty = await json(`${api}/users`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '' });
    expect(empty.status).toBe(400);
    expect(empty.body.error.code).toBe('invalid_json');
  });

  it('answers 413 for a body over BODY_LIMIT_BYTES with a Content-Length', async () => {
    const body = JSON.stringify({ email: 'big@example.com', name: 'x'.repeat(BODY_LIMIT) });
    const res = await json(`${api}/users`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    expect(res.status).toBe(413);
    expectErrorShape(res.body, 'payload_too_large');
  });

  it('answers 413 for a chunked body (no Content-Length) that grows past the limit', async () => {
    const chunk = new TextEncoder().encode(' '.repeat(200));
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent === 0) controller.enqueue(new TextEncoder().encode('{"email":"chunked@example.com","name":"'));
        if (sent++ < 5) controller.enqueue(chunk);
        else {
          controller.enqueue(new TextEncoder().encode('"}'));
          controller.close();
        }
      },
    });
    const res = await json(`${api}/users`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: stream,
      duplex: 'half',
    } as RequestInit);
    expect(res.status).toBe(413);
    expect(res.body.error.code).toBe('payload_too_large');
    const check = await json(`${api}/users`, { method: 'POST', json: { email: 'chunked@example.com', name: 'Fits' } });
    expect(check.status).toBe(201); // the oversized one wrote nothing
  });

  it('accepts a chunked body under the limit', async () => {
    const bytes = new TextEncoder().encode(JSON.stringify({ email: 'small-chunked@example.com', name: 'Small' }));
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(bytes.slice(0, 10));
        controller.enqueue(bytes.slice(10));
        controller.close();
      },
    });
    const res = await json(`${api}/users`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: stream,
      duplex: 'half',
    } as RequestInit);
    expect(res.status).toBe(201);
  });
});

describe('GET /api/users/:id', () => {
  it('returns the user', async () => {
    const u = await createUser({ preferences: { units: 'imperial' } });
    const res = await json(`${api}/users/${u.id}`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ id: u.id, email: u.email, preferences: { units: 'imperial', weeklyGoal: null } });
  });

  it('answers 404 for an unknown id and 400 for a malformed one', async () => {
    const missing = await json(`${api}/users/${randomUUID()}`);
    expect(missing.status).toBe(404);
    expectErrorShape(missing.body, 'not_found');
    const bad = await json(`${api}/users/not-a-uuid`);
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad.body)).toEqual(['id']);
  });
});

describe('PATCH /api/users/:id/preferences', () => {
  it('updates only what is given', async () => {
    const u = await createUser();
    const a = await json(`${api}/users/${u.id}/preferences`, { method: 'PATCH', json: { units: 'imperial', weeklyGoal: 3 } });
    expect(a.status).toBe(200);
    expect(a.body.preferences).toEqual({ units: 'imperial', weeklyGoal: 3 });
    const b = await json(`${api}/users/${u.id}/preferences`, { method: 'PATCH', json: { weeklyGoal: null } });
    expect(b.status).toBe(200);
    expect(b.body.preferences).toEqual({ units: 'imperial', weeklyGoal: null });
    const c = await json(`${api}/users/${u.id}/preferences`, { method: 'PATCH', json: { units: 'metric' } });
    expect(c.body.preferences).toEqual({ units: 'metric', weeklyGoal: null });
    const read = await json(`${api}/users/${u.id}`);
    expect(read.body.preferences).toEqual({ units: 'metric', weeklyGoal: null });
  });

  it('refuses invalid input with the failing fields', async () => {
    const u = await createUser();
    const bad = await json(`${api}/users/${u.id}/preferences`, { method: 'PATCH', json: { units: 'furlongs', weeklyGoal: 101 } });
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad.body)).toEqual(['units', 'weeklyGoal']);
    const empty = await json(`${api}/users/${u.id}/preferences`, { method: 'PATCH', json: {} });
    expect(empty.status).toBe(400);
    expect(empty.body.error.code).toBe('validation_failed');
    expect(empty.body.error.fields.length).toBeGreaterThan(0);
    const badId = await json(`${api}/users/nope/preferences`, { method: 'PATCH', json: { units: 'metric' } });
    expect(badId.status).toBe(400);
    expect(fieldsOf(badId.body)).toEqual(['id']);
  });

  it('answers 404 for an unknown user, 415 and 413 for bad bodies', async () => {
    const missing = await json(`${api}/users/${randomUUID()}/preferences`, { method: 'PATCH', json: { units: 'metric' } });
    expect(missing.status).toBe(404);
    expectErrorShape(missing.body, 'not_found');
    const u = await createUser();
    const type = await json(`${api}/users/${u.id}/preferences`, { method: 'PATCH', headers: { 'content-type': 'text/plain' }, body: '{}' });
    expect(type.status).toBe(415);
    const big = await json(`${api}/users/${u.id}/preferences`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/json' },
      body: `{"units":"metric"${' '.repeat(BODY_LIMIT)}}`,
    });
    expect(big.status).toBe(413);
  });
});

describe('POST /api/workouts and GET/DELETE /api/workouts/:id', () => {
  it('creates a workout with its sets in order and reads it back', async () => {
    const u = await createUser();
    const created = await json(`${api}/workouts`, {
      method: 'POST',
      json: {
        userId: u.id,
        kind: 'strength',
        startedAt: '2026-03-01T07:00:00+01:00',
        durationSeconds: 2700,
        sets: [
          { exercise: 'squat', reps: 5, weightKg: 100 },
          { exercise: 'bench press', reps: 8, weightKg: 72.5 },
          { exercise: 'pull-up', reps: 10 },
        ],
      },
    });
    expect(created.status).toBe(201);
    const expected = {
      id: expect.any(String),
      userId: u.id,
      kind: 'strength',
      startedAt: '2026-03-01T06:00:00.000Z',
      durationSeconds: 2700,
      createdAt: expect.any(String),
      sets: [
        { exercise: 'squat', reps: 5, weightKg: 100 },
        { exercise: 'bench press', reps: 8, weightKg: 72.5 },
        { exercise: 'pull-up', reps: 10, weightKg: null },
      ],
    };
    expect(created.body).toEqual(expected);
    const read = await json(`${api}/workouts/${created.body.id}`);
    expect(read.status).toBe(200);
    expect(read.body).toEqual({ ...expected, id: created.body.id, createdAt: created.body.createdAt });
  });

  it('refuses invalid workouts naming every bad field', async () => {
    const res = await json(`${api}/workouts`, {
      method: 'POST',
      json: { userId: 'nope', kind: '', startedAt: 'yesterday', durationSeconds: -1, sets: [{ exercise: 'squat', reps: -5 }] },
    });
    expect(res.status).toBe(400);
    expectErrorShape(res.body, 'validation_failed');
    expect(fieldsOf(res.body)).toEqual(['durationSeconds', 'kind', 'sets.0.reps', 'startedAt', 'userId']);
  });

  it('answers 404 when the user does not exist, and writes nothing', async () => {
    const userId = randomUUID();
    const res = await json(`${api}/workouts`, {
      method: 'POST',
      json: { userId, kind: 'run', startedAt: '2026-03-01T07:00:00Z', sets: [] },
    });
    expect(res.status).toBe(404);
    expectErrorShape(res.body, 'not_found');
    expect(res.text).not.toMatch(/foreign key|workouts_user_id_fkey/);
    const rows = await t.db.admin('SELECT count(*)::int AS n FROM workouts WHERE user_id = $1', [userId]);
    expect(rows.rows[0].n).toBe(0);
  });

  it('answers 415, 400 and 413 for bad bodies', async () => {
    expect((await json(`${api}/workouts`, { method: 'POST', headers: { 'content-type': 'text/csv' }, body: 'a,b' })).status).toBe(415);
    const badJson = await json(`${api}/workouts`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[1,2' });
    expect(badJson.status).toBe(400);
    expect(badJson.body.error.code).toBe('invalid_json');
    const u = await createUser();
    const sets = Array.from({ length: 40 }, () => ({ exercise: 'squat', reps: 5 }));
    const big = await json(`${api}/workouts`, {
      method: 'POST',
      json: { userId: u.id, kind: 'strength', startedAt: '2026-03-01T07:00:00Z', sets },
    });
    expect(big.status).toBe(413);
  });

  it('GET answers 404 for an unknown workout and 400 for a malformed id', async () => {
    const missing = await json(`${api}/workouts/${randomUUID()}`);
    expect(missing.status).toBe(404);
    expectErrorShape(missing.body, 'not_found');
    const bad = await json(`${api}/workouts/123`);
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad.body)).toEqual(['id']);
  });

  it('DELETE removes the workout and its sets (204), then answers 404', async () => {
    const u = await createUser();
    const w = await createWorkout(u.id, { sets: [{ exercise: 'row', reps: 12, weightKg: 40 }] });
    const del = await fetch(`${api}/workouts/${w.id}`, { method: 'DELETE' });
    expect(del.status).toBe(204);
    expect(await del.text()).toBe('');
    expect((await json(`${api}/workouts/${w.id}`)).status).toBe(404);
    const sets = await t.db.admin('SELECT count(*)::int AS n FROM workout_sets WHERE workout_id = $1', [w.id]);
    expect(sets.rows[0].n).toBe(0);
    const again = await json(`${api}/workouts/${w.id}`, { method: 'DELETE' });
    expect(again.status).toBe(404);
    expectErrorShape(again.body, 'not_found');
    const bad = await json(`${api}/workouts/xyz`, { method: 'DELETE' });
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad.body)).toEqual(['id']);
  });
});

describe('GET /api/users/:id/workouts', () => {
  it('pages through every workout with limit and cursor, newest first, ties broken by id', async () => {
    const u = await createUser();
    const starts = [
      '2026-01-01T08:00:00Z',
      '2026-01-02T08:00:00Z',
      '2026-01-03T08:00:00Z',
      '2026-01-03T08:00:00Z', // same instant: the id decides
      '2026-01-03T08:00:00Z',
      '2026-01-04T08:00:00Z',
      '2026-01-05T08:00:00Z',
      '2026-01-06T08:00:00.250Z',
    ];
    const created: { id: string; startedAt: string }[] = [];
    for (const [i, startedAt] of starts.entries()) {
      created.push(await createWorkout(u.id, { startedAt, sets: Array.from({ length: i % 3 }, () => ({ exercise: 'lunge', reps: 10 })) }));
    }
    const other = await createUser();
    await createWorkout(other.id); // another user's workout never shows up

    const expectedOrder = [...created]
      .sort((a, b) => (a.startedAt === b.startedAt ? (a.id < b.id ? 1 : -1) : a.startedAt < b.startedAt ? 1 : -1))
      .map((w) => w.id);

    const pages: { id: string; setCount: number; userId: string }[][] = [];
    let cursor: string | null = null;
    do {
      const q: string = cursor ? `?limit=3&cursor=${encodeURIComponent(cursor)}` : '?limit=3';
      const res = await json(`${api}/users/${u.id}/workouts${q}`);
      expect(res.status).toBe(200);
      pages.push(res.body.items);
      cursor = res.body.nextCursor;
      expect(pages.length).toBeLessThanOrEqual(4);
    } while (cursor);

    expect(pages.map((p) => p.length)).toEqual([3, 3, 2]);
    const items = pages.flat();
    expect(items.map((i) => i.id)).toEqual(expectedOrder);
    expect(items.every((i) => i.userId === u.id)).toBe(true);
    const setCounts = new Map(created.map((w, i) => [w.id, i % 3]));
    for (const item of items) expect(item.setCount).toBe(setCounts.get(item.id));

    const all = await json(`${api}/users/${u.id}/workouts`);
    expect(all.body.items.map((i: { id: string }) => i.id)).toEqual(expectedOrder);
    expect(all.body.nextCursor).toBeNull();
  });

  it('loses no workout whose start times differ by less than a millisecond', async () => {
    const u = await createUser();
    const starts = [
      '2026-04-01T10:00:00.123400Z',
      '2026-04-01T10:00:00.123900Z',
      '2026-04-01T10:00:00.123100Z',
      '2026-04-01T10:00:00.122Z',
    ];
    const ids = new Set<string>();
    for (const startedAt of starts) ids.add((await createWorkout(u.id, { startedAt })).id);
    const seen: string[] = [];
    let cursor: string | null = null;
    for (let page = 0; page < 5; page++) {
      const q: string = cursor ? `?limit=1&cursor=${encodeURIComponent(cursor)}` : '?limit=1';
      const res = await json(`${api}/users/${u.id}/workouts${q}`);
      expect(res.status).toBe(200);
      seen.push(...res.body.items.map((i: { id: string }) => i.id));
      cursor = res.body.nextCursor;
      if (!cursor) break;
    }
    expect(new Set(seen)).toEqual(ids);
    expect(seen.length).toBe(ids.size);
  });

  it('refuses a bad limit, a bad cursor and unknown parameters; 404 for an unknown user', async () => {
    const u = await createUser();
    for (const [q, field] of [
      ['?limit=0', 'limit'],
      ['?limit=101', 'limit'],
      ['?limit=abc', 'limit'],
      // Decimal digits only: Number() would take each of these as 16, 10 or 5.
      ['?limit=0x10', 'limit'],
      ['?limit=1e1', 'limit'],
      ['?limit=%205', 'limit'],
      ['?limit=5.0', 'limit'],
      ['?limit=', 'limit'],
      ['?cursor=bm9wZQ', 'cursor'],
    ] as const) {
      const res = await json(`${api}/users/${u.id}/workouts${q}`);
      expect(res.status, q).toBe(400);
      expect(fieldsOf(res.body), q).toEqual([field]);
    }
    const unknownParam = await json(`${api}/users/${u.id}/workouts?sort=asc`);
    expect(unknownParam.status).toBe(400);
    const missing = await json(`${api}/users/${randomUUID()}/workouts`);
    expect(missing.status).toBe(404);
    expectErrorShape(missing.body, 'not_found');
    const badId = await json(`${api}/users/zzz/workouts`);
    expect(badId.status).toBe(400);
    expect(fieldsOf(badId.body)).toEqual(['id']);
  });
});

describe('GET /api/users/:id/summary', () => {
  it('reports exact aggregates', async () => {
    const u = await createUser();
    await createWorkout(u.id, {
      kind: 'strength',
      startedAt: '2026-05-01T07:00:00Z',
      durationSeconds: 3600,
      sets: [
        { exercise: 'squat', reps: 5, weightKg: 100 },
        { exercise: 'squat', reps: 5, weightKg: 100 },
        { exercise: 'bench press', reps: 8, weightKg: 70.5 },
      ],
    });
    await createWorkout(u.id, { kind: 'run', startedAt: '2026-05-02T06:30:00Z', durationSeconds: 1800, sets: [] });
    await createWorkout(u.id, {
      kind: 'strength',
      startedAt: '2026-05-03T18:00:00Z',
      durationSeconds: 600,
      sets: [{ exercise: 'deadlift', reps: 3, weightKg: 140.25 }],
    });
    await createWorkout(u.id, { kind: 'calisthenics', startedAt: '2026-04-30T12:00:00Z', sets: [{ exercise: 'pull-up', reps: 10 }] });
    const other = await createUser();
    await createWorkout(other.id, { kind: 'run', durationSeconds: 999, sets: [{ exercise: 'x', reps: 99, weightKg: 9 }] });

    const res = await json(`${api}/users/${u.id}/summary`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      userId: u.id,
      workouts: 4,
      sets: 5,
      reps: 31,
      volumeKg: 5 * 100 + 5 * 100 + 8 * 70.5 + 3 * 140.25,
      durationSeconds: 6000,
      firstWorkoutAt: '2026-04-30T12:00:00.000Z',
      lastWorkoutAt: '2026-05-03T18:00:00.000Z',
      byKind: [
        { kind: 'strength', workouts: 2 },
        { kind: 'calisthenics', workouts: 1 },
        { kind: 'run', workouts: 1 },
      ],
    });
  });

  it('reports zeros for a user without workouts', async () => {
    const u = await createUser();
    const res = await json(`${api}/users/${u.id}/summary`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      userId: u.id,
      workouts: 0,
      sets: 0,
      reps: 0,
      volumeKg: 0,
      durationSeconds: 0,
      firstWorkoutAt: null,
      lastWorkoutAt: null,
      byKind: [],
    });
  });

  it('answers 404 for an unknown user and 400 for a malformed id', async () => {
    const missing = await json(`${api}/users/${randomUUID()}/summary`);
    expect(missing.status).toBe(404);
    expectErrorShape(missing.body, 'not_found');
    const bad = await json(`${api}/users/1/summary`);
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad.body)).toEqual(['id']);
  });
});

describe('GET /api/users/:id/workouts/latest', () => {
  it("answers the user's latest workout with its sets, in order", async () => {
    const u = await createUser();
    await createWorkout(u.id, { kind: 'run', startedAt: '2026-05-01T07:00:00Z', sets: [] });
    const latest = await createWorkout(u.id, {
      kind: 'strength',
      startedAt: '2026-05-03T18:00:00Z',
      sets: [
        { exercise: 'deadlift', reps: 3, weightKg: 140 },
        { exercise: 'row', reps: 8 },
      ],
    });
    await createWorkout(u.id, { kind: 'walk', startedAt: '2026-05-02T06:30:00Z', sets: [] });
    const res = await json(`${api}/users/${u.id}/workouts/latest`);
    expect(res.status, res.text).toBe(200);
    expect(res.body).toEqual(latest);
  });

  it('answers 404 for a user without workouts and for an unknown user, 400 for a malformed id', async () => {
    const u = await createUser();
    const none = await json(`${api}/users/${u.id}/workouts/latest`);
    expect(none.status).toBe(404);
    expectErrorShape(none.body, 'not_found');
    expect(none.body.error.message).toMatch(/^Workout of user /);
    const missing = await json(`${api}/users/${randomUUID()}/workouts/latest`);
    expect(missing.status).toBe(404);
    expect(missing.body.error.message).toMatch(/^User /);
    const bad = await json(`${api}/users/1/workouts/latest`);
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad.body)).toEqual(['id']);
  });
});

describe('unknown routes', () => {
  it('answers 404 route_not_found with the JSON error shape and a request id', async () => {
    for (const [method, path] of [
      ['GET', '/nope'],
      ['GET', '/api/users/'],
      ['PUT', '/api/users/00000000-0000-4000-8000-000000000001/extra'],
    ] as const) {
      const res = await json(`${t.url}${path}`, { method });
      expect(res.status, `${method} ${path}`).toBe(404);
      expectErrorShape(res.body, 'route_not_found');
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    }
  });

  it('answers a known path with another method 405 method_not_allowed, naming the allowed ones', async () => {
    for (const [method, path, allow] of [
      ['GET', '/api/users', 'POST'],
      ['PUT', '/api/users/00000000-0000-4000-8000-000000000001', 'GET, HEAD'],
      ['POST', '/api/workouts/123', 'GET, DELETE, HEAD'],
    ] as const) {
      const res = await json(`${t.url}${path}`, { method });
      expect(res.status, `${method} ${path}`).toBe(405);
      expect(res.headers.get('allow')).toBe(allow);
      expectErrorShape(res.body, 'method_not_allowed');
    }
  });

  it('echoes a well-formed X-Request-Id and replaces a malformed one', async () => {
    const ok = await json(`${t.url}/nope`, { headers: { 'x-request-id': 'req-123.abc' } });
    expect(ok.body.error.requestId).toBe('req-123.abc');
    expect(ok.headers.get('x-request-id')).toBe('req-123.abc');
    const bad = await json(`${t.url}/nope`, { headers: { 'x-request-id': 'bad id <script>' } });
    expect(bad.body.error.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe('no response leaks internals', () => {
  it('no response so far carried a stack trace, the connection string, or the database host, user or password', () => {
    expect(seenResponses.length).toBeGreaterThan(50);
    const leaks = seenResponses.flatMap((text) => leaksIn(text, t.db).map((what) => `${what}: ${text.slice(0, 200)}`));
    expect(leaks).toEqual([]);
  });
});
