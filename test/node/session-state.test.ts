/**
 * A request's session changes are its own (issue 19): what one caller changes in its session (a
 * SET, a session-level set_config, a session advisory lock) never reaches another caller, on a
 * shared read lane or on the next use of a pooled connection. Real PostgreSQL, real HTTP, an app
 * with test-only routes that run the caller's statement through the route's `db`.
 *
 * Before: a SET written on a lane was followed by other requests' reads written behind it before
 * its answer (and the lane's retirement) came back, and they ran under the changed setting (in
 * three runs, 287–294 of the 320 neighbour reads saw `statement_timeout` 4321ms);
 * `SELECT set_config('x', 'y', false)` (tag SELECT) left the lane, or the pooled connection, with
 * the setting for whoever came next; a session advisory lock stayed held on a reused connection.
 */
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fitness } from '../../src/fitness/app.js';
import { defineApp, route } from '../../src/index.js';
import { createTestDatabase, realPostgresUrl, type TestDatabase, onRealPostgres, PGLITE_CANNOT } from '../helpers/db.js';
import { json, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';

const Setting = z.object({ timeout: z.string(), leak: z.string(), pid: z.number() });
const SETTING =
  "SELECT current_setting('statement_timeout') AS timeout, coalesce(current_setting('app.leak', true), '') AS leak, pg_backend_pid() AS pid";

/** The caller's statement, run through the route's `db` (test only: the SQL comes in the request). */
const change = (kind: 'read' | 'transactional') =>
  route({
    method: kind === 'read' ? 'GET' : 'POST',
    path: `/api/test/${kind}/change`,
    kind,
    summary: 'Runs the given statement (test only).',
    query: z.object({ sql: z.string() }),
    response: { status: 200, body: z.object({ pid: z.number() }) },
    handler: async ({ db, query }) => {
      await db.query(query.sql);
      return { status: 200, body: { pid: 0 } };
    },
  });

/** What the caller's session looks like: statement_timeout, app.leak, and which backend answered. */
const setting = (kind: 'read' | 'transactional') =>
  route({
    method: kind === 'read' ? 'GET' : 'POST',
    path: `/api/test/${kind}/setting`,
    kind,
    summary: 'The session settings a caller sees (test only).',
    response: { status: 200, body: Setting },
    handler: async ({ db }) => ({ status: 200, body: (await db.query<z.infer<typeof Setting>>(SETTING)).rows[0]! }),
  });

const app = defineApp({
  ...fitness,
  routes: [...fitness.routes, change('read'), change('transactional'), setting('read'), setting('transactional')],
});
const clientOf = (res: { headers: Headers }) => /desc="(pg-[a-z]+)/.exec(res.headers.get('server-timing') ?? '')?.[1];

describe.skipIf(!realPostgresUrl)(
  onRealPostgres('session changes stay with the request that made them (real PostgreSQL, real HTTP)', PGLITE_CANNOT.lanes),
  () => {
    let db: TestDatabase;
    const gateways: TestGateway[] = [];
    const start = async (env: Record<string, string>) => {
      const settings = { POOL_MIN: '0', STATEMENT_TIMEOUT_MS: '9000', QUERY_TIMEOUT_MS: '10000', REQUEST_TIMEOUT_MS: '9000' };
      const gateway = await startTestGateway({ ...settings, PG_PIPELINE_SLOW_MS: '60000', ...env }, { db, app });
      gateways.push(gateway);
      return gateway;
    };
    const run = (g: TestGateway, kind: 'read' | 'transactional', sql: string) =>
      json(`${g.url}/api/test/${kind}/change?sql=${encodeURIComponent(sql)}`, { method: kind === 'read' ? 'GET' : 'POST' });
    const look = (g: TestGateway, kind: 'read' | 'transactional') =>
      json<z.infer<typeof Setting>>(`${g.url}/api/test/${kind}/setting`, { method: kind === 'read' ? 'GET' : 'POST' });

    beforeAll(async () => {
      db = await createTestDatabase('poolgate_state');
    });

    afterAll(async () => {
      await Promise.all(gateways.map((g) => g.stop()));
      await db?.drop();
    });

    for (const sql of ["SET statement_timeout = '4321ms'", "SELECT set_config('app.leak', 'yes', false)"]) {
      it(`one lane: \`${sql}\` from a read route while 16 neighbours read — none sees it (20 rounds)`, async () => {
        const g = await start({ POOL_MAX: '4', PG_PIPELINE_LANES: '1' });
        const served: Record<string, number> = {};
        const saw: Record<string, number> = {};
        const count = (m: Record<string, number>, key: string) => (m[key] = (m[key] ?? 0) + 1);
        for (let round = 0; round < 20; round++) {
          const [changed, ...seen] = await Promise.all([run(g, 'read', sql), ...Array.from({ length: 16 }, () => look(g, 'read'))]);
          expect(changed.status, changed.text).toBe(200);
          expect.soft(clientOf(changed)).toBe('pg-pool'); // a session of its own, never the shared lane
          for (const res of seen) {
            count(saw, res.status === 200 ? `timeout ${res.body.timeout}, app.leak '${res.body.leak}'` : `status ${res.status}`);
            count(served, clientOf(res) ?? 'none');
          }
        }
        expect(saw).toEqual({ "timeout 9s, app.leak ''": 320 });
        expect(served['pg-pipeline']).toBeGreaterThan(0); // the neighbours did share the lane
      });
    }

    it('one lane: a transaction-local set_config stays on the lane; a session-level one never reaches the next read there', async () => {
      const g = await start({ POOL_MAX: '4', PG_PIPELINE_LANES: '1' });
      await look(g, 'read'); // the lane is open and asked
      const before = await look(g, 'read');
      expect(clientOf(before)).toBe('pg-pipeline');
      const local = await run(g, 'read', "SELECT set_config('app.leak', 'yes', true)"); // harmless: it stays on the lane
      expect({ status: local.status, client: clientOf(local) }).toEqual({ status: 200, client: 'pg-pipeline' });
      expect((await look(g, 'read')).body.leak).toBe('');
      expect((await run(g, 'read', "SELECT set_config('app.leak', 'yes', false)")).status).toBe(200);
      const after = await look(g, 'read');
      expect(after.body.leak).toBe('');
      expect(clientOf(after)).toBe('pg-pipeline');
    });

    it('one pooled connection: a session-level set_config never reaches the next caller; a transaction-local one keeps the connection', async () => {
      const g = await start({ POOL_MAX: '2', PG_PIPELINE_LANES: '1' });
      const first = await look(g, 'transactional');
      expect((await run(g, 'transactional', "SELECT set_config('app.leak', 'yes', true)")).status).toBe(200);
      const kept = await look(g, 'transactional');
      expect(kept.body).toMatchObject({ leak: '', pid: first.body.pid }); // harmless: the same connection serves on
      expect((await run(g, 'transactional', "SELECT pg_catalog.set_config('app.leak', 'yes', false)")).status).toBe(200);
      const next = await look(g, 'transactional');
      expect(next.body.leak).toBe('');
      expect(next.body.pid).not.toBe(first.body.pid);
    });

    it('one pooled connection: a session advisory lock left held is released with its connection', async () => {
      const g = await start({ POOL_MAX: '2', PG_PIPELINE_LANES: '1' });
      expect((await run(g, 'transactional', 'SELECT pg_advisory_lock(4242)')).status).toBe(200);
      // The discarded connection closes just after the response: its lock goes with it.
      const took = () => db.admin('SELECT pg_try_advisory_lock(4242) AND pg_advisory_unlock(4242) AS took');
      await waitFor(async () => (await took()).rows[0].took === true, { what: 'the advisory lock to be released' });
      expect((await look(g, 'transactional')).status).toBe(200);
    });
  },
);
