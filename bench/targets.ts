/**
 * What the bench loads, each in a process of its own so the load generator (the parent) and the
 * server do not share one event loop:
 *   connect            baseline: bare Hono on @hono/node-server, a new pg.Client per request (over
 *                      whatever auth and TLS the database URL asks for: SCRAM + TLS in the bench)
 *   ceiling            baseline: bare Hono on a pg.Pool (max 20), no middleware, plain queries
 *   ceiling-prepared   the same, each statement a named prepared statement ({ name, text, values }):
 *                      parsed and planned once per connection, then Bind/Execute only
 *   ceiling-pipelined  the same route on a few pg.Clients with node-postgres's `pipeline: true`,
 *                      each request's query sent on the least busy one without waiting for a checkout
 *   gateway   poolgate's Node gateway (startGateway), unsigned: reads on its pipelined lanes (4 of POOL_MAX
 *             20 by default), the rest on its pg Pool
 *   topology  poolgate's edge topology (startTopology): workerd + local Neon proxy + Node gateway
 * The baselines run the very same SELECT as the read route (repo.getUser), through a minimal Db.
 *
 * The parent starts one with launchTarget(); the child answers on stdout with one `@@bench` JSON
 * line when ready, takes JSON-line commands on stdin (CPU profile start/stop), and shuts down
 * when stdin closes, so a parent that dies never leaves a server behind.
 */
import { serve, type ServerType } from '@hono/node-server';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { Session } from 'node:inspector/promises';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Hono } from 'hono';
import pg from 'pg';
import type { Db, QueryResult } from '../src/db/types.js';
import type { PoolgateApp } from '../src/definition.js';
import { AppError } from '../src/errors.js';
import { getUser } from '../src/fitness/repo.js';

export const TARGET_KINDS = ['connect', 'ceiling', 'ceiling-prepared', 'ceiling-pipelined', 'gateway', 'topology'] as const;
export type TargetKind = (typeof TARGET_KINDS)[number];

export interface TargetConfig {
  databaseUrl: string;
  applicationName: string;
  /** Pool size of the ceiling and of the gateway. */
  poolMax: number;
  /** ceiling-pipelined only: how many pipelined connections share the requests (default 4). */
  pipelineClients?: number;
  /** gateway only: settings beside the bench's own (PG_PIPELINE_LANES, REQUEST_TIMEOUT_MS, …). */
  env?: Record<string, string>;
  /** gateway only: a module whose `app` export the gateway serves instead of the fitness app (a bench's own routes). */
  appModule?: string;
}

export interface TargetUrls {
  /** Where the target serves HTTP (the edge for the topology). */
  url: string;
  /** topology only */
  nodeUrl?: string;
  proxyUrl?: string;
}

// ---------------------------------------------------------------------------------------------
// The baseline servers

export interface BaselineServer {
  url: string;
  close(): Promise<void>;
}

/** A Db that can only run one-shot queries: all the read route needs, nothing more. */
function queryOnlyDb(run: (text: string, params: unknown[]) => Promise<pg.QueryResult>): Db {
  const unused = () => Promise.reject(new Error('The baseline only runs one-shot queries.'));
  return {
    kind: 'pg-pool',
    async query<R>(text: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
      const res = await run(text, (params ?? []) as unknown[]);
      return { rows: res.rows as R[], rowCount: res.rowCount ?? null };
    },
    readBatch: unused,
    transaction: unused,
  };
}

function bareApp(handler: (id: string) => Promise<unknown>): Hono {
  const app = new Hono();
  app.get('/api/users/:id', async (c) => c.json((await handler(c.req.param('id'))) as object));
  app.onError((err) => {
    const status = err instanceof AppError ? err.status : 500;
    return new Response(JSON.stringify({ error: { message: err instanceof AppError ? err.message : 'internal' } }), {
      status,
      headers: { 'content-type': 'application/json' },
    });
  });
  return app;
}

