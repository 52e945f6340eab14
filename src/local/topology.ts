/**
 * `npm start`: the whole edge topology on one machine, offline.
 *   database   embedded PGlite (or DATABASE_URL)
 *   :4444      local Neon-compatible proxy (HTTP /sql + WebSocket) in front of it
 *   :8788      Node gateway (pg Pool), accepting only signed forwards
 *   :8787      the edge app in workerd (miniflare): reads via Neon, writes forwarded to :8788
 * Ports come from EDGE_PORT, NODE_PORT, NEON_PROXY_PORT. Ctrl-C stops everything.
 * `npm run dev:edge` (`--edge=wrangler`) serves the edge app with `wrangler dev` instead.
 */
import { randomBytes } from 'node:crypto';
import { Miniflare } from 'miniflare';
import { ConfigError } from '../config.js';
import { startGateway, startupErrorLine, type Gateway } from '../runtime/node.js';
import { buildWorker } from './build.js';
import { startWranglerDev } from './dev-edge.js';
import { startEmbeddedPostgres, type EmbeddedPostgres } from './embedded.js';
import { startNeonProxy, type NeonProxy } from './neon-proxy/index.js';
import { workerdWorker } from './workerd.js';

export interface Topology {
  edgeUrl: string;
  nodeUrl: string;
  proxyUrl: string;
  close(): Promise<void>;
}

export interface TopologyOptions {
  /**
   * What runs the edge app: `miniflare` (default) loads the esbuild bundle of the worker;
   * `wrangler` runs `wrangler dev` on src/runtime/worker.ts (wrangler.toml), bundled by wrangler.
   */
  edge?: 'miniflare' | 'wrangler';
}

type Env = Record<string, string | undefined>;

const port = (env: Env, name: string, fallback: number) => {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new ConfigError(name, `must be a port number, got "${raw}"`);
  return n;
};

export async function startTopology(env: Env, log: (line: string) => void = console.log, options: TopologyOptions = {}): Promise<Topology> {
  const edgePort = port(env, 'EDGE_PORT', 8787);
  const nodePort = port(env, 'NODE_PORT', 8788);
  const proxyPort = port(env, 'NEON_PROXY_PORT', 4444);
  const forwardSecret = env.FORWARD_SECRET || randomBytes(32).toString('base64url');

  const stops: (() => Promise<unknown>)[] = [];
  const close = async () => {
    for (const stop of stops.splice(0).reverse()) await stop().catch(() => {});
  };
  try {
    let databaseUrl = env.DATABASE_URL;
    if (!databaseUrl) {
      const dataDir = env.EMBEDDED_DATA_DIR || '.data/pglite';
      const embedded: EmbeddedPostgres = await startEmbeddedPostgres({ dataDir });
      stops.push(() => embedded.stop());
      databaseUrl = embedded.url;
      log(`poolgate: embedded PGlite on 127.0.0.1:${embedded.port} (data in ${dataDir})`);
    }

    const gateway: Gateway = await startGateway(
      {
        ...env,
        DATABASE_URL: databaseUrl,
        PORT: String(nodePort),
        FORWARD_SECRET: forwardSecret,
        SEED: env.DATABASE_URL ? env.SEED : 'true',
      },
      { log },
    );
    stops.push(() => gateway.close());

    const proxy: NeonProxy = await startNeonProxy({ databaseUrls: [databaseUrl], port: proxyPort, host: '127.0.0.1', log });
    stops.push(() => proxy.close());
    log(`poolgate: local Neon proxy on ${proxy.url}`);

    const bindings = {
      DATABASE_URL: databaseUrl,
      NODE_FUNCTION_URL: gateway.url,
      NEON_PROXY_URL: proxy.url,
      FORWARD_SECRET: forwardSecret,
      POOLGATE_ENV: 'development',
    };
    let edgeUrl: string;
    if (options.edge === 'wrangler') {
      const { DATABASE_URL, FORWARD_SECRET, ...vars } = bindings;
      const dev = await startWranglerDev({ port: edgePort, host: '127.0.0.1', vars, secrets: { DATABASE_URL, FORWARD_SECRET }, log });
      stops.push(() => dev.stop());
      edgeUrl = dev.url;
    } else {
      const scriptPath = await buildWorker();
      const mf = new Miniflare({ host: '127.0.0.1', port: edgePort, workers: [workerdWorker('poolgate', scriptPath, bindings)] });
      stops.push(() => mf.dispose());
      edgeUrl = (await mf.ready).toString().replace(/\/$/, '');
    }
    log(
      `poolgate: edge app (${options.edge === 'wrangler' ? 'wrangler dev' : 'workerd'}) on ${edgeUrl} → reads via Neon proxy, writes forwarded to ${gateway.url}`,
    );
    return { edgeUrl, nodeUrl: gateway.url, proxyUrl: proxy.url, close };
  } catch (err) {
    await close();
    throw err;
  }
}

export async function main(argv: string[] = process.argv.slice(2)): Promise<void> {
  const edgeArg = argv.find((a) => a.startsWith('--edge='))?.slice('--edge='.length) ?? 'miniflare';
  if (edgeArg !== 'miniflare' && edgeArg !== 'wrangler') {
    console.error(`poolgate: --edge must be miniflare or wrangler, got "${edgeArg}"`);
    process.exit(1);
  }
  let topology: Topology;
  try {
    topology = await startTopology(process.env, console.log, { edge: edgeArg });
  } catch (err) {
    console.error(startupErrorLine(err));
    process.exit(1);
  }
  console.log(`poolgate: try  curl ${topology.edgeUrl}/api/users/00000000-0000-4000-8000-000000000001`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`poolgate: ${signal}, stopping`);
    topology.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/\\/g, '/'))) void main();
