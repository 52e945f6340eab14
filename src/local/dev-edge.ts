/**
 * `npm run dev:edge`: the edge app under `wrangler dev` (src/fitness/entries/worker.ts through
 * wrangler.toml, bundled by wrangler itself) instead of our esbuild bundle in miniflare. The topology
 * (src/local/topology.ts, `--edge=wrangler`) starts the database, Node gateway and Neon proxy,
 * then calls `startWranglerDev` here. Offline: metrics and the `Request.cf` download are off.
 * Secrets go to wrangler in a private env file, not on its command line (where `ps` shows them).
 * wrangler runs in a process group of its own: the terminal's Ctrl-C reaches only the topology,
 * which stops wrangler after the edge has drained; if this process exits first, an exit hook
 * kills the group (wrangler and its workerd), and if it is killed (SIGKILL), a watchdog does.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { killWithThisProcess } from './group-guard.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

export interface WranglerDevOptions {
  port: number;
  host?: string;
  /** Plain variables, passed as `--var KEY:VALUE`. */
  vars: Record<string, string>;
  /** Secret variables, passed through a file only this user can read. */
  secrets: Record<string, string>;
  /** How long to wait for the first answer on `/health`. */
  readyTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface WranglerDev {
  readonly url: string;
  /** Stops wrangler (SIGTERM, then SIGKILL after 5 s) and removes the env file. Idempotent. */
  stop(): Promise<void>;
}

/** On Windows `detached` opens a console window instead of a process group. */
const OWN_GROUP = process.platform !== 'win32';

/** Signals wrangler's whole group, so its workerd goes too. */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (OWN_GROUP && child.pid !== undefined) process.kill(-child.pid, signal);
    else child.kill(signal);
  } catch {
    // already gone
  }
}

/** What a double-quoted value in wrangler's env file may hold (dotenv-expand would rewrite `$…`). */
const SAFE_VALUE = /^[^"\\\n\r$]*$/;

/**
 * @example
 * const dev = await startWranglerDev({ port: 8787, vars: { POOLGATE_ENV: 'development' }, secrets: { FORWARD_SECRET: s } });
 * … await dev.stop();
 */
export async function startWranglerDev(options: WranglerDevOptions): Promise<WranglerDev> {
  const host = options.host ?? '127.0.0.1';
  const log = options.log ?? console.log;
  const lines = Object.entries(options.secrets).map(([k, v]) => {
    if (!SAFE_VALUE.test(v))
      throw new Error(`${k} holds a quote, backslash, dollar sign or newline, which cannot be passed to wrangler dev safely`);
    return `${k}="${v}"`;
  });
  const dir = await mkdtemp(join(tmpdir(), 'poolgate-wrangler-'));
  const envFile = join(dir, '.env');
  await writeFile(envFile, `${lines.join('\n')}\n`, { mode: 0o600 });
  await chmod(envFile, 0o600);

  const args = [
    join(root, 'node_modules/wrangler/bin/wrangler.js'),
    'dev',
    '--config',
    join(root, 'wrangler.toml'),
    '--port',
    String(options.port),
    '--ip',
    host,
    '--env-file',
    envFile,
    '--show-interactive-dev-session=false',
    ...Object.entries(options.vars).flatMap(([k, v]) => ['--var', `${k}:${v}`]),
  ];
  const child: ChildProcess = spawn(process.execPath, args, {
    cwd: root,
    env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: OWN_GROUP,
  });
  const kill = (signal: NodeJS.Signals) => killGroup(child, signal);
  const killOnExit = () => kill('SIGKILL');
  process.on('exit', killOnExit);
  const unguard = OWN_GROUP && child.pid !== undefined ? killWithThisProcess(child.pid) : () => {};
  child.once('exit', () => {
    process.off('exit', killOnExit);
    unguard();
  });
  // Its own "Ready on http://host:port" line: until then a 200 on the port may be another process's
  // (the port was free when chosen, and something else may have taken it since).
  let announced = false;
  const readyLine = new RegExp(`Ready on https?://\\S*:${options.port}\\b`);
  const prefix = (chunk: Buffer) =>
    chunk
      .toString('utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .forEach((l) => {
        if (readyLine.test(l)) announced = true;
        log(`wrangler: ${l}`);
      });
  child.stdout!.on('data', prefix);
  child.stderr!.on('data', prefix);

  let stopping: Promise<void> | undefined;
  child.once('exit', (code, signal) => {
    if (!stopping) log(`poolgate: wrangler dev exited (${code ?? signal}); the edge app is down`);
  });
  const stop = () =>
    (stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        kill('SIGTERM');
        const timer = setTimeout(() => kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    })());

  const url = `http://${host.includes(':') ? `[${host}]` : host}:${options.port}`;
  try {
    await waitUntilServing(child, `${url}/health`, options.readyTimeoutMs ?? 60_000, () => announced);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url, stop };
}

/** Polls `healthUrl`, once wrangler said it is ready there, until it answers 200; fails early if the process exits. */
async function waitUntilServing(child: ChildProcess, healthUrl: string, timeoutMs: number, announced: () => boolean): Promise<void> {
  let exited: string | undefined;
  child.once('exit', (code, signal) => (exited = `wrangler dev exited (${code ?? signal}) before serving; see its output above`));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited) throw new Error(exited);
    try {
      if (announced()) {
        const res = await fetch(healthUrl, { signal: AbortSignal.timeout(2_000) });
        await res.body?.cancel();
        if (res.status === 200) return;
      }
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`wrangler dev did not answer on ${healthUrl} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