/** Serves `app` on a free loopback port with the gateway's socket timeouts, so only the app differs. */
async function serveApp(app: Hono, close: () => Promise<void>): Promise<BaselineServer> {
  const server = await new Promise<ServerType>((resolve, reject) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    s.once('error', reject);
  });
  const http = server as Server;
  http.headersTimeout = 10_000;
  http.requestTimeout = 30_000;
  http.keepAliveTimeout = 65_000;
  let closing: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      (closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => http.close(() => resolve()));
        http.closeAllConnections();
        await stopped;
        await close();
      })()),
  };
}

/** Baseline (a): a new connection per request — the guide's "before". */
export function startConnectPerRequest(cfg: Pick<TargetConfig, 'databaseUrl' | 'applicationName'>): Promise<BaselineServer> {
  const app = bareApp(async (id) => {
    const client = new pg.Client({ connectionString: cfg.databaseUrl, application_name: cfg.applicationName });
    client.on('error', () => {});
    await client.connect();
    try {
      return await getUser(
        queryOnlyDb((text, params) => client.query(text, params)),
        id,
      );
    } finally {
      await client.end();
    }
  });
  return serveApp(app, async () => {});
}

/** A statement name per distinct SQL text, as an application using named statements would keep. */
function statementNames(): (text: string) => string {
  const names = new Map<string, string>();
  return (text) => {
    let name = names.get(text);
    if (name === undefined) names.set(text, (name = `bench_${names.size + 1}`));
    return name;
  };
}

/**
 * Baseline (b), the ceiling: a pg.Pool and nothing else between the route and the query; with
 * `prepared`, each statement goes as a named prepared statement (node-postgres parses it once per
 * connection and then sends only Bind/Execute).
 */
export function startCeiling(
  cfg: Pick<TargetConfig, 'databaseUrl' | 'applicationName' | 'poolMax'>,
  { prepared = false }: { prepared?: boolean } = {},
): Promise<BaselineServer> {
  const pool = new pg.Pool({
    connectionString: cfg.databaseUrl,
    application_name: cfg.applicationName,
    max: cfg.poolMax,
    idleTimeoutMillis: 30_000,
  });
  pool.on('error', () => {});
  const nameOf = statementNames();
  const db = queryOnlyDb(
    prepared ? (text, values) => pool.query({ name: nameOf(text), text, values }) : (text, params) => pool.query(text, params),
  );
  return serveApp(
    bareApp((id) => getUser(db, id)),
    () => pool.end(),
  );
}

/**
 * Baseline (c), the pipelined ceiling: `clients` connections opened once with `pipeline: true`;
 * a request's statement is written to the connection with the fewest in flight at once, behind
 * the others already on the wire, instead of waiting for a connection of its own.
 */
export async function startPipelinedCeiling(
  cfg: Pick<TargetConfig, 'databaseUrl' | 'applicationName' | 'pipelineClients'>,
): Promise<BaselineServer> {
  const count = cfg.pipelineClients ?? 4;
  const clients = Array.from({ length: count }, () => {
    const client = new pg.Client({ connectionString: cfg.databaseUrl, application_name: cfg.applicationName, pipeline: true });
    client.on('error', () => {});
    return { client, inFlight: 0 };
  });
  await Promise.all(clients.map((c) => c.client.connect()));
  const nameOf = statementNames();
  const db = queryOnlyDb(async (text, values) => {
    let least = clients[0]!;
    for (const c of clients) if (c.inFlight < least.inFlight) least = c;
    least.inFlight++;
    try {
      return await least.client.query({ name: nameOf(text), text, values });
    } finally {
      least.inFlight--;
    }
  });
  return serveApp(
    bareApp((id) => getUser(db, id)),
    async () => {
      await Promise.allSettled(clients.map((c) => c.client.end()));
    },
  );
}

// ---------------------------------------------------------------------------------------------
// The child process side

const MARK = '@@bench ';

