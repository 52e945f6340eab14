/**
 * The `poolgate` bin as a user runs it: src/bin/poolgate.mjs in a child process on the project's
 * Node, with only PATH and HOME from this environment plus what the test gives (so no
 * DATABASE_URL or OPS_TOKEN leaks in from the test run).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const NODE = join(ROOT, 'node_modules/.bin/node');
export const BIN = join(ROOT, 'src/bin/poolgate.mjs');

export interface BinRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts the bin; its output accumulates in `output()`. */
export function spawnPoolgate(
  args: string[],
  env: Record<string, string> = {},
  cwd = ROOT,
): { child: ChildProcessWithoutNullStreams; output: () => BinRun; exited: Promise<BinRun> } {
  const child = spawn(NODE, [BIN, ...args], { cwd, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env } });
  child.stdin.end();
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
  const output = () => ({ code: child.exitCode, stdout, stderr });
  const exited = new Promise<BinRun>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  return { child, output, exited };
}

/** Runs the bin to its end. */
export function runPoolgate(args: string[], env: Record<string, string> = {}, cwd = ROOT): Promise<BinRun> {
  return spawnPoolgate(args, env, cwd).exited;
}
