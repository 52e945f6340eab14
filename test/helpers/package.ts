/**
 * What the package tests share: `npm run build` and `npm pack` of this checkout (serialized
 * across test files by a lock, since both write or read the one dist/), the README's titled
 * snippets, and child processes run on the project's Node 24 with a bounded wait and their
 * output kept for the failure message. Nothing here loads poolgate's sources: the package tests
 * must see only what `npm pack` ships.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { createTestDatabase } from './db.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** The titled code blocks of these README sections are what the package tests write and run. */
export const LIBRARY_SECTIONS = ['Use it in your own Hono app', 'Use it from plain Netlify functions'] as const;

/**
 * The environment for a child: the caller's, minus what npm put there for the outer command
 * (an inherited npm_config_local_prefix would point npm at this checkout), with the project's
 * Node 24 first on PATH (so `npm` itself and `#!/usr/bin/env node` scripts run on it).
 */
export function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || /^npm_/i.test(key) || key === 'INIT_CWD' || key === 'NODE_OPTIONS') continue;
    env[key] = value;
  }
  env.PATH = `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ''}`;
  return { ...env, ...extra };
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end within `timeoutMs`; resolves with its exit code and output (never rejects on a non-zero exit). */
export function run(
  command: string,
  args: readonly string[],
  { cwd = ROOT, env = childEnv(), timeoutMs = 120_000 }: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, env, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new Error(`${command} ${args.join(' ')} failed (${err.message}); stdout: ${stdout}; stderr: ${stderr}`));
        return;
      }
      resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
    });
  });
}

/** `run`, failing with the whole output unless the command exits 0. */
export async function runOk(command: string, args: readonly string[], options?: Parameters<typeof run>[2]): Promise<RunResult> {
  const result = await run(command, args, options);
  if (result.code !== 0)
    throw new Error(`${command} ${args.join(' ')} exited ${result.code}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`);
  return result;
}

const LOCK = join(tmpdir(), `poolgate-package-build-${createHash('sha256').update(ROOT).digest('hex').slice(0, 12)}.lock`);
/** A lock directory without a pid file older than this was left by a process that died while taking it. */
const LOCK_STALE_MS = 60_000;

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/**
 * Runs `fn` while holding this checkout's build lock (an atomic mkdir, with the holder's pid
 * inside; a dead holder's lock is taken over). Test files running side by side thus never
 * pack a dist/ that another one is rebuilding.
 */
