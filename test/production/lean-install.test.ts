/**
 * The production install as the README documents it: `npm ci --omit=dev` from the committed
 * lockfile, the gateway compiled by tsc (what `npm run build` emits into dist/lib/), and
 * `node dist/lib/runtime/migrate.js` + `node dist/lib/fitness/entries/node.js` — no tsx, esbuild, miniflare, wrangler or PGlite on disk.
 * It must serve /health/ready and the API on a real database, and without DATABASE_URL say in
 * one line what is missing rather than reach for the embedded (development-only) database.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { waitFor } from '../helpers/gateway.js';
import { NPM_OFFLINE_FIRST } from '../helpers/package.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DEV_ONLY = ['tsx', 'esbuild', 'miniflare', 'wrangler', '@electric-sql', 'deno', 'autocannon', 'fast-check', 'vitest', 'node'];

let dir: string;
let db: TestDatabase;
const children: ChildProcess[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'poolgate-prod-'));
  await copyFile(join(ROOT, 'package.json'), join(dir, 'package.json'));
  await copyFile(join(ROOT, 'package-lock.json'), join(dir, 'package-lock.json'));
  // The production dependencies have no install scripts; the dev-only `node` package (which has one) is omitted.
  // From npm's cache, where this checkout's own install put them (no registry needed).
  await run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error', ...NPM_OFFLINE_FIRST], {
    cwd: dir,
    timeout: 180_000,
  });
  await run(join(ROOT, 'node_modules/.bin/tsc'), ['-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(dir, 'dist/lib')], {
    cwd: ROOT,
    timeout: 120_000,
  });
  db = await createTestDatabase('poolgate_prod');
}, 300_000);

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  await db?.drop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Starts the built gateway with plain node (the Node running this suite: the project's Node 24). */
function serve(env: Record<string, string>): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, ['dist/lib/fitness/entries/node.js'], {
    cwd: dir,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', PORT: '0', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  return { child, output: () => out, exited };
}

describe('the lean production install', () => {
  it('holds only the runtime dependencies: none of the development tools', async () => {
    const installed = [...(await readdir(join(dir, 'node_modules'))), ...(await readdir(join(dir, 'node_modules/.bin')).catch(() => []))];
    for (const name of DEV_ONLY) expect(installed, name).not.toContain(name);
    const { stdout } = await run('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: dir });
    expect(stdout).not.toMatch(/node_modules\/(tsx|esbuild|miniflare|wrangler|@electric-sql)(\/|$)/m);
    // The peers a server needs come with it (npm installs peer dependencies).
    for (const name of ['pg', 'hono', 'zod']) expect(stdout).toMatch(new RegExp(`node_modules/${name}$`, 'm'));
  });

  it('migrates the database with plain node (npm run migrate), once', async () => {
    const migrate = () =>
      run(process.execPath, ['dist/lib/runtime/migrate.js', '--app', 'dist/lib/fitness/app.js'], {
        cwd: dir,
        env: { PATH: process.env.PATH ?? '', DATABASE_URL: db.url },
      });
    expect((await migrate()).stdout).toMatch(/^poolgate: applied migrations 1$/m);
    expect((await migrate()).stdout).toMatch(/^poolgate: schema up to date$/m);
  });

  it('serves /health/ready and the API on a real database with plain node', async () => {
    const gateway = serve({ DATABASE_URL: db.url, POOL_MIN: '1' });
    const url = await waitFor(() => /Node gateway on (http:\/\/[\d.]+:\d+)/.exec(gateway.output())?.[1], {
      timeoutMs: 30_000,
      what: 'the built gateway to start',
    });
    expect(gateway.output()).toContain(`Node ${process.version}`);
    const ready = await fetch(`${url}/health/ready`);
    expect(ready.status).toBe(200);
    const created = await fetch(`${url}/api/users`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: `prod-${Date.now()}@example.com`, name: 'Prod' }),
    });
    expect(created.status).toBe(201);
    const user = (await created.json()) as { id: string; name: string };
    const read = await fetch(`${url}/api/users/${user.id}`);
    expect(read.status).toBe(200);
    expect(((await read.json()) as { name: string }).name).toBe('Prod');
    gateway.child.kill('SIGTERM');
    expect(await gateway.exited).toBe(0);
  });

  it('without DATABASE_URL exits with one line naming it (the embedded default is not installed)', async () => {
    const gateway = serve({});
    expect(await gateway.exited).toBe(1);
    const lines = gateway.output().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toBe(
      'poolgate: invalid configuration: DATABASE_URL: is required (a postgres:// URL); or, for local development, install the embedded PGlite: npm i -D @electric-sql/pglite @electric-sql/pglite-socket',
    );
  });
});
