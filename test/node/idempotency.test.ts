/**
 * Idempotency-Key on transactional routes, on a real gateway and database: a repeat returns the
 * stored response without writing, a different body with the same key is refused, a twin that
 * arrives while the first still runs is told to come back, and the key is written in the same
 * transaction as the rows (a failed write leaves no key behind).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { adminClient, json, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';
import { storedKey } from '../helpers/ledger.js';

let t: TestGateway;
let userId: string;

const workout = (kind: string) => ({
  userId,
  kind,
  startedAt: '2026-11-01T10:00:00Z',
  sets: [{ exercise: 'row', reps: 10, weightKg: 40 }],
});
const post = (key: string | undefined, body: unknown) =>
  json(`${t.url}/api/workouts`, { method: 'POST', json: body, headers: key === undefined ? {} : { 'idempotency-key': key } });
const rowsOfKind = async (kind: string) =>
  Number((await t.db.admin('SELECT count(*) FROM workouts WHERE kind = $1', [kind])).rows[0].count);

beforeAll(async () => {
  t = await startTestGateway({ POOL_MAX: '4' });
  const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `idem-${Date.now()}@example.com`, name: 'Idem' } });
  expect(u.status).toBe(201);
  userId = u.body.id;
});
afterAll(() => t?.stop());

describe('Idempotency-Key', () => {
  it('replays the stored response for the same key and body, writing once', async () => {
    const first = await post('key-same-1', workout('idem-same'));
    expect(first.status).toBe(201);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    const second = await post('key-same-1', workout('idem-same'));
    expect(second.status).toBe(201);
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    expect(second.text).toBe(first.text); // byte-identical replay
    expect(await rowsOfKind('idem-same')).toBe(1);
    const stats = await json(`${t.url}/stats`);
    const route = stats.body.routes.find((r: { method: string; route: string }) => r.method === 'POST' && r.route === '/api/workouts');
    expect(route.replayCount).toBeGreaterThanOrEqual(1);
  });

  it('refuses the same key with a different body (422) and writes nothing', async () => {
    expect((await post('key-reuse-1', workout('idem-a'))).status).toBe(201);
    const other = await post('key-reuse-1', workout('idem-b'));
    expect(other.status).toBe(422);
    expect(other.body.error.code).toBe('idempotency_key_reused');
    expect(await rowsOfKind('idem-b')).toBe(0);
  });

  // PGlite serialises every connection behind an open transaction, so the twin could not even run.
  it.skipIf(!realPostgresUrl)(
    onRealPostgres('answers 409 to a twin while the first is still running, then replays once it finished', PGLITE_CANNOT.secondSession),
    async () => {
      // Block the first request inside its transaction: it needs workout_sets, which we lock.
      const locker = await adminClient(t.db);
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE workout_sets IN ACCESS EXCLUSIVE MODE');
      const first = post('key-twin-1', workout('idem-twin'));
      try {
        // Wait until the first holds the key's advisory lock (it blocks on the table lock next).
        const deadline = Date.now() + 5_000;
        let twin = await post('key-twin-1', workout('idem-twin'));
        while (twin.status !== 409 && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
          twin = await post('key-twin-1', workout('idem-twin'));
        }
        expect(twin.status).toBe(409);
        expect(twin.body.error.code).toBe('idempotency_in_progress');
        expect(twin.headers.get('retry-after')).toBeTruthy();
      } finally {
        await locker.query('COMMIT');
        await locker.end();
      }
      expect((await first).status).toBe(201);
      const after = await post('key-twin-1', workout('idem-twin'));
      expect(after.status).toBe(201);
      expect(after.headers.get('idempotent-replayed')).toBe('true');
      expect(await rowsOfKind('idem-twin')).toBe(1);
    },
  );

  it('records no key when the write fails, so a corrected retry with the same key runs', async () => {
    const bad = await post('key-fail-1', { ...workout('idem-fail'), userId: '00000000-0000-4000-8000-00000000ffff' });
    expect(bad.status).toBe(404);
    const stored = Number(
      (await t.db.admin('SELECT count(*) FROM poolgate_idempotency_keys WHERE key = $1', [storedKey('key-fail-1')])).rows[0].count,
    );
    expect(stored).toBe(0);
    // The same key with another body is a new request now, since nothing was stored.
    const good = await post('key-fail-1', workout('idem-fail'));
    expect(good.status).toBe(201);
    expect(await rowsOfKind('idem-fail')).toBe(1);
  });

  it('keys DELETE and PATCH too, and leaves writes without a key alone', async () => {
    const w = await post(undefined, workout('idem-del'));
    expect(w.status).toBe(201);
    const del1 = await json(`${t.url}/api/workouts/${w.body.id}`, { method: 'DELETE', headers: { 'idempotency-key': 'key-del-1' } });
    const del2 = await json(`${t.url}/api/workouts/${w.body.id}`, { method: 'DELETE', headers: { 'idempotency-key': 'key-del-1' } });
    expect([del1.status, del2.status]).toEqual([204, 204]);
    expect(del2.headers.get('idempotent-replayed')).toBe('true');
    const del3 = await json(`${t.url}/api/workouts/${w.body.id}`, { method: 'DELETE' });
    expect(del3.status).toBe(404);
    const p = await json(`${t.url}/api/users/${userId}/preferences`, {
      method: 'PATCH',
      json: { weeklyGoal: 3 },
      headers: { 'idempotency-key': 'key-patch-1' },
    });
    expect(p.status).toBe(200);
    expect(p.body.preferences.weeklyGoal).toBe(3);
  });

  it('purges expired records on its interval and keeps live ones', async () => {
    const p = await startTestGateway({ IDEMPOTENCY_PURGE_INTERVAL_MS: '1000' }, { db: t.db });
    try {
      await t.db.admin(
        `INSERT INTO poolgate_idempotency_keys (key, request_hash, status, body, expires_at) VALUES
           ('purge-old', 'h', 201, NULL, now() - interval '1 minute'),
           ('purge-live', 'h', 201, NULL, now() + interval '1 hour')`,
      );
      await t.db.admin(`INSERT INTO poolgate_forward_nonces (nonce, expires_at) VALUES ('nonce-old', now() - interval '1 minute')`);
      // The row goes at the purge's commit; its log line a moment later.
      await waitFor(
        async () =>
          Number((await t.db.admin("SELECT count(*) FROM poolgate_idempotency_keys WHERE key = 'purge-old'")).rows[0].count) === 0 &&
          p.logs.some((l) => /purged \d+ expired idempotency records/.test(l)),
        {
          timeoutMs: 10_000,
          what: 'the expired record to be purged',
        },
      );
      expect(Number((await t.db.admin("SELECT count(*) FROM poolgate_idempotency_keys WHERE key = 'purge-live'")).rows[0].count)).toBe(1);
      expect(Number((await t.db.admin("SELECT count(*) FROM poolgate_forward_nonces WHERE nonce = 'nonce-old'")).rows[0].count)).toBe(0);
      expect(p.logs.some((l) => /purged \d+ expired idempotency records/.test(l))).toBe(true);
    } finally {
      await p.stop();
    }
  });

  it('rejects a malformed key with 400', async () => {
    const res = await post('x'.repeat(300), workout('idem-long'));
    expect(res.status).toBe(400);
    expect(res.body.error.fields[0].path).toBe('Idempotency-Key');
    expect(await rowsOfKind('idem-long')).toBe(0);
  });
});