export async function withBuildLock<T>(fn: () => Promise<T>, timeoutMs = 300_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await mkdir(LOCK);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(await readFile(join(LOCK, 'pid'), 'utf8').catch(() => '0'));
      const age = await stat(LOCK).then(
        (s) => Date.now() - s.mtimeMs,
        () => 0,
      );
      if ((holder > 0 && !alive(holder)) || (holder === 0 && age > LOCK_STALE_MS)) {
        await rm(LOCK, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline)
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${LOCK} (held by process ${holder || '?'})`, { cause: err });
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  try {
    await writeFile(join(LOCK, 'pid'), String(process.pid));
    return await fn();
  } finally {
    await rm(LOCK, { recursive: true, force: true });
  }
}

/** `npm run build` in this checkout (tsc → dist/lib with declarations, then the esbuild bundles). */
export async function buildPackage(): Promise<void> {
  await runOk('npm', ['run', 'build', '--silent'], { timeoutMs: 180_000 });
}

interface PackEntry {
  filename: string;
  files: { path: string }[];
}

/** `npm pack` of the checkout into `destination` (built already: prepack's build is skipped); the tarball's path. */
export async function packPackage(destination: string): Promise<string> {
  const { stdout } = await runOk('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', destination], { timeoutMs: 60_000 });
  const [entry] = JSON.parse(stdout) as PackEntry[];
  if (!entry) throw new Error(`npm pack printed no package: ${stdout}`);
  return join(destination, entry.filename);
}

/** The paths `npm pack` would put into the tarball (relative, `/`-separated). */
export async function packedFiles(): Promise<string[]> {
  const { stdout } = await runOk('npm', ['pack', '--ignore-scripts', '--dry-run', '--json'], { timeoutMs: 60_000 });
  const [entry] = JSON.parse(stdout) as PackEntry[];
  if (!entry) throw new Error(`npm pack --dry-run printed no package: ${stdout}`);
  return entry.files.map((f) => f.path).sort();
}

/**
 * The fenced code blocks whose info string carries `title="…"`, within `sections` (each from its
 * `## ` heading to the next), keyed by title. Fails on a missing section, a repeated title, or a
 * title that is not a plain relative path.
 */
export function titledSnippets(readme: string, sections: readonly string[] = LIBRARY_SECTIONS): Map<string, string> {
  const snippets = new Map<string, string>();
  for (const heading of sections) {
    const start = readme.search(new RegExp(`^## ${heading.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[ \\t]*$`, 'm'));
    if (start < 0) throw new Error(`README.md has no section "## ${heading}"`);
    const rest = readme.slice(start + 3);
    const next = rest.search(/^## /m);
    const section = next < 0 ? rest : rest.slice(0, next);
    for (const [, info, code] of section.matchAll(/^```([^\n]*)\n([\s\S]*?)^```[ \t]*$/gm)) {
      const title = /\btitle="([^"]+)"/.exec(info!)?.[1];
      if (title === undefined) continue;
      if (!/^[\w-]+(?:\/[\w-]+)*\.[\w]+$/.test(title)) throw new Error(`README snippet title "${title}" is not a plain relative file path`);
      if (snippets.has(title)) throw new Error(`README has two snippets titled "${title}"`);
      snippets.set(title, code!);
    }
  }
  return snippets;
}

/** A long-running child process: its output so far, and its exit. */
export interface Child {
  process: ChildProcess;
  /** stdout and stderr as they arrived, interleaved. */
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM (to its group, when it has one), then SIGKILL if it has not exited after `graceMs`. Resolves when it has exited. */
  stop(graceMs?: number): Promise<void>;
  /** What a terminal's Ctrl-C does: SIGINT to every process of its group (started with `group: true`). */
  pressCtrlC(): void;
}

/** Starts `process.execPath args…` (the project's Node 24) in `cwd` with `env`. */
export function startNode(args: readonly string[], options: { cwd: string; env: Record<string, string> }): Child {
  return startProcess(process.execPath, args, options);
}

/**
 * Starts `command args…` in `cwd` with `env`; with `group`, in a process group of its own, as a
 * terminal runs a command (its Ctrl-C signals the whole group: npx, npm's shell and the command).
 */
export function startProcess(
  command: string,
  args: readonly string[],
  { cwd, env, group = false }: { cwd: string; env: Record<string, string>; group?: boolean },
): Child {
  const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'], detached: group });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
    else child.once('close', (code, signal) => resolve({ code, signal }));
  });
  const signal = (name: NodeJS.Signals) => {
    try {
      if (group) process.kill(-child.pid!, name);
      else child.kill(name);
    } catch {
      // gone already
    }
  };
  let stopping: Promise<void> | undefined;
  return {
    process: child,
    output: () => out,
    exited,
    stop(graceMs = 5_000) {
      stopping ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) {
          if (group) signal('SIGKILL'); // whatever of its group outlived it
          return;
        }
        signal('SIGTERM');
        const timer = setTimeout(() => signal('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      })();
      return stopping;
    },
    pressCtrlC: () => signal('SIGINT'),
  };
}

export { freePort, waitFor } from './wait.js';

export { realPostgresUrl } from './db.js';

/**
 * npm flags for installs the tests make: the cache first (this checkout's own install filled it),
 * and a registry request — a cache miss — gives up after one retry and seconds, not minutes, so a
 * machine without a network fails fast instead of looking hung.
 */
export const NPM_OFFLINE_FIRST = [
  '--prefer-offline',
  '--fetch-retries=1',
  '--fetch-retry-mintimeout=1000',
  '--fetch-retry-maxtimeout=3000',
  '--fetch-timeout=15000',
];

export interface ScratchDatabase {
  url: string;
  /** True on TEST_DATABASE_URL's server; false on the embedded PGlite (one backend: no pipelined lanes). */
  real: boolean;
  /** SQL as the admin user on this database, for setting up and checking rows. */
  admin<R extends pg.QueryResultRow = Record<string, unknown>>(text: string, params?: unknown[]): Promise<R[]>;
  drop(): Promise<void>;
}

/**
 * A fresh database of its own (test/helpers/db.ts): on TEST_DATABASE_URL's server, dropped
 * forcibly by `drop()`; without it the embedded PGlite, served from this process to the children.
 */
export async function createScratchDatabase(prefix: string): Promise<ScratchDatabase> {
  const db = await createTestDatabase(prefix);
  let dropping: Promise<void> | undefined;
  return {
    url: db.url,
    real: db.real,
    admin: async <R extends pg.QueryResultRow>(text: string, params: unknown[] = []) => (await db.admin(text, params)).rows as R[],
    drop: () => (dropping ??= db.drop()),
  };
}
