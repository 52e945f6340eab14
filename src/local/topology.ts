/**
 * The whole edge topology of an app on one machine, offline: `npm start` runs it for the fitness
 * example (src/fitness/entries/local.ts), `poolgate dev --app <module>` for a user's app (dev.ts).
 *   database   embedded PGlite in EMBEDDED_DATA_DIR (.data/pglite), locked to this process; or DATABASE_URL
 *   :4444      local Neon-compatible proxy (HTTP /sql + WebSocket) in front of it     NEON_PROXY_PORT
 *   :8788      Node gateway (pg Pool), accepting only signed forwards                 NODE_PORT
 *   :8787      the edge app in workerd (miniflare): reads via Neon, writes forwarded  EDGE_PORT
 * The configuration, the data folder and every port are checked before the database is opened.
 * On EDGE_PORT a Node front (edge-front.ts) proxies to workerd on an internal port and counts the
 * requests in flight. Ctrl-C (or SIGTERM, or npm above it being killed) drains the edge — new
 * requests get 503, those in flight finish, the gateway still taking their writes — then the
 * gateway, all within SHUTDOWN_TIMEOUT_MS, then stops the proxy and the database, and exits 0; a
 * second Ctrl-C exits at once (130). If this process is killed outright, a watchdog stops workerd.
 * `npm run dev:edge` (`--edge=wrangler`) serves the edge app with `wrangler dev` instead.
 * Generic: the app, its edge bundle and what to suggest trying come from the caller (LocalApp).
 */
import { randomBytes } from 'node:crypto';
import { ConfigError, parseConfig, type Config } from '../config.js';
import type { PoolgateApp } from '../definition.js';
import { describeError } from '../errors.js';
import { startGateway, startupErrorLine, type Gateway } from '../runtime/node.js';
import { lockDataDir, type DataDirLock } from './data-dir-lock.js';
import { startWranglerDev } from './dev-edge.js';
import { startEdgeFront } from './edge-front.js';
import { stopLeftoverWorkerd } from './leftover.js';
import { startNeonProxy, type NeonProxy, type NeonProxyOptions } from './neon-proxy/index.js';
import { checkPortsFree, freePort, type PortClaim } from './ports.js';
import { onStopSignals, type StopReason } from './stop-signals.js';
import { createMiniflare, workerdWorker } from './workerd.js';

export interface Topology {
  edgeUrl: string;
  nodeUrl: string;
  proxyUrl: string;
  /** The demo data is loaded: the embedded database, or SEED=true. */
  seeded: boolean;
  /**
   * Drains the edge (the gateway still takes the writes it forwards), then the Node gateway, both
   * within SHUTDOWN_TIMEOUT_MS, then stops the Neon proxy and the embedded database, logging each
   * step. Runs once; never rejects.
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
  /**
   * false: the edge app listens on EDGE_PORT itself, without the Node front (one hop less, for the
   * bench); stopping it then cuts what it still carries.
   */
  edgeFront?: boolean;
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
/**
 * Stop order: the edge drains first, while the gateway still takes the writes its requests
 * forward; then the gateway, which has only what the edge gave up on; then what they read from.
 */
const STOP_ORDER: Part[] = ['edge', 'gateway', 'proxy', 'database'];

/** A part's stop, given the milliseconds left of the stop's deadline (never below 0). */
type Stop = (leftMs: () => number) => Promise<void>;

/** What has been started so far, and how to stop it; close() runs once. */
class Parts {
  readonly #stops = new Map<Part, Stop>();
  #closing: Promise<{ clean: boolean }> | undefined;

  constructor(
    readonly log: (line: string) => void,
    readonly shutdownTimeoutMs: number,
  ) {}

  set(part: Part, stop: Stop): void {
    this.#stops.set(part, stop);
  }

