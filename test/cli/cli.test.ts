/**
 * The `poolgate` command as a user runs it: the real bin (src/bin/poolgate.mjs) in a child process
 * on the project's Node, from a folder of the user's own (so `--app` paths start there). Usage
 * errors are one line and the usage, exit 2; failures are one line, exit 1; `migrate --app`
 * applies a module's migrations to DATABASE_URL once (each app its own ids) and warns of an applied
 * one edited since; `serve --app` runs the gateway until SIGTERM.
 * `runCli` in-process covers the rest.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { waitFor } from '../helpers/gateway.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const NODE = join(ROOT, 'node_modules/.bin/node');
const BIN = join(ROOT, 'src/bin/poolgate.mjs');
const { version } = (await import('../../package.json', { with: { type: 'json' } })).default;

let dir: string;
const databases: TestDatabase[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'poolgate-cli-'));
  await writeFile(
    join(dir, 'notes-app.mjs'),
    `export default {
      name: 'notes',
      routes: [],
      migrations: [{ id: 1, name: 'notes', sql: 'CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)' }],
    };\n`,
  );
  await writeFile(
    join(dir, 'edited-notes-app.mjs'),
    `export default {
      name: 'notes',
      routes: [],
      migrations: [{ id: 1, name: 'notes', sql: 'CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL, pinned boolean)' }],
    };\n`,
  );
  await writeFile(
    join(dir, 'tasks-app.mjs'),
    `export default {
      name: 'tasks',
      routes: [],
      migrations: [{ id: 1, name: 'tasks', sql: 'CREATE TABLE tasks (id serial PRIMARY KEY, title text NOT NULL)' }],
    };\n`,
  );
  await writeFile(
    join(dir, 'unnamed-app.mjs'),
    `export default { routes: [], migrations: [{ id: 1, name: 'notes', sql: 'CREATE TABLE notes (id int)' }] };\n`,
  );
  await writeFile(
    join(dir, 'typed-app.ts'),
    `import type { PoolgateApp } from '${join(ROOT, 'src/definition.ts')}';
    const migrations: PoolgateApp['migrations'] = [{ id: 7, name: 'typed', sql: 'CREATE TABLE typed (id int)' }];
    export const app: PoolgateApp = { name: 'typed', routes: [], migrations };\n`,
  );
  await writeFile(
    join(dir, 'broken-app.mjs'),
    `export default { name: 'broken', routes: [], migrations: [{ id: 1, name: 'broken', sql: 'CREAT TABLE x (id int)' }] };\n`,
  );
  await writeFile(join(dir, 'not-an-app.mjs'), `export const something = 1;\n`);
  await writeFile(join(dir, 'empty-app.mjs'), `export default { routes: [] };\n`);
});
afterAll(async () => {
  await Promise.all(databases.map((db) => db.drop()));
  if (dir) await rm(dir, { recursive: true, force: true });
});

const freshDatabase = async () => {
  const db = await createTestDatabase('poolgate_cli');
  databases.push(db);
  return db;
};

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the bin with only PATH and HOME from this environment (no DATABASE_URL unless given). */
function poolgate(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const child = spawn(NODE, [BIN, ...args], {
    cwd: dir,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

/** One line naming the problem, a blank line, then the usage; nothing on stdout. */
function expectUsageError(run: Run, line: RegExp): void {
  const output = JSON.stringify(run);
  expect(run.code, output).toBe(2);
  expect(run.stdout, output).toBe('');
  const [first, blank, usage] = run.stderr.split('\n');
  expect(first, output).toMatch(line);
  expect(blank, output).toBe('');
  expect(usage, output).toBe('usage: poolgate <command> [options]');
}

/** Exit 1, exactly one line on stderr, no stack. */
function expectOneLine(run: Run, line: RegExp): void {
  const output = JSON.stringify(run);
  expect(run.code, output).toBe(1);
  expect(run.stderr.split('\n'), output).toEqual([expect.stringMatching(line), '']);
  expect(run.stdout + run.stderr, output).not.toMatch(/\n\s+at /);
}

describe('poolgate (the bin)', () => {
  it.each([['--help'], ['-h'], ['help'], ['migrate', '--help']])('%s prints the usage on stdout, exit 0', async (...args) => {
    const run = await poolgate(args);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toBe('');
    expect(run.stdout).toMatch(/^usage: poolgate <command> \[options\]\n/);
    for (const command of ['migrate', 'serve', 'dev', 'neon-proxy', 'stats', 'doctor', 'help'])
      expect(run.stdout).toMatch(new RegExp(`^  ${command}\\b`, 'm'));
  });

  it('--version prints the package version', async () => {
    const run = await poolgate(['--version']);
    expect(run).toEqual({ code: 0, stdout: `${version}\n`, stderr: '' });
  });

  it('an unknown command: one line naming it, the usage, exit 2', async () => {
    expectUsageError(await poolgate(['frobnicate']), /^poolgate: unknown command "frobnicate"$/);
  });

  it('an unknown flag: one line naming it, the usage, exit 2', async () => {
    expectUsageError(await poolgate(['migrate', '--frob']), /^poolgate: Unknown option '--frob'$/);
  });

  it('a flag without its value, serve or dev without --app, no command: the same', async () => {
    expectUsageError(await poolgate(['migrate', '--app']), /^poolgate: Option '--app <value>' argument missing$/);
    expectUsageError(await poolgate(['serve']), /^poolgate: serve needs --app <module>/);
    expectUsageError(await poolgate(['dev']), /^poolgate: dev needs --app <module> \(the app to run\)$/);
    expectUsageError(await poolgate([]), /^poolgate: no command given$/);
  });

  it('migrate without DATABASE_URL: one line, exit 1', async () => {
    expectOneLine(
      await poolgate(['migrate']),
      /^poolgate: invalid configuration: DATABASE_URL: is required to migrate \(the database to apply the schema to\)$/,
    );
  });

  it("migrate --app applies the module's migrations once, then says the schema is up to date", async () => {
    const db = await freshDatabase();
    const first = await poolgate(['migrate', '--app', 'notes-app.mjs'], { DATABASE_URL: db.url });
    expect(first, JSON.stringify(first)).toEqual({ code: 0, stdout: 'poolgate: applied migrations 1\n', stderr: '' });
    const second = await poolgate(['migrate', '--app', './notes-app.mjs'], { DATABASE_URL: db.url });
    expect(second, JSON.stringify(second)).toEqual({ code: 0, stdout: 'poolgate: schema up to date\n', stderr: '' });
    const tables = await db.admin("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename");
    expect(tables.rows.map((r) => r.tablename)).toEqual([
      'notes',
      'poolgate_forward_nonces',
      'poolgate_idempotency_keys',
      'poolgate_migrations',
    ]);
  });

  it('migrate --app for a second app on the same database applies its own migration 1', async () => {
    const db = await freshDatabase();
    const notes = await poolgate(['migrate', '--app', 'notes-app.mjs'], { DATABASE_URL: db.url });
    expect(notes, JSON.stringify(notes)).toEqual({ code: 0, stdout: 'poolgate: applied migrations 1\n', stderr: '' });
    const tasks = await poolgate(['migrate', '--app', 'tasks-app.mjs'], { DATABASE_URL: db.url });
    expect(tasks, JSON.stringify(tasks)).toEqual({ code: 0, stdout: 'poolgate: applied migrations 1\n', stderr: '' });
    expect((await db.admin("SELECT to_regclass('tasks') IS NOT NULL AS ok")).rows[0].ok).toBe(true);
  });

  it('migrate --app warns on stderr of an applied migration edited since, runs nothing and exits 0', async () => {
    const db = await freshDatabase();
    expect((await poolgate(['migrate', '--app', 'notes-app.mjs'], { DATABASE_URL: db.url })).code).toBe(0);
    const run = await poolgate(['migrate', '--app', 'edited-notes-app.mjs'], { DATABASE_URL: db.url });
    expect(run, JSON.stringify(run)).toEqual({
      code: 0,
      stdout: 'poolgate: schema up to date\n',
      stderr:
        'poolgate: warning: migration 1 ("notes") of app "notes" was edited after it was applied and is not run again; restore its text and put the change in a new migration (id 2)\n',
    });
  });

  it('migrate --app with migrations but no app name: one line naming the fix, exit 1', async () => {
    expectOneLine(
      await poolgate(['migrate', '--app', 'unnamed-app.mjs'], { DATABASE_URL: 'postgres://x@127.0.0.1:1/x' }),
      /^poolgate: an app with migrations needs a name \(its migrations are recorded under it\): defineApp\(\{ name: 'notes', … \}\)$/,
    );
  });

  it('migrate --app takes a .ts module (its export named app)', async () => {
    const db = await freshDatabase();
    const run = await poolgate(['migrate', '--app', 'typed-app.ts'], { DATABASE_URL: db.url });
    expect(run, JSON.stringify(run)).toEqual({ code: 0, stdout: 'poolgate: applied migrations 7\n', stderr: '' });
  });

  it("migrate without --app creates poolgate's own tables only", async () => {
    const db = await freshDatabase();
    const run = await poolgate(['migrate'], { DATABASE_URL: db.url });
    expect(run, JSON.stringify(run)).toEqual({ code: 0, stdout: 'poolgate: schema up to date\n', stderr: '' });
    expect((await db.admin("SELECT to_regclass('poolgate_idempotency_keys') IS NOT NULL AS ok")).rows[0].ok).toBe(true);
  });

  it('migrate --app with a missing file: one line naming it, exit 1', async () => {
    expectOneLine(
      await poolgate(['migrate', '--app', 'nowhere/app.mjs'], { DATABASE_URL: 'postgres://x@127.0.0.1:1/x' }),
      /^poolgate: no app module at nowhere\/app\.mjs \(looked for .*nowhere\/app\.mjs\)$/,
    );
  });

  it('dev --app with a missing file: the same one line, exit 1, nothing started', async () => {
    expectOneLine(
      await poolgate(['dev', '--app', 'nowhere/app.ts'], { EDGE_PORT: '0', NODE_PORT: '0', NEON_PROXY_PORT: '0' }),
      /^poolgate: no app module at nowhere\/app\.ts \(looked for .*nowhere\/app\.ts\)$/,
    );
  });

  it('migrate --app with a module that exports no app: one line, exit 1', async () => {
    expectOneLine(
      await poolgate(['migrate', '--app', 'not-an-app.mjs'], { DATABASE_URL: 'postgres://x@127.0.0.1:1/x' }),
      /^poolgate: not-an-app\.mjs exports no poolgate app/,
    );
  });

  it('a failing migration: one line naming the step and the server error, exit 1, nothing applied', async () => {
    const db = await freshDatabase();
    expectOneLine(
      await poolgate(['migrate', '--app', 'broken-app.mjs'], { DATABASE_URL: db.url }),
      /^poolgate: migration 1 \("broken"\) failed: syntax error at or near "CREAT" \(42601\); nothing of this run was applied$/,
    );
    expect((await db.admin("SELECT to_regclass('poolgate_migrations') IS NULL AS none")).rows[0].none).toBe(true);
  });

  it('neon-proxy is handed its own arguments', async () => {
    const run = await poolgate(['neon-proxy', '--database-url', 'postgres://u@127.0.0.1:5432/x', '--port', 'abc']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^neon-proxy: --port must be a number from 0 to 65535 \(usage: poolgate neon-proxy /);
  });

  it('serve --app runs the Node gateway for the module until SIGTERM', async () => {
    const db = await freshDatabase();
    const child = spawn(NODE, [BIN, 'serve', '--app', 'empty-app.mjs'], {
      cwd: dir,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', DATABASE_URL: db.url, PORT: '0', LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (output += d.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    try {
      const url = await waitFor(() => /Node gateway on (http:\/\/[\d.]+:\d+)/.exec(output)?.[1], {
        timeoutMs: 30_000,
        what: `the gateway to start (output so far: ${output})`,
      });
      expect((await fetch(`${url}/health`)).status).toBe(200);
      child.kill('SIGTERM');
      expect(await exited, output).toBe(0);
      expect(output).toMatch(/poolgate: SIGTERM, draining/);
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('runCli (in-process)', () => {
  const capture = (env: Record<string, string | undefined> = {}) => {
    const out = { stdout: '', stderr: '' };
    const io = {
      stdout: { write: (text: string) => (out.stdout += text) },
      stderr: { write: (text: string) => (out.stderr += text) },
      env,
      cwd: dir,
    };
    return { out, io };
  };

  it('returns the exit code and writes to the given streams', async () => {
    const help = capture();
    expect(await runCli(['help'], help.io)).toBe(0);
    expect(help.out.stdout).toMatch(/^usage: poolgate/);
    const unknown = capture();
    expect(await runCli(['deploy'], unknown.io)).toBe(2);
    expect(unknown.out.stderr).toMatch(/^poolgate: unknown command "deploy"\n\nusage: poolgate/);
    const extra = capture();
    expect(await runCli(['migrate', 'now'], extra.io)).toBe(2);
    expect(extra.out.stderr).toMatch(/^poolgate: unexpected argument "now" after migrate\n/);
  });

  it('reads DATABASE_URL from the given env and --app from the given folder', async () => {
    const missing = capture({});
    expect(await runCli(['migrate'], missing.io)).toBe(1);
    expect(missing.out.stderr).toBe(
      'poolgate: invalid configuration: DATABASE_URL: is required to migrate (the database to apply the schema to)\n',
    );
    const db = await freshDatabase();
    const applied = capture({ DATABASE_URL: db.url });
    expect(await runCli(['migrate', '--app', 'notes-app.mjs'], applied.io)).toBe(0);
    expect(applied.out).toEqual({ stdout: 'poolgate: applied migrations 1\n', stderr: '' });
  });

  it('an unreachable database: the start-up line naming where, exit 1', async () => {
    const run = capture({ DATABASE_URL: 'postgres://nobody@127.0.0.1:1/nothing' });
    expect(await runCli(['migrate'], run.io)).toBe(1);
    expect(run.out.stderr).toMatch(/^poolgate: connection refused to 127\.0\.0\.1:1; is PostgreSQL running there\? check DATABASE_URL\n$/);
  });
});
