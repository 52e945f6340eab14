/**
 * What `npm start` says when it cannot start, and what it offers to try when it can (issue 10,
 * case 3). A busy port used to give "set PORT" (which the topology ignores) or a workerd fatal
 * with a stack; now each busy port is one line naming the port and the variable that moves it,
 * checked before anything starts (the data dir is not even created). A damaged data dir is named
 * as such, not `start-up failed (RuntimeError)`. On DATABASE_URL without SEED=true the demo user's
 * curl (a 404 there) is no longer printed: every curl printed answers 200.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from '../../src/local/embedded.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { damage, occupy, spawnTopology, stopAll, tempDir, topologyEnv, type TopologyProcess } from './topology-process.js';

const dirs: { remove(): Promise<void> }[] = [];
const newDataDir = async () => {
  const dir = await tempDir('messages');
  dirs.push(dir);
  return join(dir.path, 'pglite');
};
afterAll(async () => {
  await stopAll();
  await Promise.all(dirs.map((d) => d.remove()));
});

/** Exit 1, exactly one line on stderr, equal to `line`, and no stack anywhere. */
async function expectOneLine(proc: TopologyProcess, line: string): Promise<void> {
  const exit = await proc.waitForExit(90_000);
  const output = `stdout: ${proc.stdout()}\nstderr: ${proc.stderr()}`;
  expect(exit, output).toEqual({ code: 1, signal: null });
  expect(proc.stderr(), output).toBe(`${line}\n`);
  expect(proc.stdout() + proc.stderr()).not.toMatch(/\n\s+at |RuntimeError|workerd\/|\.c\+\+/);
}

describe('a busy port: one line naming the port and its variable, before anything starts', () => {
  for (const variable of ['EDGE_PORT', 'NODE_PORT', 'NEON_PROXY_PORT'] as const) {
    it(`${variable}`, async () => {
      const dataDir = await newDataDir();
      const env = await topologyEnv(dataDir);
      const port = Number(env[variable]);
      const holder = await occupy(port);
      try {
        const proc = spawnTopology(env);
        await expectOneLine(proc, `poolgate: port ${port} on 127.0.0.1 is in use; set ${variable} to use another`);
        expect(proc.stdout()).not.toMatch(/embedded PGlite on/);
        expect(existsSync(join(dataDir, 'PG_VERSION'))).toBe(false); // the database was never opened
        expect(existsSync(join(dataDir, 'poolgate.lock'))).toBe(false);
      } finally {
        await holder.close();
      }
    });
  }

  it('NODE_PORT busy with DATABASE_URL set: the same line, before connecting to the database', async () => {
    const env = await topologyEnv(await newDataDir());
    const holder = await occupy(Number(env.NODE_PORT));
    try {
      const proc = spawnTopology({ ...env, DATABASE_URL: 'postgres://nobody@127.0.0.1:1/nothing' });
      await expectOneLine(proc, `poolgate: port ${env.NODE_PORT} on 127.0.0.1 is in use; set NODE_PORT to use another`);
    } finally {
      await holder.close();
    }
  });

  it('two variables on one port: one line naming both', async () => {
    const env = await topologyEnv(await newDataDir());
    const proc = spawnTopology({ ...env, NODE_PORT: env.EDGE_PORT! });
    await expectOneLine(proc, `poolgate: EDGE_PORT and NODE_PORT are both ${env.EDGE_PORT}; set one of them to another port`);
  });
});

describe('the configuration and the data folder are checked before anything opens', () => {
  it('a bad value (POOL_MAX=abc): one line naming it, and the database was never opened', async () => {
    const dataDir = await newDataDir();
    const proc = spawnTopology({ ...(await topologyEnv(dataDir)), POOL_MAX: 'abc' });
    await expectOneLine(
      proc,
      'poolgate: invalid configuration: POOL_MAX: must be a whole number from 1 to 1000, got "abc" (not a whole number)',
    );
    expect(proc.stdout()).toBe('');
    expect(existsSync(dataDir)).toBe(false);
  });

  it('EMBEDDED_DATA_DIR naming a file: one line with its path and the fix', async () => {
    const file = join(await newDataDir(), '..', 'a-file');
    writeFileSync(file, '');
    const proc = spawnTopology(await topologyEnv(file));
    await expectOneLine(proc, `poolgate: ${file} is a file, not a folder; set EMBEDDED_DATA_DIR to a folder (it is created if missing)`);
  });
});

describe('a damaged data dir', () => {
  it('one line saying so and what to do, not start-up failed (RuntimeError)', async () => {
    const dataDir = await newDataDir();
    await (await startEmbeddedPostgres({ dataDir })).stop();
    await damage(dataDir);
    const proc = spawnTopology(await topologyEnv(dataDir));
    await expectOneLine(proc, `poolgate: ${dataDir} cannot be opened (damaged?): move it aside or delete it to start fresh`);
  }, 150_000); // two PGlite starts: slow on a loaded machine
});

describe('the curls printed on DATABASE_URL', () => {
  let db: TestDatabase;
  afterAll(async () => {
    await stopAll();
    await db?.drop();
  });

  /** The URLs of the `try  curl …` lines: each must answer 200. */
  async function expectEveryCurlWorks(stdout: string): Promise<string[]> {
    const urls = [...stdout.matchAll(/^poolgate: try {2}curl (\S+)$/gm)].map((m) => m[1]!);
    expect(urls.length, stdout).toBeGreaterThan(0);
    for (const url of urls) {
      const res = await fetch(url, { signal: AbortSignal.timeout(15_000) });
      expect(res.status, `${url}: ${await res.text()}`).toBe(200);
    }
    return urls;
  }

  it('without SEED=true: no demo-user curl, a hint to set SEED=true, and every curl printed answers', async () => {
    db = await createTestDatabase('poolgate_topology_seed');
    const env = { ...(await topologyEnv(await newDataDir())), DATABASE_URL: db.url, PORT: '9999' };
    const proc = spawnTopology(env);
    await proc.waitForLine(/^poolgate: try /);
    await proc.waitForLine(/SEED=true/, 1_000);
    const out = proc.stdout();
    expect(out).not.toMatch(/curl \S+\/api\/users\//);
    expect(out).toMatch(/^poolgate: no demo data on DATABASE_URL; set SEED=true to load it/m);
    expect(out).toMatch(/^poolgate: PORT is not used by npm start; its ports are EDGE_PORT, NODE_PORT and NEON_PROXY_PORT$/m);
    await expectEveryCurlWorks(out);
    process.kill(proc.pid, 'SIGTERM');
    expect(await proc.waitForExit(30_000)).toEqual({ code: 0, signal: null });
  });

  it('with SEED=true: the demo user is loaded, and its curl is printed and answers', async () => {
    const env: Record<string, string> = { ...(await topologyEnv(await newDataDir())), DATABASE_URL: db.url, SEED: 'true' };
    const proc = spawnTopology(env);
    await proc.waitForLine(/^poolgate: try /);
    const urls = await expectEveryCurlWorks(proc.stdout());
    expect(urls).toEqual([`http://127.0.0.1:${env.EDGE_PORT}/api/users/00000000-0000-4000-8000-000000000001`]);
    process.kill(proc.pid, 'SIGTERM');
    expect(await proc.waitForExit(30_000)).toEqual({ code: 0, signal: null });
  });
});
