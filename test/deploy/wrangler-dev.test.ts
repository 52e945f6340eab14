/**
 * `npm run dev:edge`: the edge app under the real `wrangler dev` (wrangler.toml, bundled by
 * wrangler itself, at wrangler.toml's compatibility date), in front of the Node gateway and the
 * local Neon proxy on a database of this suite's own. Proves the deploy config runs as written.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fitnessLocal } from '../../src/fitness/entries/local.js';
import { startTopology, type Topology } from '../../src/local/topology.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { closedPortUrl, dbDescOf, insertAthlete, workoutBody, type Athlete } from '../helpers/edge.js';
import { json } from '../helpers/gateway.js';

let db: TestDatabase;
let topology: Topology;
let athlete: Athlete;
const logs: string[] = [];

const freePort = async () => new URL(await closedPortUrl()).port;

beforeAll(async () => {
  db = await createTestDatabase('poolgate_wrangler');
  const env = { DATABASE_URL: db.url, EDGE_PORT: await freePort(), NODE_PORT: await freePort(), NEON_PROXY_PORT: await freePort() };
  topology = await startTopology(env, (line) => logs.push(line), { ...fitnessLocal, edge: 'wrangler' });
  athlete = await insertAthlete(db);
}, 120_000);

afterAll(async () => {
  await topology?.close();
  await db?.drop();
});

describe('npm run dev:edge (wrangler dev)', () => {
  it('serves a read over Neon HTTP and forwards a write, signed, to the Node gateway', async () => {
    expect(logs.join('\n')).toMatch(/wrangler 4\.\d+/);
    const read = await json(`${topology.edgeUrl}/api/users/${athlete.userId}`);
    expect(read.status).toBe(200);
    expect(read.body).toEqual(athlete.expectedUser);
    expect(dbDescOf(read.headers.get('server-timing'))).toBe('neon-http 1q');

    const write = await json(`${topology.edgeUrl}/api/workouts`, { method: 'POST', json: workoutBody(athlete.userId, 'wrangler-run') });
    expect(write.status).toBe(201);
    expect(write.headers.get('server-timing')).toMatch(/node-db;dur=[\d.]+;desc="pg-pool/);
  });
});
