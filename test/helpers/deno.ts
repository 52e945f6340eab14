/**
 * A built Netlify Edge bundle served by real Deno (the npm `deno` binary, offline), through
 * test/deno/serve-edge.ts, configured through Deno.env. Deno runs with network access to 127.0.0.1
 * only and read access to the bundle's folder and test/deno, so the bundle cannot reach anything
 * else (nor download anything).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '../..');
const DENO = join(repoRoot, 'node_modules/.bin/deno');
const SERVE_DIR = join(repoRoot, 'test/deno');
const START_TIMEOUT_MS = 60_000;

export interface DenoEdge {
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** Everything Deno printed (stdout and stderr), in order. */
  output: string[];
  /** SIGTERM, then SIGKILL if it has not exited within 5 s. Idempotent. */
  stop(): Promise<void>;
}

export interface DenoEdgeOptions {
  /**
   * Deno's DENO_DIR (default: the user's). Its web cache is what `caches.open()` opens, shared by
   * every process that runs serve-edge.ts with the same DENO_DIR, across runs: a suite that tests
   * the edge's read cache gives its processes a folder of its own.
   */
  denoDir?: string;
}

/**
 * Starts Deno on the bundle; resolves once it prints `listening <port>`.
 * @example
 * const deno = await startDenoEdge(stack.bundlePath, stack.edgeEnv);
 * … await deno.stop(); await stack.stop();
 */
export async function startDenoEdge(bundlePath: string, env: Record<string, string>, options: DenoEdgeOptions = {}): Promise<DenoEdge> {
  const output: string[] = [];
  const child = spawn(
    DENO,
    [
      'run',
      '--no-prompt',
      '--no-config',
      '--no-lock',
      '--no-remote',
      '--no-npm',
      '--allow-net=127.0.0.1',
      '--allow-env',
      `--allow-read=${dirname(bundlePath)},${SERVE_DIR}`,
      join(SERVE_DIR, 'serve-edge.ts'),
      bundlePath,
    ],
    {
      cwd: dirname(bundlePath),
      // Only what Deno itself needs, plus the edge configuration: no POOLGATE_ENV/NODE_ENV from the test run.
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '',
        NO_COLOR: '1',
        DENO_NO_UPDATE_CHECK: '1',
        ...(options.denoDir ? { DENO_DIR: options.denoDir } : {}),
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const stop = stopper(child);
  try {
    const url = await listening(child, output);
    return { url, output, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

function listening(child: ChildProcess, output: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`deno did not start within ${START_TIMEOUT_MS} ms:\n${output.join('')}`)),
      START_TIMEOUT_MS,
    );
    let stdout = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      output.push(chunk.toString('utf8'));
      stdout += chunk.toString('utf8');
      const m = /listening (\d+)/.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolve(`http://127.0.0.1:${m[1]}`);
      }
    });
    child.stderr!.on('data', (chunk: Buffer) => output.push(chunk.toString('utf8')));
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`deno exited (${code ?? signal}) before listening:\n${output.join('')}`));
    });
  });
}

function stopper(child: ChildProcess): () => Promise<void> {
  let stopping: Promise<void> | undefined;
  return () =>
    (stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    })());
}
