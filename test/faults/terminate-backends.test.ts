/**
 * Every pool backend is terminated (pg_terminate_backend by application_name) several times
 * while writes and reads are under way. The ledger must come out clean — acknowledged writes
 * exactly once, definite failures absent, ambiguous ones applied exactly once after a re-send
 * with their key, no partial workout, no session left idle in transaction — Postgres must never
 * see more than POOL_MAX live connections of the gateway, and the service goes on by itself.
 * Real PostgreSQL only: it needs per-connection backends to terminate.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { json, leaksIn, seenResponses, startTestGateway, type TestGateway, catchUnhandled } from '../helpers/gateway.js';
import { Ledger, sampleConnections } from '../helpers/ledger.js';

const POOL_MAX = 4;
const KILLS = 4;

const suiteName = onRealPostgres(
  'pool backends terminated repeatedly under load (real PostgreSQL: pg_terminate_backend)',
  PGLITE_CANNOT.serverView,
);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let t: TestGateway;
  let userId: string;
  const watcher = catchUnhandled();
  const unhandled = watcher.errors;

  beforeAll(async () => {
    watcher.start();
    t = await startTestGateway({ POOL_MAX: String(POOL_MAX), POOL_MIN: '2', REQUEST_TIMEOUT_MS: '5000' });
    const res = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `kill-${randomUUID()}@example.com`, name: 'Kill' } });
    expect(res.status).toBe(201);
    userId = res.body.id;
  });

  afterAll(async () => {
    await t?.stop();
    watcher.stop();
  });

  it(`${KILLS} rounds of pg_terminate_backend during load: ledger clean, ≤ ${POOL_MAX} connections, service continues`, async () => {
    const ledger = new Ledger({ baseUrl: t.url, userId, requestTimeoutMs: 8_000, prefix: 'term' });
    const sampler = sampleConnections(t.db, t.applicationName);
    let loading = true;
    const readStatuses: number[] = [];
    const reads = (async () => {
      while (loading) {
        const r = await json(`${t.url}/api/users/${userId}/workouts?limit=5`, { signal: AbortSignal.timeout(8_000) });
        readStatuses.push(r.status);
      }
    })();
    const load = ledger.load({ concurrency: 6, count: 150 });

    let terminated = 0;
    for (let round = 0; round < KILLS; round++) {
      await new Promise((r) => setTimeout(r, 120));
      // Leave the doomed pids out of the sample first: an exiting backend can linger a moment in
      // pg_stat_activity after the pool has already opened its replacement.
      const { rows } = await t.db.admin("SELECT pid FROM pg_stat_activity WHERE split_part(application_name, ' [pg:', 1) = $1", [
        t.applicationName,
      ]);
      const pids = rows.map((r) => r.pid as number);
      sampler.exclude(pids);
      const killed = await t.db.admin('SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n FROM unnest($1::int[]) AS pid', [
        pids,
      ]);
      terminated += killed.rows[0].n;
    }
    await load;
    loading = false;
    await reads;
    const { max, samples } = await sampler.stop();

    await ledger.resolveAmbiguous();
    const counts = ledger.report('terminate backends', {
      terminated,
      maxConnections: max,
      samples,
      reads: readStatuses.reduce<Record<number, number>>((a, s) => ((a[s] = (a[s] ?? 0) + 1), a), {}),
    });
    expect(terminated).toBeGreaterThanOrEqual(KILLS);
    expect(counts.sent).toBe(150);
    expect(counts.acknowledged).toBeGreaterThan(0);
    expect((await ledger.verify(t.db, t.applicationName)).problems).toEqual([]);
    expect(samples).toBeGreaterThan(5);
    expect(max).toBeLessThanOrEqual(POOL_MAX);
    // Reads answer 200 or a 503 (a read on a dying connection is retried, within the budget), never 500.
    expect(readStatuses.filter((s) => s !== 200 && s !== 503)).toEqual([]);

    // The service continues on fresh connections.
    for (let i = 0; i < 3; i++) expect((await ledger.write()).status).toBe(201);
    expect((await json(`${t.url}/health/ready`)).status).toBe(200);
    expect(t.gateway.database.stats()!.active).toBe(0);
    expect(unhandled).toEqual([]);
  });

  it('no response leaked internals', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, t.db))).toEqual([]);
  });
});