async function startInChild(
  kind: TargetKind,
  cfg: TargetConfig,
  log: (line: string) => void,
): Promise<{ urls: TargetUrls; close(): Promise<unknown> }> {
  switch (kind) {
    case 'connect': {
      const s = await startConnectPerRequest(cfg);
      return { urls: { url: s.url }, close: () => s.close() };
    }
    case 'ceiling':
    case 'ceiling-prepared': {
      const s = await startCeiling(cfg, { prepared: kind === 'ceiling-prepared' });
      return { urls: { url: s.url }, close: () => s.close() };
    }
    case 'ceiling-pipelined': {
      const s = await startPipelinedCeiling(cfg);
      return { urls: { url: s.url }, close: () => s.close() };
    }
    case 'gateway': {
      // Imported here so the baselines' processes never load poolgate's runtime.
      const { startGateway } = await import('../src/runtime/node.js');
      const app = cfg.appModule
        ? ((await import(cfg.appModule)) as { app: PoolgateApp }).app
        : (await import('../src/fitness/app.js')).fitness;
      const g = await startGateway(
        app,
        {
          DATABASE_URL: cfg.databaseUrl,
          HOST: '127.0.0.1',
          PORT: '0',
          POOL_MAX: String(cfg.poolMax),
          APPLICATION_NAME: cfg.applicationName,
          LOG_LEVEL: 'silent',
          SHUTDOWN_TIMEOUT_MS: '2000',
          ...cfg.env,
        },
        { log },
      );
      return { urls: { url: g.url }, close: () => g.close() };
    }
    case 'topology': {
      const [{ startTopology }, { fitnessLocal }] = await Promise.all([
        import('../src/local/topology.js'),
        import('../src/fitness/entries/local.js'),
      ]);
      const t = await startTopology(
        {
          DATABASE_URL: cfg.databaseUrl,
          EDGE_PORT: '0',
          NODE_PORT: '0',
          NEON_PROXY_PORT: '0',
          POOL_MAX: String(cfg.poolMax),
          APPLICATION_NAME: cfg.applicationName,
          SEED: 'false',
          LOG_LEVEL: 'silent',
          SHUTDOWN_TIMEOUT_MS: '2000',
        },
        log,
        // workerd on the edge port itself: the Node front that drains it on Ctrl-C is a hop production has not.
        { ...fitnessLocal, edgeFront: false },
      );
      return { urls: { url: t.edgeUrl, nodeUrl: t.nodeUrl, proxyUrl: t.proxyUrl }, close: () => t.close() };
    }
  }
}

interface Command {
  id: number;
  cmd: 'profile-start' | 'profile-stop';
  file?: string;
}

