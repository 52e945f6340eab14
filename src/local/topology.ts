/**
 * The whole edge topology of an app on one machine, offline: `npm start` runs it for the fitness
 * example (src/fitness/entries/local.ts), `poolgate dev --app <module>` for a user's app (dev.ts).
 *   database   embedded PGlite in EMBEDDED_DATA_DIR (.data/pglite), locked to this process; or DATABASE_URL
 *   :4444      local Neon-compatible proxy (HTTP /sql + WebSocket) in front of it     NEON_PROXY_PORT
 *   :8788      Node gateway (pg Pool), accepting only signed forwards                 NODE_PORT
 *   :8787      the edge app in workerd (miniflare): reads via Neon, writes forwarded  EDGE_PORT
 * Every port is checked before the database is opened. Ctrl-C (or SIGTERM) drains the Node gateway,
 * then stops the edge, the proxy and the database, and exits 0; a second Ctrl-C exits at once (130).
 * `npm run dev:edge` (`--edge=wrangler`) serves the edge app with `wrangler dev` instead.
 * Generic: the app, its edge bundle and what to suggest trying come from the caller (LocalApp).
 */
import { randomBytes } from 'node:crypto';
import { ConfigError } from '../config.js';
import type { PoolgateApp } from '../definition.js';
import { describeError } from '../errors.js';
import { startGateway, startupErrorLine, type Gateway } from '../runtime/node.js';
import { lockDataDir, type DataDirLock } from './data-dir-lock.js';
import { startWranglerDev } from './dev-edge.js';
import { startNeonProxy, type NeonProxy, type NeonProxyOptions } from './neon-proxy/index.js';
import { checkPortsFree, type PortClaim } from './ports.js';
import { onStopSignals } from './stop-signals.js';
import { createMiniflare, workerdWorker } from './workerd.js';

export interface Topology {
  edgeUrl: string;
  nodeUrl: string;
  proxyUrl: string;
  /** The demo data is loaded: the embedded database, or SEED=true. */
  seeded: boolean;
  /**
   * Drains the Node gateway (the edge still carries its responses), then stops the edge, the Neon
   * proxy and the embedded database, logging each step. Runs once; never rejects.
   */
  close(): Promise<{ clean: boolean }>;
}

/** What the topology runs: `npm start` passes the fitness example, `poolgate dev` the user's module. */
export interface LocalApp {
  /** The app the Node gateway serves (the edge bundle carries the same one). */
  app: PoolgateApp;
  /** Bundles the edge entry (its default export `createWorker(app)`) for workerd; resolves with the bundle's path. */
  buildWorker(): Promise<string>;
  /** The command, as its messages name it: `npm start`, `poolgate dev`. */
  command: string;
  /** What to suggest once everything runs: only requests that answer. */
  tryLines(topology: Topology): string[];
}

export interface TopologyOptions extends Omit<LocalApp, 'tryLines'> {
  /**
   * What runs the edge app: `miniflare` (default) loads the esbuild bundle of the worker;
   * `wrangler` runs `wrangler dev` on the repository's wrangler.toml (the example's worker), bundled by wrangler.
   */
  edge?: 'miniflare' | 'wrangler';
  /** Aborting it stops start-up after the current step and undoes the steps done. */
  signal?: AbortSignal;
  /** The caller handles SIGINT/SIGTERM/SIGHUP and calls close(); see createMiniflare. */
  ownsSignals?: boolean;
}

type Env = Record<string, string | undefined>;

const HOST = '127.0.0.1';

const port = (env: Env, name: string, fallback: number) => {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new ConfigError(name, `must be a port number, got "${raw}"`);
  return n;
};

/** The topology's ports, each with the variable that moves it (PORT is the standalone gateway's). */
export function topologyPorts(env: Env): { edge: PortClaim; node: PortClaim; proxy: PortClaim } {
  return {
    edge: { port: port(env, 'EDGE_PORT', 8787), host: HOST, variable: 'EDGE_PORT' },
    node: { port: port(env, 'NODE_PORT', 8788), host: env.HOST?.trim() || HOST, variable: 'NODE_PORT' },
    proxy: { port: port(env, 'NEON_PROXY_PORT', 4444), host: HOST, variable: 'NEON_PROXY_PORT' },
  };
}

type Part = 'gateway' | 'edge' | 'proxy' | 'database';
/** Stop order: the gateway drains first, while the edge can still carry the responses back. */
const STOP_ORDER: Part[] = ['gateway', 'edge', 'proxy', 'database'];

/** What has been started so far, and how to stop it; close() runs once. */
class Parts {
  readonly #stops = new Map<Part, () => Promise<void>>();
  #closing: Promise<{ clean: boolean }> | undefined;

  constructor(readonly log: (line: string) => void) {}

  set(part: Part, stop: () => Promise<void>): void {
    this.#stops.set(part, stop);
  }

