/**
 * The network to the database goes silent (the fault proxy accepts and forwards nothing — no
 * error, no reset, nothing to react to). Each request must still end by its deadline (504
 * timeout, or 503 when it never got a connection), the connection stuck in the blackhole must be
 * discarded rather than handed to the next request, and once the network passes again later
 * requests succeed on fresh connections. Real PostgreSQL only: the pool talks to it through the
 * proxy, and the ledger reads pg_stat_activity.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import type { FaultProxy } from '../helpers/fault-proxy.js';
import { startBehindFaultProxy, type BehindFaultProxy } from '../helpers/fault-gateway.js';
import { json, leaksIn, seenResponses, waitFor, type TestGateway } from '../helpers/gateway.js';
import { Ledger, sampleConnections } from '../helpers/ledger.js';

const REQUEST_TIMEOUT_MS = 1_000;
/** The deadline, plus the 1 s the pool gives its out-of-band cancel before cutting the socket, plus slack. */
const LATEST_MS = REQUEST_TIMEOUT_MS + 2_000;

const suiteName = onRealPostgres('blackholed database connection (real PostgreSQL through the fault proxy)', PGLITE_CANNOT.serverView);
describe.skipIf(!realPostgresUrl)(suiteName, () => {
  let db: TestDatabase;
  let proxy: FaultProxy;
  let t: TestGateway;
  let userId: string;

  let env: BehindFaultProxy | undefined;
  beforeAll(async () => {
    // The statement timeout stays at its 30 s default: only the request deadline can end these requests in time.
    env = await startBehindFaultProxy(
      {
        POOL_MAX: '3',
        POOL_MIN: '2',
        REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
        POOL_CONNECTION_TIMEOUT_MS: '500',
      },
      'hole',
    );
    ({ db, proxy, t, userId } = env);
  });

  afterAll(() => env?.stop());

  it('requests end by their deadline, stuck connections are discarded, and service resumes after', async () => {
    const ledger = new Ledger({ baseUrl: t.url, userId, requestTimeoutMs: LATEST_MS + 3_000, prefix: 'hole' });
    await waitFor(() => t.gateway.database.stats()!.idle === 2, { what: 'two warm idle connections' });
    const before = t.gateway.database.stats()!;
    const sampler = sampleConnections(db, t.applicationName);

    await proxy.setMode({ kind: 'blackhole' });
    const reads = Array.from({ length: 2 }, async () => {
      const started = performance.now();
      const res = await json(`${t.url}/api/users/${userId}`, { signal: AbortSignal.timeout(LATEST_MS + 3_000) });
      return { status: res.status, code: res.body?.error?.code as string | undefined, ms: performance.now() - started };
    });
    const writes = Array.from({ length: 3 }, () => ledger.write());
    const [readResults, writeResults] = await Promise.all([Promise.all(reads), Promise.all(writes)]);
    const all = [...readResults, ...writeResults.map((w) => ({ status: w.status, code: w.code, ms: w.durationMs }))];
    // The two warm connections went into the blackhole with a statement; both are thrown away.
    await waitFor(() => t.gateway.database.stats()!.closedCount - before.closedCount >= 2, { what: 'the stuck connections discarded' });
    const during = t.gateway.database.stats()!;
    await proxy.setMode({ kind: 'pass' });

    // Each ended by the gateway's own deadline or a refusal: a request left hanging would have been
    // aborted by its client, which is neither a 503 nor a 504.
    for (const r of all) expect([503, 504], JSON.stringify(r)).toContain(r.status);
    expect(during.total).toBeLessThan(before.total); // the pool total dropped: nothing stuck was kept

    // Service resumes on fresh connections.
    await waitFor(async () => (await json(`${t.url}/health/ready`)).status === 200, { timeoutMs: 8_000, what: 'ready again' });
    for (let i = 0; i < 3; i++) expect((await json(`${t.url}/api/users/${userId}`)).status).toBe(200);
    await ledger.resolveAmbiguous();
    const { max } = await sampler.stop();
    const counts = ledger.report('blackhole', {
      maxConnections: max,
      reads: readResults.map((r) => `${r.status} ${r.code} ${Math.round(r.ms)}ms`),
      discarded: during.closedCount - before.closedCount,
      poolTotal: `${before.total} → ${during.total}`,
    });
    expect(counts.sent).toBe(3);
    expect(max).toBeLessThanOrEqual(3);
    expect((await ledger.verify(db, t.applicationName)).problems).toEqual([]);
    expect(t.gateway.database.stats()!.active).toBe(0);
  });

  it('no response leaked internals', () => {
    expect(seenResponses.flatMap((text) => leaksIn(text, db))).toEqual([]);
  });
});
