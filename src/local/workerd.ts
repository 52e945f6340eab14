/**
 * The one place that knows miniflare's options: how a single-file ESM bundle and its string
 * bindings become a workerd worker, and which compatibility date the edge app runs at. The local
 * topology, the workerd tests and the bench all build their workers here. Also how a process that
 * stops itself (`npm start`) keeps miniflare from exiting it first on Ctrl-C, and workerd from
 * outliving it.
 */
import childProcess, { type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { Miniflare } from 'miniflare';
import { killWithThisProcess } from './group-guard.js';

/**
 * The date the edge app is written against; wrangler.toml must say the same (a test checks).
 * workerd 1.20261117 (wrangler 4.164) supports dates up to 2026-11-24.
 */
export const COMPATIBILITY_DATE = '2026-11-17';
export const COMPATIBILITY_FLAGS = ['nodejs_compat'];

export type MiniflareOptions = ConstructorParameters<typeof Miniflare>[0];
export type WorkerdWorker = Extract<MiniflareOptions, { workers: unknown }>['workers'][number];

/**
 * @example
 * new Miniflare({ host: '127.0.0.1', port: 8787, workers: [workerdWorker('edge', 'dist/worker/worker.js', env)] });
 */
export function workerdWorker(name: string, bundlePath: string, bindings: Record<string, string>): WorkerdWorker {
  const mainModule = basename(bundlePath);
  return {
    config: {
      name,
      compatibilityDate: COMPATIBILITY_DATE,
      compatibilityFlags: COMPATIBILITY_FLAGS,
      manifest: { mainModule, modules: { [mainModule]: { type: 'esm', contents: readFileSync(bundlePath, 'utf8') } } },
      env: Object.fromEntries(Object.entries(bindings).map(([key, value]) => [key, { type: 'text', value }])),
    },
  };
}

export interface MiniflareProcessOptions {
  /**
   * The caller handles SIGINT, SIGTERM and SIGHUP itself and disposes miniflare when it is done
   * (`npm start`, which first drains the Node gateway). Off: miniflare's defaults.
   */
  ownsSignals?: boolean;
}

/** The signals miniflare 5's exit hook answers with `process.exit(128 + n)` after killing workerd. */
const EXIT_HOOK_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * `new Miniflare(options)`, and with `ownsSignals` two changes so the caller's shutdown runs:
 * - miniflare's constructor installs an exit hook (dist/src/index.js, `exitHook`) whose SIGINT,
 *   SIGTERM and SIGHUP listeners exit the process at once, before any other listener can drain;
 *   those three are removed again (no option turns them off). Its `exit` listener stays: it
 *   SIGKILLs workerd on any process exit, a forced one included.
 * - workerd is started in a process group of its own: Ctrl-C signals the terminal's whole
 *   foreground group, and workerd would die at once (and be restarted by miniflare) while requests
 *   it holds are still waiting on the Node gateway's drain. dispose() still kills it by pid, and
 *   a watchdog (group-guard.ts) kills its group if this process dies without doing so (SIGKILL).
 * @example const mf = createMiniflare({ port: 8787, workers: [workerdWorker(…)] }, { ownsSignals: true });
 */
export function createMiniflare(options: MiniflareOptions, { ownsSignals = false }: MiniflareProcessOptions = {}): Miniflare {
  if (!ownsSignals) return new Miniflare(options);
  startWorkerdInItsOwnProcessGroup();
  const before = new Map(EXIT_HOOK_SIGNALS.map((signal) => [signal, new Set(process.listeners(signal))]));
  const mf = new Miniflare(options);
  for (const [signal, listeners] of before) {
    for (const listener of process.listeners(signal)) if (!listeners.has(listener)) process.off(signal, listener);
  }
  return mf;
}

let detachingWorkerd = false;

/**
 * miniflare spawns workerd with `child_process.spawn`, looked up at call time; wrapping it once is
 * the only seam that adds `detached`. Only miniflare's workerd command line is changed.
 */
function startWorkerdInItsOwnProcessGroup(): void {
  if (detachingWorkerd || process.platform === 'win32') return; // on Windows `detached` opens a console instead
  detachingWorkerd = true;
  const spawn = childProcess.spawn;
  const spawnDetachingWorkerd = function (this: unknown, ...args: unknown[]) {
    const [, argv, options] = args;
    const detach = isWorkerdServe(argv) && typeof options === 'object' && options !== null;
    if (detach) args[2] = { ...options, detached: true };
    const child = Reflect.apply(spawn, this, args) as ChildProcess;
    if (detach && child.pid !== undefined) child.once('exit', killWithThisProcess(child.pid));
    return child;
  };
  Object.assign(childProcess, { spawn: spawnDetachingWorkerd });
}

const isWorkerdServe = (argv: unknown) => Array.isArray(argv) && argv[0] === 'serve' && argv.includes('--control-fd=3');
