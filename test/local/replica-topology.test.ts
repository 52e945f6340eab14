/**
 * `npm start` with a read replica (issue 22: opt-in, with DATABASE_URL): DATABASE_REPLICA_URLS
 * reaches the Node gateway (its writes answer with the consistency token) and the edge (its reads
 * go to the replica through the local Neon proxy). The "replica" here is the same database under
 * another URL — no standby, so it reads as caught up — which is enough to show every part gets it.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { DEMO_USER_ID } from '../../src/fitness/seed.js';
import { createTestDatabase, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';
import { spawnTopology, stopAll, tempDir, topologyEnv } from './topology-process.js';

const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  await stopAll();
  for (const c of cleanups) await c();
});

describe.skipIf(!realPostgresUrl)('npm start with DATABASE_REPLICA_URLS (needs TEST_DATABASE_URL)', () => {
  it('the edge reads from the replica and writes through the edge answer with a consistency token', async () => {
    const db: TestDatabase = await createTestDatabase('poolgate_replica_topology');
    cleanups.push(() => db.drop());
    const dir = await tempDir('replica-topology');
    cleanups.push(() => dir.remove());
    const replicaUrl = db.url.replace('127.0.0.1', 'localhost');
    const env: Record<string, string> = {
      ...(await topologyEnv(`${dir.path}/pglite`)),
      DATABASE_URL: db.url,
      DATABASE_REPLICA_URLS: replicaUrl,
      SEED: 'true',
    };
    const proc = spawnTopology(env);
    await proc.waitForLine(/^poolgate: try /);
    const edge = `http://127.0.0.1:${env.EDGE_PORT}`;

    const served = await waitFor(
      async () => {
        // A route the example does not cache: each read reaches a server.
        const res = await fetch(`${edge}/api/users/${DEMO_USER_ID}/workouts`);
        await res.body?.cancel();
        expect(res.status).toBe(200);
        return /replica-1"/.test(res.headers.get('server-timing') ?? '') && res.headers.get('server-timing');
      },
      { timeoutMs: 15_000, what: 'an edge read served by replica-1' },
    );
    expect(served).toMatch(/db;dur=[\d.]+;desc="neon-http \dq replica-1"/);
    // The cached route is served from the edge's cache once loaded (npm start shows the cache on).
    const statuses: string[] = [];
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${edge}/api/users/${DEMO_USER_ID}`);
      await res.body?.cancel();
      statuses.push(res.headers.get('cache-status') ?? '');
    }
    expect(statuses[0]).toMatch(/^poolgate; fwd=(miss|stale)/);
    expect(statuses[1]).toMatch(/^poolgate; hit/);

    const write = await fetch(`${edge}/api/users`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: `topology-${Date.now()}@example.com`, name: 't' }),
    });
    expect(write.status).toBe(201);
    expect(write.headers.get('poolgate-consistency')).toMatch(/^lsn=[0-9A-F]+\/[0-9A-F]+$/);
    proc.pressCtrlC();
    expect(await proc.waitForExit(30_000)).toEqual({ code: 0, signal: null });
  }, 120_000);
});
