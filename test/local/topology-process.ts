/**
 * The `npm start` topology as a real child process, for the tests in this folder: spawned in a
 * process group of its own (so a test can press "Ctrl-C" on it: SIGINT to the whole group, as a
 * terminal does), on free ports and a temporary data dir, never `.data/` or the default ports.
 * Every wait is bounded; `stopAll()` ends whatever is still running.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { freePort } from '../helpers/wait.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BIN = join(ROOT, 'node_modules/.bin');

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface TopologyProcess {
  readonly pid: number;
  readonly stdout: () => string;
  readonly stderr: () => string;
  readonly exited: Promise<Exit>;
  /** Resolves with the first stdout line matching `pattern`; rejects after `timeoutMs` or on exit. */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Resolves with the exit; rejects after `timeoutMs`. */
  waitForExit(timeoutMs?: number): Promise<Exit>;
  /** What a terminal's Ctrl-C does: SIGINT to every process of the group. */
  pressCtrlC(): void;
}

const running = new Set<TopologyProcess>();

/**
 * Starts `tsx src/fitness/entries/local.ts` or, with `npm: true`, `npm start` itself, or with
 * `node: true` what `npm start` execs (`node --import tsx src/fitness/entries/local.ts`: `pid` is
 * then the topology's own process), with exactly `env` plus PATH and HOME.
 */
export function spawnTopology(env: Record<string, string>, options: { npm?: boolean; node?: boolean } = {}): TopologyProcess {
  const [command, args] = options.npm
    ? ['npm', ['start', '--silent']]
    : options.node
      ? [join(BIN, 'node'), ['--import', 'tsx', 'src/fitness/entries/local.ts']]
      : [join(BIN, 'tsx'), ['src/fitness/entries/local.ts']];
  const child: ChildProcessByStdio<null, Readable, Readable> = spawn(command, args, {
    cwd: ROOT,
    env: { PATH: `${BIN}:${process.env.PATH ?? ''}`, HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
  const exited = new Promise<Exit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let exit: Exit | undefined;
  void exited.then((e) => (exit = e));
  const proc: TopologyProcess = {
    pid: child.pid!,
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    waitForLine: (pattern, timeoutMs = 120_000) =>
      poll(
        () => stdout.split('\n').find((l) => pattern.test(l)),
        timeoutMs,
        () => `${pattern}\nstdout: ${stdout}\nstderr: ${stderr}`,
        () => exit !== undefined,
      ),
    waitForExit: (timeoutMs = 60_000) =>
      poll(
        () => exit,
        timeoutMs,
        () => `an exit\nstdout: ${stdout}\nstderr: ${stderr}`,
      ),
    pressCtrlC: () => process.kill(-child.pid!, 'SIGINT'),
  };
  running.add(proc);
  void exited.then(() => running.delete(proc));
  return proc;
}

/** Calls `probe` every 50 ms until it returns something, for at most `timeoutMs`, or until `hopeless()`. */
async function poll<T>(probe: () => T | undefined, timeoutMs: number, what: () => string, hopeless = () => false): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (hopeless()) throw new Error(`exited before ${what()}`);
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms in vain for ${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Ends every topology still running: SIGTERM to its group (a graceful stop, which also ends its
 * workerd), then SIGKILL to the group after 15 s.
 */
export async function stopAll(): Promise<void> {
  const signalGroup = (proc: TopologyProcess, signal: NodeJS.Signals) => {
    try {
      process.kill(-proc.pid, signal);
    } catch {
      // gone
    }
  };
  await Promise.all(
    [...running].map(async (proc) => {
      signalGroup(proc, 'SIGTERM');
      await proc.waitForExit(15_000).catch(() => signalGroup(proc, 'SIGKILL'));
    }),
  );
}

/** `count` distinct ports nothing listens on right now. */
export async function freePorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freePort());
  return ports;
}

/** EDGE_PORT, NODE_PORT, NEON_PROXY_PORT on free ports and EMBEDDED_DATA_DIR in `dataDir`. */
export async function topologyEnv(dataDir: string): Promise<Record<string, string>> {
  const [edge, node, proxy] = await freePorts(3);
  return { EDGE_PORT: String(edge), NODE_PORT: String(node), NEON_PROXY_PORT: String(proxy), EMBEDDED_DATA_DIR: dataDir };
}

export async function tempDir(prefix: string): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), `poolgate-${prefix}-`));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/** Holds a port the way another program would. */
export async function occupy(port: number, host = '127.0.0.1'): Promise<{ close(): Promise<void> }> {
  const server = net.createServer((socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  return { close: () => new Promise((resolve) => server.close(() => resolve())) };
}

/** Whether anything accepts connections on the port. */
export function isListening(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Removes the WAL segments of a stopped data dir: PGlite then aborts ("could not locate a valid checkpoint record"). */
export async function damage(dataDir: string): Promise<void> {
  const wal = join(dataDir, 'pg_wal');
  for (const name of await readdir(wal)) if (/^[0-9A-F]{24}$/.test(name)) await rm(join(wal, name));
}

export interface ProcessInfo {
  pid: number;
  ppid: number;
  comm: string;
}

/** One process as Linux's /proc shows it; undefined once it is gone or a zombie (exited, not yet reaped). */
export function processInfo(pid: number): ProcessInfo | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split at the last ')'.
  const close = stat.lastIndexOf(')');
  const [state, ppid] = stat.slice(close + 2).split(' ');
  if (state === 'Z' || state === 'X') return undefined;
  return { pid, ppid: Number(ppid), comm: stat.slice(stat.indexOf('(') + 1, close) };
}

/** Every live process under `pid` (children, their children, …), read from /proc. */
export async function descendants(pid: number): Promise<ProcessInfo[]> {
  const all = (await readdir('/proc')).filter((name) => /^\d+$/.test(name)).map((name) => processInfo(Number(name)));
  const byParent = new Map<number, ProcessInfo[]>();
  for (const p of all) if (p) byParent.set(p.ppid, [...(byParent.get(p.ppid) ?? []), p]);
  const found: ProcessInfo[] = [];
  for (let queue = [pid]; queue.length > 0;) {
    const children = byParent.get(queue.shift()!) ?? [];
    found.push(...children);
    queue.push(...children.map((c) => c.pid));
  }
  return found;
}
