/**
 * The database becomes unreachable during load and comes back: the fault proxy in front of it
 * resets every open connection and then either refuses new ones (listener closed:
 * ECONNREFUSED) or resets them as they arrive. While it is down, requests fail fast with 503
 * (none hangs past its deadline), the breaker opens (/stats shows it, /health/ready answers
 * 503); once the proxy passes again the gateway recovers by itself within a few seconds (the
 * breaker's half-open probe), and the ledger is clean. Real PostgreSQL only: the pool connects
 * through the proxy and the ledger reads pg_stat_activity.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import type { FaultProxy } from '../helpers/fault-proxy.js';
import { startBehindFaultProxy, type BehindFaultProxy } from '../helpers/fault-gateway.js';
import { json, leaksIn, seenResponses, type TestGateway } from '../helpers/gateway.js';
import { Ledger, sampleConnections } from '../helpers/ledger.js';

const POOL_MAX = 4;
const REQUEST_TIMEOUT_MS = 2_000;
/** Deadline + the pool's 1 s cancel grace + slack: when the ledger's client gives up on a request (status 0). */
const LATEST_MS = REQUEST_TIMEOUT_MS + 2_000;
const DOWN_MS = 1_500;
/** How long to wait for the gateway to recover by itself (its probe waits are at most 3 s); a bound on the wait, not a speed asserted. */
const RECOVERY_MS = 30_000;

const suiteName = onRealPostgres('database cut off and back (real PostgreSQL through the fault proxy)', PGLITE_CANNOT.serverView);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let db: TestDatabase;
  let proxy: FaultProxy;
  let t: TestGateway;
  let userId: string;

  let env: BehindFaultProxy | undefined;
  beforeAll(async () => {
    env = await startBehindFaultProxy(
      {
        POOL_MAX: String(POOL_MAX),
        POOL_MIN: '2',
        REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
        POOL_CONNECTION_TIMEOUT_MS: '1000',
        POOL_ACQUIRE_TIMEOUT_MS: '1000',
      },
      'cut',
    );
    ({ db, proxy, t, userId } = env);
  });

  afterAll(() => env?.stop());

  for (const how of ['refuse', 'reset'] as const) {
    it(`${how === 'refuse' ? 'listener closed (ECONNREFUSED)' : 'every connection reset'}: fast 503s, breaker opens, recovers by itself`, async () => {
      const ledger = new Ledger({ baseUrl: t.url, userId, requestTimeoutMs: LATEST_MS + 2_000, prefix: `cut${how}` });
      const sampler = sampleConnections(db, t.applicationName);
      let loading = true;
      const load = ledger.load({ concurrency: 4, until: () => !loading, pauseMs: 40 });

      await new Promise((r) => setTimeout(r, 400));
      const downAt = performance.now();
      if (how === 'refuse') {
        await proxy.setMode({ kind: 'refuse' });
        proxy.resetAll();
      } else {
        await proxy.setMode({ kind: 'reset' });
      }
      const seenBreaker = new Set<string>();
      const readyWhileDown = new Set<number>();
      while (performance.now() - downAt < DOWN_MS) {
        const stats = await json(`${t.url}/stats`);
        for (const b of stats.body.breakers) seenBreaker.add(b.state);
        readyWhileDown.add((await json(`${t.url}/health/ready`)).status);
        await new Promise((r) => setTimeout(r, 100));
      }
      await proxy.setMode({ kind: 'pass' });
      const upAt = performance.now();

      // Recovery: a write sent after the proxy came back succeeds, and the gateway says it is ready.
      let recoveredAt: number | undefined;
      while (performance.now() - upAt < RECOVERY_MS) {
        const ok = ledger.entries.some((e) => e.startedAt > upAt && e.outcome === 'acknowledged');
        if (ok && (await json(`${t.url}/health/ready`)).status === 200) {
          recoveredAt = performance.now();
          break;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, 300));
      loading = false;
      await load;
      const { max } = await sampler.stop();

      const down = ledger.entries.filter((e) => e.startedAt > downAt + 100 && e.startedAt + e.durationMs < upAt);
      await ledger.resolveAmbiguous();
      const counts = ledger.report(`proxy cut (${how})`, {
        downMs: DOWN_MS,
        duringOutage: down.length,
        duringOutageMaxMs: Math.round(Math.max(0, ...down.map((e) => e.durationMs))),
        recoveredAfterMs: recoveredAt === undefined ? null : Math.round(recoveredAt - upAt),
        breakerStates: [...seenBreaker],
        readyWhileDown: [...readyWhileDown],
        maxConnections: max,
      });

      // While down: every write failed with a 503/504 JSON answer, with Retry-After on the 503s.
      expect(down.length).toBeGreaterThanOrEqual(5);
      for (const e of down) {
        expect([503, 504], JSON.stringify(e)).toContain(e.status);
        if (e.status === 503) expect(e.retryAfter, JSON.stringify(e)).toMatch(/^\d+$/);
      }
      // Failing fast: the open breaker answers without trying (circuit_open), not at the deadline.
      expect(down.some((e) => e.code === 'circuit_open')).toBe(true);
      // No request hung until its client gave up (status 0): each had the gateway's answer.
      expect(ledger.entries.filter((e) => e.status === 0)).toEqual([]);

      expect(seenBreaker.has('open')).toBe(true);
      expect(readyWhileDown.has(503)).toBe(true);
      expect(readyWhileDown.has(200)).toBe(false);
      expect(recoveredAt, 'recovered by itself after the proxy came back').toBeDefined();
      expect(counts.acknowledged).toBeGreaterThan(5);
      expect((await ledger.verify(db, t.applicationName)).problems).toEqual([]);
      expect(max).toBeLessThanOrEqual(POOL_MAX);
      expect((await json(`${t.url}/stats`)).body.breakers.map((b: { state: string }) => b.state)).toEqual(['closed']);
    });
  }

  it('no response leaked internals', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, db))).toEqual([]);
  });
});
