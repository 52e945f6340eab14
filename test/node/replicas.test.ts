/**
 * Reads on real streaming replicas (issue 22), through a real Node gateway over HTTP: a private
 * primary with two standbys (test/helpers/private-replicas.ts), lag made with
 * recovery_min_apply_delay. A client that carries the consistency token of its write reads that
 * write every time, wherever the read is served; token-less reads go to the replicas; a standby
 * stopped under reads costs no request an error, and it serves reads again once it returns.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { json, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';
import { privatePostgresAvailable, privateTestDatabase } from '../helpers/private-postgres.js';
import { servedBy } from '../helpers/edge-replicas.js';
import { startReplicaSet, type ReplicaSet } from '../helpers/private-replicas.js';
import { createNodeClient } from '../../src/runtime/functions.js';

const DB = 'poolgate_replicas';
const HEADER = 'poolgate-consistency';

describe.skipIf(!privatePostgresAvailable)('read replicas (a private primary and two streaming standbys)', () => {
  let set: ReplicaSet;
  let t: TestGateway;
  let primaryLsn: () => Promise<string>;
  let admin: pg.Client;

  beforeAll(async () => {
    set = await startReplicaSet({ standbys: 2 });
    const db = await privateTestDatabase(set.primary, DB);
    admin = new pg.Client({ connectionString: set.primary.url(DB) });
    await admin.connect();
    primaryLsn = async () => (await admin.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]!.lsn;
    const urls = set.standbys.map((s) => s.url(DB));
    t = await startTestGateway({ DATABASE_REPLICA_URLS: urls.join(','), REPLICA_CHECK_INTERVAL_MS: '100', POOL_MAX: '8' }, { db });
    const lsn = await primaryLsn(); // the schema, migrated at start, on both standbys
    await Promise.all(set.standbys.map((s) => s.caughtUpTo(lsn)));
  }, 120_000);

  afterAll(async () => {
    await t?.stop();
    await admin?.end();
    await set?.destroy();
  });

  const newUser = async (headers: Record<string, string> = {}) => {
    const res = await fetch(`${t.url}/api/users`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ email: `r-${randomUUID()}@example.com`, name: 'r' }),
    });
    expect(res.status).toBe(201);
    return { id: ((await res.json()) as { id: string }).id, token: res.headers.get(HEADER) };
  };

  it('a write answers with its token; a read carrying it sees the write on lagging replicas every time (and one without it does not)', async () => {
    await Promise.all(set.standbys.map((s) => s.setApplyDelay(700)));
    try {
      let withoutToken404 = 0;
      const written: { id: string; token: string }[] = [];
      const tokenRead = async ({ id, token }: { id: string; token: string }, servers: Record<string, number>) => {
        const read = await fetch(`${t.url}/api/users/${id}`, { headers: { [HEADER]: token } });
        expect(read.status, await read.clone().text()).toBe(200);
        await read.body?.cancel();
        const server = servedBy(read.headers) ?? '?';
        servers[server] = (servers[server] ?? 0) + 1;
      };
      const atOnce: Record<string, number> = {};
      for (let i = 0; i < 40; i++) {
        const { id, token } = await newUser();
        expect(token).toMatch(/^lsn=[0-9A-F]+\/[0-9A-F]+$/);
        written.push({ id, token: token! });
        const bare = await fetch(`${t.url}/api/users/${id}`);
        if (bare.status === 404) withoutToken404++;
        await bare.body?.cancel();
        await tokenRead(written[i]!, atOnce);
      }
      // Later, once the standbys have replayed the writes, the same tokens are honoured by them.
      await new Promise((r) => setTimeout(r, 1_500));
      const later: Record<string, number> = {};
      for (const w of written) await tokenRead(w, later);
      console.log(
        `[replicas] token reads right after the write ${JSON.stringify(atOnce)}, 1.5 s later ${JSON.stringify(later)}; token-less reads right after: ${withoutToken404} × 404 of 40`,
      );
      expect(withoutToken404).toBeGreaterThan(0); // the lag is real: without the token the write is not seen
      expect((later['replica-1'] ?? 0) + (later['replica-2'] ?? 0)).toBeGreaterThanOrEqual(32); // and tokens do not pin reads to the primary
    } finally {
      await Promise.all(set.standbys.map((s) => s.setApplyDelay(0)));
    }
  }, 60_000);

  it('token-less reads go to the replicas, shared between them; /stats shows each', async () => {
    const { id } = await newUser();
    await Promise.all(set.standbys.map(async (s) => s.caughtUpTo(await primaryLsn())));
    await new Promise((r) => setTimeout(r, 300)); // a look after the catch-up
    const servers: Record<string, number> = {};
    for (let i = 0; i < 100; i++) {
      const res = await fetch(`${t.url}/api/users/${id}`);
      expect(res.status).toBe(200);
      await res.body?.cancel();
      const s = servedBy(res.headers) ?? '?';
      servers[s] = (servers[s] ?? 0) + 1;
    }
    expect((servers['replica-1'] ?? 0) + (servers['replica-2'] ?? 0)).toBeGreaterThanOrEqual(80);
    expect(servers['replica-1']).toBeGreaterThan(10);
    expect(servers['replica-2']).toBeGreaterThan(10);
    const stats = (await json(`${t.url}/stats`)).body;
    expect(stats.replicas.replicas.map((r: { name: string; up: boolean; standby: boolean }) => [r.name, r.up, r.standby])).toEqual([
      ['replica-1', true, true],
      ['replica-2', true, true],
    ]);
    const route = stats.routes.find((r: { route: string; method: string }) => r.route === '/api/users/:id' && r.method === 'GET');
    expect(route.servers['replica-1'] + route.servers['replica-2']).toBeGreaterThanOrEqual(80);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    expect(metrics).toMatch(/^poolgate_replica_up\{scope="node",replica="replica-2"\} 1$/m);
    expect(metrics).toMatch(
      /^poolgate_http_requests_by_server_total\{scope="node",method="GET",route="\/api\/users\/:id",server="replica-1"\} \d+$/m,
    );
  }, 60_000);

  it("poolgate/functions: a read given the client's own consistency token sees its write; reads go to the replicas", async () => {
    const client = createNodeClient({
      env: {
        DATABASE_URL: set.primary.url(DB),
        DATABASE_REPLICA_URLS: set.standbys.map((s) => s.url(DB)).join(','),
        REPLICA_CHECK_INTERVAL_MS: '100',
        POOL_MAX: '4',
        LOG_LEVEL: 'silent',
      },
    });
    await Promise.all(set.standbys.map((s) => s.setApplyDelay(700)));
    try {
      expect(client.consistencyToken()).toBeUndefined();
      let stale = 0;
      for (let i = 0; i < 10; i++) {
        const email = `f-${randomUUID()}@example.com`;
        await client.executeTransaction((tx) => tx.query("INSERT INTO users (email, name) VALUES ($1, 'f')", [email]));
        const token = client.consistencyToken();
        expect(token).toMatch(/^lsn=/);
        const seen = await client.executeQuery('SELECT 1 FROM users WHERE email = $1', [email], { kind: 'read', consistency: token });
        expect(seen.rowCount).toBe(1);
        const bare = await client.executeQuery('SELECT 1 FROM users WHERE email = $1', [email], 'read');
        if (bare.rowCount === 0) stale++;
      }
      expect(stale).toBeGreaterThan(0); // token-less reads went to the lagging replicas
      const reads = client.getStats().routes.find((r) => r.method === 'executeQuery' && r.route === 'read')!;
      expect(Object.keys(reads.servers ?? {}).some((s) => s.startsWith('replica-'))).toBe(true);
    } finally {
      await Promise.all(set.standbys.map((s) => s.setApplyDelay(0)));
      await client.close();
    }
  }, 60_000);

  it("a malformed token is the caller's mistake: 400 invalid_consistency_token", async () => {
    const { id } = await newUser();
    const res = await json(`${t.url}/api/users/${id}`, { headers: { [HEADER]: 'lsn=yesterday' } });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('invalid_consistency_token');
  });

  it('a standby stopped under reads costs no request an error, and serves reads again once it returns', async () => {
    const { id } = await newUser();
    // Token-less reads may be served a moment behind the write (a 404 in CI): both standbys have it first.
    const written = await primaryLsn();
    await Promise.all(set.standbys.map((s) => s.caughtUpTo(written)));
    const standby = set.standbys[0]!;
    const statuses: Record<string, number> = {};
    let reading = true;
    const readers = Array.from({ length: 6 }, async () => {
      while (reading) {
        const res = await fetch(`${t.url}/api/users/${id}`);
        statuses[res.status] = (statuses[res.status] ?? 0) + 1;
        await res.body?.cancel();
      }
    });
    try {
      await new Promise((r) => setTimeout(r, 300));
      await standby.stop();
      await new Promise((r) => setTimeout(r, 1_000));
      const replica1 = async () => (await json(`${t.url}/stats`)).body.replicas.replicas[0];
      expect((await replica1()).up).toBe(false);
      await standby.start();
      const back = await standby.acceptsConnections();
      const served = (await replica1()).servedCount;
      await waitFor(async () => (await replica1()).servedCount > served, { timeoutMs: 10_000, what: 'replica-1 serving reads again' });
      const backInMs = performance.now() - back;
      console.log(
        `[replicas] standby stopped under reads: ${JSON.stringify(statuses)}; back in rotation ${Math.round(backInMs)} ms after it accepted connections`,
      );
      // How soon is a figure for the bench (bench:replicas: 325–772 ms against the 2 s), not a timed assertion.
    } finally {
      reading = false;
      await Promise.all(readers);
    }
    expect(Object.keys(statuses)).toEqual(['200']);
  }, 60_000);
});