  close(): Promise<{ clean: boolean }> {
    return (this.#closing ??= this.#stopAll());
  }

  async #stopAll(): Promise<{ clean: boolean }> {
    let clean = true;
    for (const part of STOP_ORDER) {
      try {
        await this.#stops.get(part)?.();
      } catch (err) {
        clean = false;
        this.log(`poolgate: stopping the ${part} failed (${describeError(err)})`);
      }
    }
    return { clean };
  }
}

export async function startTopology(env: Env, log: (line: string) => void, options: TopologyOptions): Promise<Topology> {
  const ports = topologyPorts(env);
  if (env.PORT) log(`poolgate: PORT is not used by ${options.command}; its ports are EDGE_PORT, NODE_PORT and NEON_PROXY_PORT`);
  const forwardSecret = env.FORWARD_SECRET || randomBytes(32).toString('base64url');
  const checkpoint = () => options.signal?.throwIfAborted();
  const parts = new Parts(log);
  try {
    const lock = await claimFolderAndPorts(env, ports, parts);
    // Built before the database opens: a failed build, or a Ctrl-C that kills esbuild's service
    // (it is in the terminal's process group), then leaves nothing open.
    const scriptPath = options.edge === 'wrangler' ? undefined : await options.buildWorker();
    checkpoint();
    const databaseUrl = lock ? await startEmbedded(lock, parts) : env.DATABASE_URL!;
    checkpoint();
    const gateway = await startNode(options.app, env, databaseUrl, ports.node, forwardSecret, lock !== undefined, parts);
    checkpoint();
    const proxy = await startProxy(databaseUrl, ports.proxy, gateway.config.logLevel, parts);
    checkpoint();
    const bindings = {
      DATABASE_URL: databaseUrl,
      NODE_FUNCTION_URL: gateway.url,
      NEON_PROXY_URL: proxy.url,
      FORWARD_SECRET: forwardSecret,
      POOLGATE_ENV: 'development',
    };
    const edgeUrl = await explainBusyPort(ports.edge, () => startEdge(ports.edge.port, bindings, parts, { ...options, scriptPath }));
    checkpoint();
    log(
      `poolgate: edge app (${options.edge === 'wrangler' ? 'wrangler dev' : 'workerd'}) on ${edgeUrl} → reads via Neon proxy, writes forwarded to ${gateway.url}`,
    );
    return { edgeUrl, nodeUrl: gateway.url, proxyUrl: proxy.url, seeded: !!lock || env.SEED === 'true', close: () => parts.close() };
  } catch (err) {
    await parts.close();
    throw err;
  }
}

/**
 * The cheap checks, before anything is built or opened. The embedded data folder's lock first, so
 * a second `npm start` is told the folder is taken whatever ports it asked for; then the ports, so
 * a busy one never costs an open (and a close) of the data. No lock when DATABASE_URL is set.
 */
async function claimFolderAndPorts(env: Env, ports: Record<string, PortClaim>, parts: Parts): Promise<DataDirLock | undefined> {
  const lock = env.DATABASE_URL ? undefined : await lockDataDir(env.EMBEDDED_DATA_DIR?.trim() || '.data/pglite');
  if (lock) parts.set('database', () => lock.release());
  await checkPortsFree(Object.values(ports));
  return lock;
}

async function startEmbedded(lock: DataDirLock, parts: Parts): Promise<string> {
  const { dataDir } = lock;
  // Loaded here: PGlite is an optional peer, needed only when DATABASE_URL is unset.
  const { startEmbeddedPostgres } = await import('./embedded.js');
  const embedded = await startEmbeddedPostgres({ dataDir, lock });
  parts.set('database', async () => {
    await embedded.stop();
    parts.log(`poolgate: embedded PGlite stopped (data in ${dataDir})`);
  });
  parts.log(`poolgate: embedded PGlite on 127.0.0.1:${embedded.port} (data in ${dataDir})`);
  return embedded.url;
}

/** The Node gateway on NODE_PORT; it seeds the app's demo data on the embedded database, or with SEED=true. */
async function startNode(
  app: PoolgateApp,
  env: Env,
  databaseUrl: string,
  claim: PortClaim,
  forwardSecret: string,
  embedded: boolean,
  parts: Parts,
): Promise<Gateway> {
  const gatewayEnv = {
    ...env,
    DATABASE_URL: databaseUrl,
    PORT: String(claim.port),
    FORWARD_SECRET: forwardSecret,
    SEED: embedded ? 'true' : env.SEED,
    // A development topology: the gateway's /stats and /metrics stay readable without OPS_TOKEN.
    POOLGATE_ENV: env.POOLGATE_ENV ?? 'development',
  };
  const gateway = await explainBusyPort(claim, () => startGateway(app, gatewayEnv, { log: parts.log }));
  parts.set('gateway', async () => {
    parts.log(`poolgate: draining the Node gateway (up to ${gateway.config.shutdownTimeoutMs} ms)`);
    const { drained } = await gateway.close();
    parts.log(`poolgate: Node gateway ${drained ? 'drained' : 'stopped (drain deadline passed)'}, pool ended`);
  });
  return gateway;
}

