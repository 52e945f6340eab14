/**
 * The read cache (issue 23) in real workerd: the worker bundle in miniflare, four workers of it
 * (four isolates, each its own app, view and in-memory tier) on one database through the local
 * Neon proxy, writes forwarded, signed, to a real Node gateway. The cases are test/helpers/edge-cache.ts.
 *
 * The platform tier is workerd's `caches.default`: miniflare backs it with one store per instance
 * (a Durable Object named "default", on disk under its persistence path) that every worker of the
 * instance shares, as the isolates of one Cloudflare location share theirs.
 */
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe } from 'vitest';
import { workerdWorker } from '../../src/local/workerd.js';
import { startEdgeStack, type EdgeStack } from '../helpers/edge.js';
import {
  EDGE_CACHE_INSTANCES,
  edgeCacheCases,
  edgeOver,
  type CacheEdge,
  type EdgeCacheRig,
  type InstanceName,
} from '../helpers/edge-cache.js';

describe('the read cache at the edge, in workerd', () => {
  let stack: EdgeStack;
  let mf: Miniflare | undefined;
  let rig: EdgeCacheRig;

  beforeAll(async () => {
    stack = await startEdgeStack('worker', { prefix: 'poolgate_edge_cache' });
    const names = Object.keys(EDGE_CACHE_INSTANCES) as InstanceName[];
    mf = new Miniflare({
      host: '127.0.0.1',
      port: 0,
      workers: names.map((name) => workerdWorker(name, stack.bundlePath, { ...stack.edgeEnv, ...EDGE_CACHE_INSTANCES[name] })),
    });
    await mf.ready;
    const edges = {} as Record<InstanceName, CacheEdge>;
    for (const name of names) {
      // miniflare types this through workers-types we do not install; it is a fetch all the same.
      const worker = (await mf.getWorker(name)) as unknown as { fetch: Parameters<typeof edgeOver>[0] };
      edges[name] = edgeOver((url, init) => worker.fetch(url, init), `http://${name}.edge.test`);
    }
    rig = { stack, edges };
  });

  afterAll(async () => {
    await mf?.dispose().catch(() => {});
    await stack?.stop();
  });

  edgeCacheCases('workerd', () => rig);
});