  close(): Promise<{ clean: boolean }> {
    return (this.#closing ??= this.#stopAll());
  }

  async #stopAll(): Promise<{ clean: boolean }> {
    const deadline = performance.now() + this.shutdownTimeoutMs;
    const leftMs = () => Math.max(0, Math.round(deadline - performance.now()));
    let clean = true;
    for (const part of STOP_ORDER) {
      try {
        await this.#stops.get(part)?.(leftMs);
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
  const config = checkConfig(env, ports.node, forwardSecret);
  const checkpoint = () => options.signal?.throwIfAborted();
  const parts = new Parts(log, config.shutdownTimeoutMs);
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
    // Read replicas (opt-in, with DATABASE_URL): the edge reads from them through the same proxy.
    const replicaUrls = gateway.config.replicaUrls;
    const proxy = await startProxy([databaseUrl, ...replicaUrls], ports, proxyLogLevel(gateway.config.logLevel), parts);
    checkpoint();
    const bindings = {
      DATABASE_URL: databaseUrl,
      ...(replicaUrls.length ? { DATABASE_REPLICA_URLS: replicaUrls.join(',') } : {}),
      NODE_FUNCTION_URL: gateway.url,
      NEON_PROXY_URL: proxy.url,
      FORWARD_SECRET: forwardSecret,
      POOLGATE_ENV: 'development',
    };
    const edgeUrl = await startEdge(ports.edge, bindings, parts, { ...options, scriptPath });
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

/** The placeholder for the embedded database's URL, which is known only once it runs. */
const EMBEDDED_URL_UNKNOWN = 'postgres://postgres@127.0.0.1:5432/postgres';

/** The whole gateway configuration, as the gateway will get it, before anything is locked or opened. */
function checkConfig(env: Env, node: PortClaim, forwardSecret: string): Config {
  return parseConfig(gatewayEnv(env, env.DATABASE_URL || EMBEDDED_URL_UNKNOWN, node, forwardSecret, !env.DATABASE_URL));
}

/** What the Node gateway is started with; it seeds the demo data on the embedded database, or with SEED=true. */
function gatewayEnv(env: Env, databaseUrl: string, claim: PortClaim, forwardSecret: string, embedded: boolean): Env {
  return {
    ...env,
    DATABASE_URL: databaseUrl,
    PORT: String(claim.port),
    FORWARD_SECRET: forwardSecret,
    SEED: embedded ? 'true' : env.SEED,
    // Development, at a terminal or piped: the gateway's lines read like the topology's own (LOG_FORMAT=json for JSON).
    LOG_FORMAT: env.LOG_FORMAT || 'pretty',
    // A development topology: the gateway's /stats and /metrics stay readable without OPS_TOKEN.
    POOLGATE_ENV: env.POOLGATE_ENV ?? 'development',
  };
}

/**
 * The cheap checks, before anything is built or opened. The embedded data folder's lock first, so
 * a second `npm start` is told the folder is taken whatever ports it asked for; then the ports, so
 * a busy one never costs an open (and a close) of the data. No lock when DATABASE_URL is set. A
 * workerd that an earlier, killed run left on the edge port is stopped first.
 */
async function claimFolderAndPorts(
  env: Env,
  ports: { edge: PortClaim; node: PortClaim; proxy: PortClaim },
  parts: Parts,
): Promise<DataDirLock | undefined> {
  const lock = env.DATABASE_URL ? undefined : await lockDataDir(env.EMBEDDED_DATA_DIR?.trim() || '.data/pglite');
  if (lock) parts.set('database', () => lock.release());
  const leftover = await stopLeftoverWorkerd(ports.edge.port);
  if (leftover)
    parts.log(`poolgate: stopped workerd (pid ${leftover}) left on port ${ports.edge.port} by an earlier npm start whose process is gone`);
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
  const gatewayEnvironment = gatewayEnv(env, databaseUrl, claim, forwardSecret, embedded);
  const gateway = await explainBusyPort(claim, () => startGateway(app, gatewayEnvironment, { log: parts.log }));
  parts.set('gateway', async (leftMs) => {
    const drainTimeoutMs = leftMs();
    parts.log(`poolgate: draining the Node gateway (up to ${drainTimeoutMs} ms)`);
    const { drained } = await gateway.close({ drainTimeoutMs });
    parts.log(`poolgate: Node gateway ${drained ? 'drained' : 'stopped (drain deadline passed)'}, pool ended`);
  });
  return gateway;
}

async function startProxy(
  databaseUrls: string[],
  ports: ReturnType<typeof topologyPorts>,
  logLevel: NeonProxyOptions['logLevel'],
  parts: Parts,
): Promise<NeonProxy> {
  const claim = ports.proxy;
  // Browsers may reach it only from the local edge's pages; the edge itself (workerd) sends no Origin.
  const allowedOrigins = [`http://${HOST}:${ports.edge.port}`, `http://localhost:${ports.edge.port}`];
  const proxy = await explainBusyPort(claim, () =>
    startNeonProxy({ databaseUrls, port: claim.port, host: HOST, allowedOrigins, log: parts.log, logLevel }),
  );
  parts.set('proxy', async () => {
    await proxy.close();
    parts.log('poolgate: Neon proxy stopped');
  });
  parts.log(`poolgate: local Neon proxy on ${proxy.url}`);
  return proxy;
}

/**
 * The edge app: workerd (or wrangler dev) on an internal port behind the Node front on EDGE_PORT,
 * which drains it on stop; without the front (edgeFront: false) on EDGE_PORT itself.
 */
async function startEdge(
  claim: PortClaim,
  bindings: Record<string, string>,
  parts: Parts,
  options: TopologyOptions & { scriptPath?: string },
): Promise<string> {
  const runner = options.edge === 'wrangler' ? 'wrangler dev' : 'workerd';
  if (options.edgeFront === false) {
    const app = await explainBusyPort(claim, () => startEdgeApp(claim.port, bindings, parts.log, options));
    parts.set('edge', () => app.stop());
    return app.url;
  }
  const internalPort = options.edge === 'wrangler' ? await freePort(HOST) : 0;
  const app = await startEdgeApp(internalPort, bindings, parts.log, options);
  parts.set('edge', () => app.stop());
  const front = await explainBusyPort(claim, () => startEdgeFront({ port: claim.port, host: HOST, target: app.url }));
  parts.set('edge', async (leftMs) => {
    const timeoutMs = leftMs();
    const count = front.inFlight;
    parts.log(
      `poolgate: draining the edge (${count} request${count === 1 ? '' : 's'} in flight, up to ${timeoutMs} ms); new requests get 503 shutting_down`,
    );
    const { drained, cut } = await front.drain(timeoutMs);
    parts.log(
      drained ? 'poolgate: edge drained' : `poolgate: edge drain deadline passed: ${cut} request${cut === 1 ? '' : 's'} answered 503`,
    );
    await app.stop();
    parts.log(`poolgate: edge app (${runner}) stopped`);
  });
  return front.url;
}

/** workerd (miniflare, our esbuild bundle) or wrangler dev on `port`. */
async function startEdgeApp(
  port: number,
  bindings: Record<string, string>,
  log: (line: string) => void,
  options: TopologyOptions & { scriptPath?: string },
): Promise<{ url: string; stop(): Promise<void> }> {
  if (options.edge === 'wrangler') {
    const { DATABASE_URL = '', FORWARD_SECRET = '', DATABASE_REPLICA_URLS, ...vars } = bindings;
    const secrets = { DATABASE_URL, FORWARD_SECRET, ...(DATABASE_REPLICA_URLS ? { DATABASE_REPLICA_URLS } : {}) };
    return startWranglerDev({ port, host: HOST, vars, secrets, log });
  }
  const scriptPath = options.scriptPath ?? (await options.buildWorker());
  const mf = createMiniflare(
    { host: HOST, port, workers: [workerdWorker('poolgate', scriptPath, bindings)] },
    { ownsSignals: options.ownsSignals },
  );
  try {
    return { url: (await mf.ready).toString().replace(/\/$/, ''), stop: () => mf.dispose() };
  } catch (err) {
    await mf.dispose().catch(() => {});
    throw err;
  }
}

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

/** How often the topology checks that npm (or tsx) above it still runs. */
const PARENT_POLL_MS = 500;

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
  const parent = process.ppid;
  const why = (reason: StopReason) =>
    reason === 'parent-gone'
      ? `parent process ${parent} is gone (npm killed?), stopping`
      : `${reason}, stopping (${reason === 'SIGINT' ? 'Ctrl-C' : reason} again exits at once)`;
  // With the parent gone, so may be the terminal or pipe we print to: the stop must still run.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});
  onStopSignals(
    (reason) => {
      stopRequested = true;
      console.log(`poolgate: ${why(reason)}`);
      setTimeout(() => (topology ? void stopAndExit(topology) : starting.abort()), TSX_ACK_GRACE_MS);
    },
    { parentPollMs: PARENT_POLL_MS },
  );
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

/** The proxy knows three levels: its `info` is refusals and failures, so warn and error keep them. */
const proxyLogLevel = (level: Config['logLevel']): NeonProxyOptions['logLevel'] =>
  level === 'silent' ? 'silent' : level === 'trace' || level === 'debug' ? 'debug' : 'info';
