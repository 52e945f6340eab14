/**
 * The read cache's platform tier is shared beyond one deployment: a Cloudflare zone's
 * `caches.default` serves every worker on the zone (production and staging, two apps), and
 * miniflare's serves every worker of one instance. Two deployments of the fitness bundle on two
 * databases holding the same id with different rows (a staging copy, say) must never be served
 * each other's entries. Before the keys named the deployment's data (edge-app.ts cacheNamespace),
 * the second deployment answered the first one's row from the shared cache.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fitness } from '../../src/fitness/app.js';
import { buildWorker } from '../../src/local/build.js';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { workerdWorker } from '../../src/local/workerd.js';
import { runMigrations } from '../../src/runtime/migrate.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { closedPortUrl } from '../helpers/edge.js';
import { edgeOver, type CacheEdge } from '../helpers/edge-cache.js';
import { waitFor } from '../helpers/wait.js';

/** One deployment's database and the local Neon proxy in front of it. */
interface Deployment {
  db: TestDatabase;
  proxy: NeonProxy;
}

describe('the platform cache shared by two deployments on two databases, in workerd', () => {
  const deployments: Deployment[] = [];
  let dir: string | undefined;
  let mf: Miniflare | undefined;
  const edges: Record<'here' | 'hereToo' | 'elsewhere', CacheEdge> = {} as never;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'poolgate-cache-ns-'));
    const bundlePath = await buildWorker(join(dir, 'worker.js'));
    for (const prefix of ['poolgate_cache_ns_a', 'poolgate_cache_ns_b']) {
      const db = await createTestDatabase(prefix);
      const deployment: Deployment = { db, proxy: undefined as never };
      deployments.push(deployment);
      await runMigrations({ DATABASE_URL: db.url }, fitness);
      deployment.proxy = await startNeonProxy({ databaseUrls: [db.url], port: 0, host: '127.0.0.1', log: () => {} });
    }
    // Reads only: the Node function is never reached.
    const common = { NODE_FUNCTION_URL: await closedPortUrl(), FORWARD_SECRET: randomBytes(32).toString('base64url') };
    const env = (d: Deployment) => ({ ...common, DATABASE_URL: d.db.url, NEON_PROXY_URL: d.proxy.url });
    const [a, b] = deployments as [Deployment, Deployment];
    mf = new Miniflare({
      host: '127.0.0.1',
      port: 0,
      workers: [
        workerdWorker('here', bundlePath, env(a)),
        workerdWorker('hereToo', bundlePath, env(a)),
        workerdWorker('elsewhere', bundlePath, env(b)),
      ],
    });
    await mf.ready;
    for (const name of ['here', 'hereToo', 'elsewhere'] as const) {
      // miniflare types this through workers-types we do not install; it is a fetch all the same.
      const worker = (await mf.getWorker(name)) as unknown as { fetch: Parameters<typeof edgeOver>[0] };
      edges[name] = edgeOver((url, init) => worker.fetch(url, init), `http://${name}.edge.test`);
    }
  });

  afterAll(async () => {
    await mf?.dispose().catch(() => {});
    for (const d of deployments) {
      await d.proxy?.close().catch(() => {});
      await d.db.drop().catch(() => {});
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("a deployment on another database is never served this one's entries; one on the same database is", async () => {
    const id = randomUUID();
    for (const [d, name] of [
      [deployments[0]!, 'here'],
      [deployments[1]!, 'elsewhere'],
    ] as const)
      await d.db.admin(`INSERT INTO users (id, email, name) VALUES ($1, $2, $3)`, [id, `${id}@example.com`, name]);
    // The entry is in the platform cache once another isolate on the same database is served it
    // there (its put lands after the answer: each attempt is a key of its own, the query being part of it).
    let attempt = 0;
    const path = await waitFor(
      async () => {
        const p = `/api/users/${id}?attempt=${++attempt}`;
        expect((await edges.here.ask(p)).body.name).toBe('here');
        await new Promise((r) => setTimeout(r, 20 * attempt));
        const twin = await edges.hereToo.ask(p);
        expect(twin.body.name).toBe('here');
        return /^poolgate; hit;/.test(twin.headers.get('cache-status') ?? '') ? p : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 0, what: 'the entry in the platform cache' },
    );
    const res = await edges.elsewhere.ask(path);
    expect(res.status, res.text).toBe(200);
    expect(res.body.name, res.headers.get('cache-status') ?? '').toBe('elsewhere');
    expect(res.headers.get('cache-status')).toBe('poolgate; fwd=miss; fwd-status=200; stored');
  });
});