async function startProxy(databaseUrl: string, claim: PortClaim, logLevel: NeonProxyOptions['logLevel'], parts: Parts): Promise<NeonProxy> {
  const proxy = await explainBusyPort(claim, () =>
    startNeonProxy({ databaseUrls: [databaseUrl], port: claim.port, host: HOST, log: parts.log, logLevel }),
  );
  parts.set('proxy', async () => {
    await proxy.close();
    parts.log('poolgate: Neon proxy stopped');
  });
  parts.log(`poolgate: local Neon proxy on ${proxy.url}`);
  return proxy;
}

async function startEdge(
  port: number,
  bindings: Record<string, string>,
  parts: Parts,
  options: TopologyOptions & { scriptPath?: string },
): Promise<string> {
  if (options.edge === 'wrangler') {
    const { DATABASE_URL = '', FORWARD_SECRET = '', ...vars } = bindings;
    const dev = await startWranglerDev({ port, host: HOST, vars, secrets: { DATABASE_URL, FORWARD_SECRET }, log: parts.log });
    parts.set('edge', async () => {
      await edgeFlush();
      await dev.stop();
      parts.log('poolgate: edge app (wrangler dev) stopped');
    });
    return dev.url;
  }
  const scriptPath = options.scriptPath ?? (await options.buildWorker());
  const mf = createMiniflare(
    { host: HOST, port, workers: [workerdWorker('poolgate', scriptPath, bindings)] },
    { ownsSignals: options.ownsSignals },
  );
  parts.set('edge', async () => {
    await edgeFlush();
    await mf.dispose();
    parts.log('poolgate: edge app (workerd) stopped');
  });
  return (await mf.ready).toString().replace(/\/$/, '');
}

/**
 * The edge keeps running a moment after the gateway has drained: it still relays the gateway's
 * last answers to their clients (and finishes its own reads), and neither workerd nor wrangler
 * can be asked whether it is idle. Stopping it at once cut such answers under load.
 */
const EDGE_FLUSH_MS = 500;
const edgeFlush = () => new Promise((resolve) => setTimeout(resolve, EDGE_FLUSH_MS));

/** The port may have been taken since it was checked: then that is the one line, not the part's own error. */
async function explainBusyPort<T>(claim: PortClaim, start: () => Promise<T>): Promise<T> {
  try {
    return await start();
  } catch (err) {
    if (claim.port !== 0) await checkPortsFree([claim]);
    throw err;
  }
}

/**
 * `npm start` runs us under tsx's CLI, a parent process that relays SIGINT/SIGTERM and, when this
 * process has not acknowledged a signal within 30 ms (twice), SIGKILLs it and exits 130 itself.
 * The acknowledgement is sent from the event loop, so the stop's synchronous work (closing PGlite,
 * which is WebAssembly) waits until the relay is done. (Under `node --import tsx` there is no relay.)
 */
const TSX_ACK_GRACE_MS = 200;

/**
 * A command's whole main (`npm start`, `poolgate dev`): starts the topology for `local`, stops it
 * on Ctrl-C, and exits 1 with one line when it cannot start.
 * @example await main(fitnessLocal, process.argv.slice(2));
 */
export async function main(local: LocalApp, argv: string[]): Promise<void> {
  const edgeArg = argv.find((a) => a.startsWith('--edge='))?.slice('--edge='.length) ?? 'miniflare';
  if (edgeArg !== 'miniflare' && edgeArg !== 'wrangler') {
    console.error(`poolgate: --edge must be miniflare or wrangler, got "${edgeArg}"`);
    process.exit(1);
  }
  const starting = new AbortController();
  let topology: Topology | undefined;
  // Installed before anything starts: a Ctrl-C during start-up also closes what is open.
  let stopRequested = false;
  onStopSignals((signal) => {
    stopRequested = true;
    console.log(`poolgate: ${signal}, stopping (${signal === 'SIGINT' ? 'Ctrl-C' : signal} again exits at once)`);
    setTimeout(() => (topology ? void stopAndExit(topology) : starting.abort()), TSX_ACK_GRACE_MS);
  });
  try {
    topology = await startTopology(process.env, console.log, { ...local, edge: edgeArg, signal: starting.signal, ownsSignals: true });
  } catch (err) {
    // A Ctrl-C also kills esbuild's service (it is in the terminal's process group), and the build's
    // error can arrive before the signal's handler has run: give the signal a moment. After a
    // Ctrl-C, whatever failed was being stopped anyway.
    if (!stopRequested) await new Promise((r) => setTimeout(r, 100));
    if (stopRequested) {
      console.log('poolgate: stopped during start-up');
      process.exit(0);
    }
    console.error(startupErrorLine(err));
    process.exit(1);
  }
  if (!stopRequested) for (const line of local.tryLines(topology)) console.log(line);
}

async function stopAndExit(topology: Topology): Promise<never> {
  const { clean } = await topology.close();
  console.log(clean ? 'poolgate: stopped' : 'poolgate: stopped, not cleanly (see above)');
  process.exit(clean ? 0 : 1);
}
