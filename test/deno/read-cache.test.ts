/**
 * The read cache (issue 23) under real Deno: the Netlify Edge bundle in four Deno processes (four
 * isolates, each its own app, view and in-memory tier) on one database through the local Neon
 * proxy, writes forwarded, signed, to a real Node gateway. The cases are test/helpers/edge-cache.ts.
 *
 * The platform tier is Deno's Cache API (`caches.open('poolgate')`): a SQLite store in DENO_DIR,
 * shared by the processes that run the same main module with the same DENO_DIR. The four share a
 * folder of this suite's own. (On Netlify the same calls reach Netlify's cache, which no local run has.)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe } from 'vitest';
import { startDenoEdge, type DenoEdge } from '../helpers/deno.js';
import { startEdgeStack, type EdgeStack } from '../helpers/edge.js';
import {
  EDGE_CACHE_INSTANCES,
  edgeCacheCases,
  edgeOver,
  type CacheEdge,
  type EdgeCacheRig,
  type InstanceName,
} from '../helpers/edge-cache.js';

describe('the read cache at the edge, under Deno', () => {
  let stack: EdgeStack;
  let denoDir: string | undefined;
  const processes: DenoEdge[] = [];
  let rig: EdgeCacheRig;

  beforeAll(async () => {
    stack = await startEdgeStack('netlify-edge', { prefix: 'poolgate_deno_cache' });
    denoDir = await mkdtemp(join(tmpdir(), 'poolgate-deno-dir-'));
    const edges = {} as Record<InstanceName, CacheEdge>;
    for (const name of Object.keys(EDGE_CACHE_INSTANCES) as InstanceName[]) {
      const deno = await startDenoEdge(stack.bundlePath, { ...stack.edgeEnv, ...EDGE_CACHE_INSTANCES[name] }, { denoDir });
      processes.push(deno);
      edges[name] = edgeOver((url, init) => fetch(url, init), deno.url);
    }
    rig = { stack, edges };
  });

  afterAll(async () => {
    await Promise.all(processes.map((p) => p.stop()));
    await stack?.stop();
    if (denoDir) await rm(denoDir, { recursive: true, force: true });
  });

  edgeCacheCases('deno', () => rig);
});
