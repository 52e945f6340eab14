/**
 * A full server is not hammered by the lanes (issue 19, case 3): on a private cluster with
 * max_connections 6, all of them held, a lane's connect is refused (53300); the lanes back off
 * (exponential, jittered) and reads take the pool meanwhile, so the lane connects tried in a
 * second of steady reads stay few (before: one per read). Once room comes back, the lanes do too.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconnectDelayMs } from '../../src/db/connectors/pg-pipeline.js';
import { createPgPoolDatabase } from '../../src/db/connectors/pg-pool.js';
import type { ClientKind, QueryObserver } from '../../src/db/types.js';
import { POOL } from '../contract/backends.js';
import { privatePostgresAvailable, startPrivatePostgres, type PrivatePostgres } from '../helpers/private-postgres.js';
import { waitFor } from '../helpers/wait.js';

/** pg's Client, counting the lanes opened (pipelined clients; the pool's connections are its own Client). */
let laneConnects = 0;
class CountingClient extends pg.Client {
  constructor(config: pg.ClientConfig & { pipeline?: boolean }) {
    super(config);
    if (config.pipeline) laneConnects++;
  }
}

const observer = (kinds: ClientKind[] = []): QueryObserver => ({
  intent: 'read',
  acquired() {},
  queried() {},
  served: (kind) => void kinds.push(kind),
});

describe.skipIf(!privatePostgresAvailable)('lanes back off from a server that refuses connections (private cluster)', () => {
  let cluster: PrivatePostgres;
  const holders: pg.Client[] = [];

  beforeAll(async () => {
    cluster = await startPrivatePostgres();
    const admin = new pg.Client({ connectionString: cluster.url() });
    await admin.connect();
    await admin.query('ALTER SYSTEM SET max_connections = 6');
    await admin.end();
    await cluster.stop();
    await cluster.start();
    await cluster.acceptsConnections();
  }, 60_000);

  afterAll(async () => {
    await Promise.allSettled(holders.map((h) => h.end()));
    await cluster?.destroy();
  });

  it('a second of reads against a full server tries few lane connects; the lanes come back when there is room', async () => {
    const database = createPgPoolDatabase(
      { ...POOL, max: 3, pipelineLanes: 2, connectionString: cluster.url(), applicationName: 'poolgate-backoff' },
      { Pool: pg.Pool, Client: CountingClient },
    );
    try {
      await database.warm(0);
      await database.forRequest(observer()).query('SELECT 1');
      await waitFor(async () => {
        const kinds: ClientKind[] = [];
        await database.forRequest(observer(kinds)).query('SELECT 1');
        return kinds[0] === 'pg-pipeline';
      });
      await database.close(); // a fresh start against a full server
    } catch (err) {
      await database.close();
      throw err;
    }
    for (let i = 0; i < 6; i++) {
      const holder = new pg.Client({ connectionString: cluster.url() });
      holder.on('error', () => {});
      await holder.connect();
      holders.push(holder);
    }
    const full = createPgPoolDatabase(
      { ...POOL, max: 3, pipelineLanes: 2, connectionString: cluster.url(), applicationName: 'poolgate-backoff' },
      { Pool: pg.Pool, Client: CountingClient },
    );
    try {
      laneConnects = 0;
      const until = Date.now() + 1_000;
      let reads = 0;
      while (Date.now() < until) {
        reads++;
        await full
          .forRequest(observer())
          .query('SELECT 1')
          .catch(() => {});
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(reads).toBeGreaterThan(20);
      // 100, 200, 400, 800 ms apart at most (jitter in the upper half): at most 5 in a second.
      expect(laneConnects).toBeLessThanOrEqual(5);

      await Promise.all(holders.splice(0).map((h) => h.end()));
      await waitFor(
        async () => {
          const kinds: ClientKind[] = [];
          await full
            .forRequest(observer(kinds))
            .query('SELECT 1')
            .catch(() => {});
          return kinds[0] === 'pg-pipeline';
        },
        { timeoutMs: 10_000, what: 'reads back on a lane' },
      );
    } finally {
      await full.close();
    }
  }, 30_000);

  it('the delay doubles from 100 ms up to 5 s, jittered in its upper half', () => {
    expect([1, 2, 3, 10].map((n) => reconnectDelayMs(n, () => 0))).toEqual([50, 100, 200, 2_500]);
    expect([1, 2, 3, 10].map((n) => reconnectDelayMs(n, () => 1))).toEqual([100, 200, 400, 5_000]);
  });
});
