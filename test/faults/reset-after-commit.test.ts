/**
 * The connection drops right after the server's COMMIT reply (the fault proxy cuts it at the
 * CommandComplete "COMMIT"): the transaction is durable, but the gateway never hears so. The
 * client must get an error (the outcome is unknown to the gateway), the gateway must not have
 * re-run the transaction blindly (exactly one row), and a re-send with the same Idempotency-Key
 * must return the stored result with `Idempotent-Replayed: true`, byte for byte.
 * Real PostgreSQL only: the gateway's pool talks to it through the proxy.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import type { FaultProxy } from '../helpers/fault-proxy.js';
import { startBehindFaultProxy, type BehindFaultProxy } from '../helpers/fault-gateway.js';
import { json, leaksIn, seenResponses, waitFor, type TestGateway } from '../helpers/gateway.js';
import { Ledger, sampleConnections } from '../helpers/ledger.js';

const suiteName = onRealPostgres(
  'reset right after COMMIT (real PostgreSQL: the pool connects through the fault proxy)',
  PGLITE_CANNOT.serverView,
);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let db: TestDatabase;
  let proxy: FaultProxy;
  let t: TestGateway;
  let userId: string;

  let env: BehindFaultProxy | undefined;
  beforeAll(async () => {
    env = await startBehindFaultProxy({ POOL_MAX: '2', POOL_MIN: '1', REQUEST_TIMEOUT_MS: '5000' }, 'commit');
    ({ db, proxy, t, userId } = env);
  });

  afterAll(() => env?.stop());

  for (const forwardCommit of [false, true]) {
    it(`${forwardCommit ? 'COMMIT reply forwarded, ReadyForQuery lost' : 'COMMIT reply lost'}: error, one row, replay with the same key`, async () => {
      const ledger = new Ledger({ baseUrl: t.url, userId, requestTimeoutMs: 8_000, prefix: `rac${forwardCommit ? 1 : 0}` });
      const before = t.gateway.database.stats()!;
      const sampler = sampleConnections(db, t.applicationName);
      const routeBefore = (await json(`${t.url}/stats`)).body.routes.find(
        (r: { route: string; method: string }) => r.method === 'POST' && r.route === '/api/workouts',
      );

      await proxy.setMode({ kind: 'reset-after-commit', forwardCommit });
      const cut = proxy.nextCommitCut();
      const first = await ledger.write();
      await cut;
      expect(proxy.mode.kind).toBe('pass');

      // The client is told the outcome is unknown: a 503/504 JSON error, not a 201 and not a 500.
      expect([503, 504]).toContain(first.status);
      expect(first.outcome).toBe('ambiguous');
      const { rows } = await db.admin('SELECT id FROM workouts WHERE kind = $1', [first.key]);
      expect(rows).toHaveLength(1); // committed once, and not re-run by a blind retry
      // The cut connection was discarded, not put back for the next request.
      await waitFor(() => t.gateway.database.stats()!.closedCount - before.closedCount >= 1, {
        what: 'the cut connection removed from the pool',
      });
      const after = t.gateway.database.stats()!;
      expect(after.retryCount - before.retryCount).toBe(0);
      expect(after.closedCount - before.closedCount).toBe(1);

      // Same key again: the stored response, not a second workout.
      const body = ledger.body(first.key);
      const replay = await json(`${t.url}/api/workouts`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': first.key },
        body,
      });
      expect(replay.status).toBe(201);
      expect(replay.headers.get('idempotent-replayed')).toBe('true');
      expect(replay.body.id).toBe(rows[0].id);
      expect(replay.body.sets).toHaveLength(2);
      const again = await json(`${t.url}/api/workouts`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': first.key },
        body,
      });
      expect(again.text).toBe(replay.text);

      await ledger.resolveAmbiguous();
      const { max } = await sampler.stop();
      const counts = ledger.report(`reset after COMMIT (${forwardCommit ? 'reply forwarded' : 'reply lost'})`, {
        firstAnswer: `${first.status} ${first.code}`,
        maxConnections: max,
      });
      expect(max).toBeLessThanOrEqual(2);
      expect(counts.replayed).toBe(1);
      expect((await ledger.verify(db, t.applicationName)).problems).toEqual([]);

      const routeAfter = (await json(`${t.url}/stats`)).body.routes.find(
        (r: { route: string; method: string }) => r.method === 'POST' && r.route === '/api/workouts',
      );
      expect(routeAfter.retryCount - (routeBefore?.retryCount ?? 0)).toBe(0);
      expect(routeAfter.replayCount - (routeBefore?.replayCount ?? 0)).toBe(3); // the ledger's re-send and the two above
    });
  }

  it('no response leaked internals', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, db))).toEqual([]);
  });
});