async function childMain(kind: TargetKind): Promise<void> {
  const cfg = JSON.parse(process.env.POOLGATE_BENCH_TARGET ?? '{}') as TargetConfig;
  // The proxy logs every request: keep the last lines in memory, print them only on the way out.
  const ring: string[] = [];
  const log = (line: string) => {
    ring.push(line);
    if (ring.length > 60) ring.shift();
  };
  const say = (msg: object) => process.stdout.write(`${MARK}${JSON.stringify(msg)}\n`);
  let target: Awaited<ReturnType<typeof startInChild>>;
  try {
    target = await startInChild(kind, cfg, log);
  } catch (err) {
    process.stderr.write(`${ring.join('\n')}\nbench target ${kind} failed to start: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  }

  let session: Session | undefined;
  let shutting = false;
  const shutdown = async () => {
    if (shutting) return;
    shutting = true;
    await target.close().catch((err: unknown) => process.stderr.write(`close failed: ${String(err)}\n`));
    if (ring.length) process.stderr.write(`${ring.slice(-20).join('\n')}\n`);
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown());
  process.on('SIGINT', () => void shutdown());

  const input = createInterface({ input: process.stdin });
  input.on('close', () => void shutdown());
  input.on('line', (line) => {
    let c: Command;
    try {
      c = JSON.parse(line) as Command;
    } catch {
      return;
    }
    void (async () => {
      try {
        if (c.cmd === 'profile-start') {
          session = new Session();
          session.connect();
          await session.post('Profiler.enable');
          await session.post('Profiler.setSamplingInterval', { interval: 250 });
          await session.post('Profiler.start');
        } else if (c.cmd === 'profile-stop') {
          if (!session) throw new Error('profile-stop before profile-start');
          const { profile } = await session.post('Profiler.stop');
          session.disconnect();
          session = undefined;
          writeFileSync(c.file!, JSON.stringify(profile));
        }
        say({ id: c.id, ok: true });
      } catch (err) {
        say({ id: c.id, ok: false, error: String(err) });
      }
    })();
  });
  say({ ready: target.urls, pid: process.pid });
}

// ---------------------------------------------------------------------------------------------
// The parent side

export interface TargetProcess {
  readonly kind: TargetKind;
  readonly pid: number;
  readonly urls: TargetUrls;
  /** Starts sampling this process's CPU (V8 profiler through node:inspector). */
  profileStart(): Promise<void>;
  /** Stops sampling and writes a .cpuprofile (Chrome DevTools format) to `file`. */
  profileStop(file: string): Promise<void>;
  /** Closes stdin (the child drains and exits); SIGKILL after `timeoutMs`. Idempotent. */
  stop(timeoutMs?: number): Promise<void>;
  /** The last output of the child, for error messages. */
  tail(): string;
}

const root = fileURLToPath(new URL('../', import.meta.url));
const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;

/**
 * Starts a target in a child process and resolves once it serves.
 * @example
 * const ceiling = await launchTarget('ceiling', { databaseUrl, applicationName: 'poolgate-bench-ceiling', poolMax: 20 });
 * … await ceiling.stop();
 */
export function launchTarget(kind: TargetKind, cfg: TargetConfig, readyTimeoutMs = 90_000): Promise<TargetProcess> {
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, ['--import', tsxLoader, fileURLToPath(import.meta.url), kind], {
    cwd: root,
    // A clean environment: a FORWARD_SECRET or POOL_MAX in the caller's shell must not change the target.
    env: { PATH: process.env.PATH, HOME: process.env.HOME, TMPDIR: process.env.TMPDIR, POOLGATE_BENCH_TARGET: JSON.stringify(cfg) },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  const keep = (s: string) => (out = (out + s).slice(-6_000));
  child.stderr.on('data', (d: Buffer) => keep(d.toString()));
  const pending = new Map<number, { resolve(): void; reject(err: Error): void }>();
  let nextId = 1;
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      for (const p of pending.values()) p.reject(new Error(`bench target ${kind} exited`));
      pending.clear();
      resolve();
    }),
  );

  return new Promise<TargetProcess>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`bench target ${kind} did not start within ${readyTimeoutMs} ms:\n${out}`));
    }, readyTimeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    void exit.then(() => {
      clearTimeout(timer);
      reject(new Error(`bench target ${kind} exited before it was ready:\n${out}`));
    });

    const send = (cmd: Command['cmd'], file?: string) =>
      new Promise<void>((res, rej) => {
        if (exited) return rej(new Error(`bench target ${kind} has exited`));
        const id = nextId++;
        pending.set(id, { resolve: res, reject: rej });
        child.stdin.write(`${JSON.stringify({ id, cmd, file })}\n`);
      });

    let stopping: Promise<void> | undefined;
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (!line.startsWith(MARK)) return keep(`${line}\n`);
      const msg = JSON.parse(line.slice(MARK.length)) as { ready?: TargetUrls; pid?: number; id?: number; ok?: boolean; error?: string };
      if (msg.ready) {
        clearTimeout(timer);
        resolve({
          kind,
          pid: child.pid!,
          urls: msg.ready,
          profileStart: () => send('profile-start'),
          profileStop: (file) => send('profile-stop', file),
          tail: () => out,
          stop: (timeoutMs = 20_000) =>
            (stopping ??= (async () => {
              if (exited) return;
              child.stdin.end();
              const killer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
              await exit;
              clearTimeout(killer);
            })()),
        });
        return;
      }
      const p = msg.id === undefined ? undefined : pending.get(msg.id);
      if (!p) return;
      pending.delete(msg.id!);
      if (msg.ok) p.resolve();
      else p.reject(new Error(msg.error ?? 'command failed'));
    });
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const kind = process.argv[2] as TargetKind;
  if (!(TARGET_KINDS as readonly string[]).includes(kind)) {
    console.error(`usage: tsx bench/targets.ts ${TARGET_KINDS.join('|')} (started by bench/run.ts)`);
    process.exit(2);
  }
  void childMain(kind);
}
