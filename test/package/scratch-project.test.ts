/**
 * poolgate as a consumer gets it: `npm run build`, `npm pack`, then a scratch project in a temp
 * folder made of exactly the README's titled snippets — its package.json (installed into: the
 * tarball, hono and zod, as the README says), its tsconfig.json, app.ts (its own Hono app with a
 * read and a transactional route), worker.ts, server.ts, delete-note.ts and
 * functions/notes-report.ts. Those files are compiled with a stricter tsconfig extending the
 * README's (the package's own declarations included), and run against PostgreSQL (without
 * TEST_DATABASE_URL the embedded PGlite, served from this process): on Node alone (`poolgate
 * migrate`, `node server.ts`), as a plain function, and at the edge in real workerd (the worker
 * bundled from the scratch with esbuild) through the package's Neon proxy, forwarding its writes,
 * signed, to the scratch's Node gateway. Last, the local loop: `npx poolgate dev --app ./app.ts`
 * first names the optional peers it lacks and the command that adds them, then (once added) runs
 * all of that itself on the embedded default, until Ctrl-C.
 */
import { edge as edgeBundle } from '../../src/local/build.js';
import { Validator } from '@seriousme/openapi-schema-validator';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { build } from 'esbuild';
import { Miniflare } from 'miniflare';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workerdWorker } from '../../src/local/workerd.js';
import {
  ROOT,
  buildPackage,
  childEnv,
  createScratchDatabase,
  freePort,
  NPM_OFFLINE_FIRST,
  packPackage,
  run,
  runOk,
  startNode,
  startProcess,
  titledSnippets,
  waitFor,
  withBuildLock,
  type Child,
  type ScratchDatabase,
} from '../helpers/package.js';
import { PUBLIC_TYPES_TS } from './consumer-types.js';

/** The README's titled snippets; the scratch project is made of exactly these (plus test glue). */
const SNIPPETS = [
  'package.json',
  'tsconfig.json',
  'app.ts',
  'worker.ts',
  'server.ts',
  'netlify/edge-functions/api.ts',
  'netlify/functions/gateway.ts',
  'delete-note.ts',
  'functions/notes-report.ts',
];
/** What a consumer's install must not pull in: poolgate's development tools. */
const DEV_ONLY = [
  'tsx',
  'esbuild',
  'miniflare',
  'wrangler',
  '@electric-sql',
  'vitest',
  'typescript',
  'deno',
  'node',
  'autocannon',
  'fast-check',
];
const REQUEST_TIMEOUT_MS = 20_000;

/**
 * The README's tsconfig.json, made stricter with options that only add errors: strict, no
 * `@types/*` at all (the snippets need only the DOM's Request/Response, and a workerd consumer has
 * no @types/node), and skipLibCheck off so poolgate's shipped declarations are checked too (hono's
 * and zod's pass the same check). What compiles here compiles with the README's file alone.
 */
const TSCONFIG_STRICT = {
  extends: './tsconfig.json',
  compilerOptions: {
    types: [],
    strict: true,
    noUncheckedIndexedAccess: true,
    skipLibCheck: false,
  },
  include: ['*.ts', 'functions/*.ts', 'netlify/**/*.ts'],
};

/** Calls the README's plain function the way Netlify would, prints what it answered, ends the pool. */
const RUN_REPORT_MJS = `const { default: notesReport } = await import('./functions/notes-report.ts');
const response = await notesReport(new Request(process.argv[2]));
const body = await response.json();
process.stdout.write(JSON.stringify({ status: response.status, body }));
const { closePool } = await import('poolgate/functions');
await closePool();
`;

let work: string;
let scratch: string;
let tarball: string;
const children: Child[] = [];

const versionOf = async (name: string) =>
  (JSON.parse(await readFile(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'poolgate-package-'));
  tarball = await withBuildLock(async () => {
    await buildPackage();
    return packPackage(work);
  });
  scratch = join(work, 'scratch');
  await mkdir(scratch);
  const snippets = titledSnippets(await readFile(join(ROOT, 'README.md'), 'utf8'));
  expect([...snippets.keys()].sort(), 'the README library sections hold exactly these titled snippets').toEqual([...SNIPPETS].sort());
  // The README's package.json first: npm installs into it.
  await writeFile(join(scratch, 'package.json'), snippets.get('package.json')!);
  // The repo's exact hono and zod, so npm's cache serves them (the tarball's own dependencies too).
  const [hono, zod] = await Promise.all([versionOf('hono'), versionOf('zod')]);
  await runOk(
    'npm',
    ['install', ...NPM_OFFLINE_FIRST, '--no-audit', '--no-fund', '--loglevel=error', tarball, `hono@${hono}`, `zod@${zod}`],
    {
      cwd: scratch,
      timeoutMs: 150_000,
    },
  );

  for (const [title, code] of snippets) {
    if (title === 'package.json') continue;
    await mkdir(dirname(join(scratch, title)), { recursive: true });
    await writeFile(join(scratch, title), code);
  }
  await writeFile(join(scratch, 'tsconfig.strict.json'), `${JSON.stringify(TSCONFIG_STRICT, null, 2)}\n`);
  await writeFile(join(scratch, 'public-types.ts'), PUBLIC_TYPES_TS);
  await writeFile(join(scratch, 'run-report.mjs'), RUN_REPORT_MJS);
}, 240_000);

afterAll(async () => {
  await Promise.all(children.map((child) => child.stop(2_000)));
  if (work) await rm(work, { recursive: true, force: true });
});

/** Starts `node args…` in the scratch project; stopped (SIGTERM, then SIGKILL) after the suite at the latest. */
function startInScratch(args: string[], env: Record<string, string>): Child {
  const child = startNode(args, { cwd: scratch, env: childEnv(env) });
  children.push(child);
  return child;
}

/** `node node_modules/.bin/poolgate …` in the scratch: the installed bin, on the project's Node 24. */
const poolgate = (args: string[], env: Record<string, string> = {}) =>
  run(process.execPath, ['node_modules/.bin/poolgate', ...args], { cwd: scratch, env: childEnv(env), timeoutMs: 60_000 });

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  body: any;
}

/** One bounded request, body read and parsed as JSON when it is JSON. */
async function ask(url: string, init: { method?: string; headers?: Record<string, string>; json?: unknown } = {}): Promise<Answer> {
  const headers = { ...init.headers, ...(init.json !== undefined ? { 'content-type': 'application/json' } : {}) };
  const res = await fetch(url, {
    method: init.method ?? 'GET',
    headers,
    ...(init.json !== undefined ? { body: JSON.stringify(init.json) } : {}),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await res.text();
  let body: unknown;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  return { status: res.status, headers: res.headers, text, body };
}

/** The `desc` of Server-Timing's `db` entry, e.g. "pg-pool 1q". */
const dbDesc = (serverTiming: string | null) => /(?:^|,\s*)db;[^,]*desc="([^"]*)"/.exec(serverTiming ?? '')?.[1];

interface RouteStats {
  method: string;
  route: string;
  count: number;
  statusClasses: Record<string, number>;
  clients: Record<string, number>;
}

/** The per-route entry of a /stats body. */
const routeIn = (stats: { routes?: RouteStats[] } | undefined, method: string, route: string) =>
  stats?.routes?.find((r) => r.method === method && r.route === route);

/** Waits for the gateway's "Node gateway on <url>" line; fails with its output if it exits first. */
async function gatewayUrl(child: Child): Promise<string> {
  let exited = false;
  void child.exited.then(() => (exited = true));
  return waitFor(
    () => {
      const url = /Node gateway on (http:\/\/[\d.]+:\d+)/.exec(child.output())?.[1];
      if (!url && exited) throw new Error(`node server.ts exited: ${child.output()}`);
      return url;
    },
    { timeoutMs: 30_000, what: 'node server.ts to listen' },
  );
}

describe('the installed package', () => {
  it('comes from the npm pack tarball: a copy in node_modules, the compiled library, no sources', async () => {
    const manifest = JSON.parse(await readFile(join(scratch, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    expect(manifest.dependencies.poolgate).toMatch(/^file:.*poolgate-\d+\.\d+\.\d+\.tgz$/);
    const installed = join(scratch, 'node_modules/poolgate');
    expect((await lstat(installed)).isSymbolicLink()).toBe(false);
    const resolved = await realpath(createRequire(join(scratch, 'package.json')).resolve('poolgate'));
    expect(resolved).toBe(await realpath(join(installed, 'dist/lib/index.js')));
    expect(await readdir(join(installed, 'src'), { recursive: true })).toEqual(['bin', join('bin', 'poolgate.mjs')]);
    const dist = await readdir(join(installed, 'dist'));
    expect(dist).toEqual(['lib']);
    expect(await readdir(join(installed, 'dist/lib'))).not.toContain('fitness');
  });

  it("pulls in poolgate's runtime dependencies and peers, none of its development tools", async () => {
    const modules = await readdir(join(scratch, 'node_modules'));
    for (const name of ['poolgate', 'hono', 'zod', 'pg', '@neondatabase', '@hono', 'ws']) expect(modules, name).toContain(name);
    for (const name of DEV_ONLY) expect(modules, name).not.toContain(name);
  });

  it('`node server.ts` without DATABASE_URL (no PGlite installed) exits with one line naming both ways out', async () => {
    const child = startInScratch(['server.ts'], { DATABASE_URL: '', PORT: String(await freePort()) });
    expect(await child.exited).toEqual({ code: 1, signal: null });
    expect(child.output().trim()).toBe(
      'poolgate: invalid configuration: DATABASE_URL: is required (a postgres:// URL); or, for local development, install the embedded PGlite: npm i -D @electric-sql/pglite @electric-sql/pglite-socket',
    );
  });

  it('its bin answers --help and --version on Node 24', async () => {
    const help = await poolgate(['--help']);
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^usage: poolgate <command>/);
    for (const command of ['migrate', 'serve', 'dev', 'neon-proxy']) expect(help.stdout).toContain(command);
    const version = await poolgate(['--version']);
    const { version: expected } = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(version.stdout.trim()).toBe(expected);
  });
});

describe('types, in a strict consumer', () => {
  interface Diagnostic {
    file: string;
    line: string;
  }
  let checked: Promise<Diagnostic[]> | undefined;
  /** One `tsc -p` of the scratch (the repo's TypeScript), its errors by file. */
  const typecheck = () =>
    (checked ??= run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.strict.json', '--pretty', 'false'], {
      cwd: scratch,
      timeoutMs: 150_000,
    }).then(({ code, stdout, stderr }) => {
      const diagnostics = stdout
        .split('\n')
        .filter((line) => /^\S.*\(\d+,\d+\): error TS\d+/.test(line))
        .map((line) => ({ file: line.slice(0, line.indexOf('(')), line }));
      if (code !== 0 && diagnostics.length === 0) throw new Error(`tsc exited ${code} without diagnostics: ${stdout} ${stderr}`);
      return diagnostics;
    }));
  const lines = (diagnostics: Diagnostic[]) => diagnostics.map((d) => d.line);

  it('the README snippets compile with strict on', async () => {
    const diagnostics = await typecheck();
    expect(lines(diagnostics.filter((d) => SNIPPETS.includes(d.file)))).toEqual([]);
  }, 180_000);

  it("poolgate's shipped declarations type-check (skipLibCheck off) with only hono and zod installed", async () => {
    const diagnostics = await typecheck();
    expect(lines(diagnostics.filter((d) => d.file.startsWith('node_modules/')))).toEqual([]);
  }, 180_000);

  it('every subpath export has types, and what must not compile does not (each @ts-expect-error meets its error)', async () => {
    const diagnostics = await typecheck();
    // An unused directive is TS2578: the public type it guarded has loosened.
    expect(lines(diagnostics.filter((d) => d.file === 'public-types.ts'))).toEqual([]);
    expect(PUBLIC_TYPES_TS.match(/@ts-expect-error/g)?.length).toBeGreaterThanOrEqual(15);
    expect(diagnostics.every((d) => d.file === 'public-types.ts' || SNIPPETS.includes(d.file) || d.file.startsWith('node_modules/'))).toBe(
      true,
    );
  }, 180_000);
});

describe('on Node alone: poolgate migrate, then node server.ts', () => {
  let db: ScratchDatabase;
  let server: Child;
  let url: string;
  /** Requests sent per route, by status class, for the /ops/stats check. */
  const sent = { get: { '2xx': 0, '4xx': 0 }, post: { '2xx': 0, '4xx': 0 } };
  /** Where a read runs: a pipelined lane; on PGlite (one backend for every connection) the pool. */
  const readsOn = () => (db.real ? 'pg-pipeline' : 'pg-pool');

  beforeAll(async () => {
    db = await createScratchDatabase('poolgate_pkg_node');
  }, 30_000);

  afterAll(async () => {
    await server?.stop();
    await db?.drop();
  });

  it('`poolgate migrate --app ./app.ts` creates the app’s table, then finds nothing to do', async () => {
    const first = await poolgate(['migrate', '--app', './app.ts'], { DATABASE_URL: db.url });
    expect(first.code, `${first.stdout}${first.stderr}`).toBe(0);
    expect(first.stdout).toMatch(/^poolgate: applied migrations [\d, ]+$/m);
    expect(await db.admin("SELECT to_regclass('notes') AS t")).toEqual([{ t: 'notes' }]);
    const again = await poolgate(['migrate', '--app', './app.ts'], { DATABASE_URL: db.url });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/^poolgate: schema up to date$/m);
  });

  it('`node server.ts` starts on PORT and is ready', async () => {
    const port = await freePort();
    server = startInScratch(['server.ts'], {
      DATABASE_URL: db.url,
      PORT: String(port),
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      POOL_MIN: '1',
    });
    url = await gatewayUrl(server);
    expect(url).toBe(`http://127.0.0.1:${port}`);
    expect(server.output()).toContain(`Node ${process.version}`);
    const ready = await ask(`${url}/ops/health/ready`);
    expect(ready.status, ready.text).toBe(200);
    expect(ready.body.status).toBe('ready');
  });

  it('POST /api/notes (transactional) → 201 with the row on the pg Pool; GET /api/notes/:id (read) → 200 on a pipelined lane (PGlite: the pool)', async () => {
    const created = await ask(`${url}/api/notes`, { method: 'POST', json: { text: 'written on Node' } });
    sent.post['2xx']++;
    expect(created.status, created.text).toBe(201);
    expect(created.headers.get('content-type')).toMatch(/^application\/json/);
    expect(created.body).toEqual({ id: expect.any(Number), text: 'written on Node' });
    expect(dbDesc(created.headers.get('server-timing'))).toBe('pg-pool 1q');
    expect(await db.admin('SELECT id, text FROM notes')).toEqual([created.body]);

    const read = await ask(`${url}/api/notes/${created.body.id}`);
    sent.get['2xx']++;
    expect(read.status, read.text).toBe(200);
    expect(read.body).toEqual(created.body);
    expect(read.headers.get('server-timing')).toMatch(/(^|,\s*)total;dur=[\d.]+/);
    expect(dbDesc(read.headers.get('server-timing'))).toBe(`${readsOn()} 1q`);
  });

  it('answers bad input 400 validation_failed and an unknown note 404 not_found, as JSON', async () => {
    for (const id of ['abc', '0', '-3']) {
      const bad = await ask(`${url}/api/notes/${id}`);
      sent.get['4xx']++;
      expect(bad.status, `${id}: ${bad.text}`).toBe(400);
      expect(bad.body.error).toMatchObject({ code: 'validation_failed', requestId: expect.any(String) });
    }
    const missing = await ask(`${url}/api/notes/987654`);
    sent.get['4xx']++;
    expect(missing.status, missing.text).toBe(404);
    expect(missing.body.error.code).toBe('not_found');
    expect(missing.headers.get('content-type')).toMatch(/^application\/json/);

    const empty = await ask(`${url}/api/notes`, { method: 'POST', json: { text: '' } });
    sent.post['4xx']++;
    expect(empty.status, empty.text).toBe(400);
    expect(empty.body.error.code).toBe('validation_failed');
    expect(await db.admin('SELECT count(*)::int AS n FROM notes')).toEqual([{ n: 1 }]);
  });

  it('serves its own Hono routes around poolgate: GET / and a valid /openapi.json', async () => {
    const home = await ask(`${url}/`);
    expect(home.status).toBe(200);
    expect(home.text).toBe('notes');
    const openapi = await ask(`${url}/openapi.json`);
    expect(openapi.status).toBe(200);
    const validation = await new Validator().validate(structuredClone(openapi.body) as Record<string, unknown>);
    expect(validation.errors ?? []).toEqual([]);
    expect(validation.valid).toBe(true);
    expect(openapi.body.info).toEqual({ title: 'Notes', version: '1.0.0' });
    expect(Object.keys(openapi.body.paths).sort()).toEqual(['/api/notes', '/api/notes/{id}']);
    expect(Object.keys(openapi.body.paths['/api/notes'])).toEqual(['post']);
    expect(Object.keys(openapi.body.paths['/api/notes/{id}'])).toEqual(['get']);
  });

  it('answers what none of its routes serves as poolgate does: 404 route_not_found, or 405 method_not_allowed + Allow', async () => {
    const none = await ask(`${url}/api/nothing-here`);
    expect(none.status, none.text).toBe(404);
    expect(none.headers.get('content-type')).toMatch(/^application\/json/);
    expect(none.body.error).toMatchObject({ code: 'route_not_found', requestId: expect.any(String) });
    const cases = [
      ['DELETE', '/api/notes/1', 'GET, HEAD'],
      ['PUT', '/ops/health', 'GET, HEAD'],
      ['POST', '/', 'GET, HEAD'],
    ] as const;
    for (const [method, path, allow] of cases) {
      const res = await ask(`${url}${path}`, { method });
      expect(res.status, `${method} ${path}: ${res.text}`).toBe(405);
      expect(res.headers.get('allow')).toBe(allow);
      expect(res.body.error.code).toBe('method_not_allowed');
    }
  });

  it('/ops/stats counts each of its routes, by status class, reads on the lanes and writes on the pool', async () => {
    const stats = await ask(`${url}/ops/stats`);
    expect(stats.status, stats.text).toBe(200);
    const get = routeIn(stats.body, 'GET', '/api/notes/:id');
    const post = routeIn(stats.body, 'POST', '/api/notes');
    expect(get, stats.text).toMatchObject({ count: sent.get['2xx'] + sent.get['4xx'], statusClasses: sent.get });
    expect(post, stats.text).toMatchObject({ count: sent.post['2xx'] + sent.post['4xx'], statusClasses: sent.post });
    expect(get!.clients[readsOn()]).toBeGreaterThanOrEqual(sent.get['2xx']);
    expect(post!.clients['pg-pool']).toBe(sent.post['2xx']);
    // One request at a time: one lane (none on PGlite); the pool has the rest of its share (POOL_MAX 20 on a quiet server).
    const lanes = db.real ? 1 : 0;
    const share = (stats.body.pool.budget?.share as number | undefined) ?? 20;
    expect(stats.body.pool, stats.text).toMatchObject({ max: share - lanes, total: expect.any(Number), pipeline: { lanes } });
  });

  it('SIGTERM drains and exits 0', async () => {
    server.process.kill('SIGTERM');
    const exit = await server.exited;
    expect(exit, server.output()).toEqual({ code: 0, signal: null });
    expect(server.output()).toMatch(/poolgate: stopped/);
  });
});

describe('the plain function (functions/notes-report.ts)', () => {
  let db: ScratchDatabase;

  beforeAll(async () => {
    db = await createScratchDatabase('poolgate_pkg_fn');
    await runOk(process.execPath, ['node_modules/.bin/poolgate', 'migrate', '--app', './app.ts'], {
      cwd: scratch,
      env: childEnv({ DATABASE_URL: db.url }),
      timeoutMs: 60_000,
    });
    await db.admin("INSERT INTO notes (text) VALUES ('first'), ('second')");
  }, 90_000);

  afterAll(async () => {
    await db?.drop();
  });

  /** Imports the function in a child Node (DATABASE_URL set) and calls it with `url`. */
  async function callReport(url: string): Promise<{ status: number; body: any }> {
    const { stdout } = await runOk(process.execPath, ['run-report.mjs', url], {
      cwd: scratch,
      env: childEnv({ DATABASE_URL: db.url, LOG_LEVEL: 'silent' }),
      timeoutMs: 60_000,
    });
    return JSON.parse(stdout) as { status: number; body: any };
  }

  it('adds a note in one transaction (exactly once), then reports the count, the latest rows, health and stats', async () => {
    const { status, body } = await callReport('http://x/?add=hello');
    expect(status).toBe(200);
    expect(body.count).toBe(3);
    expect(body.latest).toEqual([
      { id: 3, text: 'hello (edited)' },
      { id: 2, text: 'second' },
      { id: 1, text: 'first' },
    ]);
    expect(body.health).toMatchObject({ healthy: true, latencyMs: expect.any(Number) });
    // Both statements of the transaction took effect, once: one row, already edited.
    expect(await db.admin("SELECT text FROM notes WHERE text LIKE 'hello%'")).toEqual([{ text: 'hello (edited)' }]);

    const calls = body.stats.routes as RouteStats[];
    expect(routeIn(body.stats, 'executeTransaction', 'write')).toMatchObject({ count: 1, statusClasses: { '2xx': 1 } });
    expect(routeIn(body.stats, 'executeQuery', 'read')).toMatchObject({ count: 1, statusClasses: { '2xx': 1 } });
    expect(routeIn(body.stats, 'sql', 'read')).toMatchObject({ count: 1, statusClasses: { '2xx': 1 } });
    // Served by the Node pg clients: the pool, or for a read a pipelined lane once the first has opened (in the background).
    const servedBy = (r: RouteStats) => Object.entries(r.clients).filter(([, n]) => n > 0);
    expect(calls.every((r) => servedBy(r).every(([client]) => client === 'pg-pool' || client === 'pg-pipeline'))).toBe(true);
    expect(calls.every((r) => servedBy(r).reduce((sum, [, n]) => sum + n, 0) === r.count)).toBe(true);
    expect(routeIn(body.stats, 'executeTransaction', 'write')?.clients).toMatchObject({ 'pg-pool': 1 });
    expect(body.stats.pool).toMatchObject({ max: expect.any(Number) });
  });

  it('without ?add only reads: nothing is written', async () => {
    const { status, body } = await callReport('http://x/');
    expect(status).toBe(200);
    expect(body.count).toBe(3);
    expect(body.latest[0]).toEqual({ id: 3, text: 'hello (edited)' });
    expect(routeIn(body.stats, 'executeTransaction', 'write')).toBeUndefined();
    expect(await db.admin('SELECT count(*)::int AS n FROM notes')).toEqual([{ n: 3 }]);
  });
});

describe('at the edge: worker.ts in workerd → Neon proxy (reads), Node gateway (writes)', () => {
  let db: ScratchDatabase;
  let gateway: Child;
  let proxy: Child;
  let mf: Miniflare | undefined;
  let nodeUrl: string;
  let proxyUrl: string;
  let edge: string;
  const forwardSecret = randomBytes(32).toString('base64url');
  const opsToken = randomBytes(24).toString('base64url');
  const workerdOutput: string[] = [];

  /** The Node gateway's /ops/stats (it accepts only signed traffic, so its stats need OPS_TOKEN). */
  const nodeStats = async () => {
    const res = await ask(`${nodeUrl}/ops/stats`, { headers: { authorization: `Bearer ${opsToken}` } });
    expect(res.status, res.text).toBe(200);
    return res.body as { routes: RouteStats[] };
  };

  beforeAll(async () => {
    db = await createScratchDatabase('poolgate_pkg_edge');
    // The scratch's own gateway (it migrates on start), accepting only signed forwards.
    const nodePort = await freePort();
    gateway = startInScratch(['server.ts'], {
      DATABASE_URL: db.url,
      PORT: String(nodePort),
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      POOL_MIN: '1',
      FORWARD_SECRET: forwardSecret,
      OPS_TOKEN: opsToken,
    });
    // The package's Neon proxy, from its bin.
    const proxyPort = await freePort();
    proxy = startInScratch(['node_modules/.bin/poolgate', 'neon-proxy', '--database-url', db.url, '--port', String(proxyPort)], {});
    nodeUrl = await gatewayUrl(gateway);
    proxyUrl = await waitFor(() => /neon-proxy: listening on (http:\/\/[\d.]+:\d+)/.exec(proxy.output())?.[1], {
      timeoutMs: 30_000,
      what: `the Neon proxy to listen (${proxy.output()})`,
    });
    expect(proxyUrl).toBe(`http://127.0.0.1:${proxyPort}`);

    // worker.ts bundled as src/local/build.ts bundles the edge entries.
    const bundlePath = join(work, 'edge', 'worker.js');
    await build({
      entryPoints: [join(scratch, 'worker.ts')],
      absWorkingDir: scratch,
      outfile: bundlePath,
      ...edgeBundle,
    });
    mf = new Miniflare({
      host: '127.0.0.1',
      port: 0,
      handleStructuredLogs: ({ message }) => void workerdOutput.push(message),
      workers: [
        workerdWorker('edge', bundlePath, {
          // The edge's Postgres URL is the database's own; NEON_PROXY_URL sends the Neon driver to the local proxy.
          DATABASE_URL: db.url,
          NEON_PROXY_URL: proxyUrl,
          NODE_FUNCTION_URL: nodeUrl,
          FORWARD_SECRET: forwardSecret,
          OPS_TOKEN: opsToken,
        }),
      ],
    });
    edge = (await mf.ready).origin;
  }, 120_000);

  afterAll(async () => {
    await mf?.dispose().catch(() => {});
    await gateway?.stop();
    await proxy?.stop();
    await db?.drop();
  });

  let note: { id: number; text: string };

  it('forwards POST /api/notes (transactional), signed, to the Node gateway, which writes it on its pg Pool', async () => {
    const res = await ask(`${edge}/api/notes`, { method: 'POST', json: { text: 'written at the edge' } });
    expect(res.status, `${res.text}\n${workerdOutput.join('\n')}`).toBe(201);
    note = res.body;
    expect(note).toEqual({ id: expect.any(Number), text: 'written at the edge' });
    const timing = res.headers.get('server-timing') ?? '';
    expect(timing).toMatch(/(^|,\s*)forward;dur=[\d.]+/);
    expect(dbDesc(timing)).toBe('forwarded 0q');
    expect(timing).toMatch(/(^|,\s*)node-db;dur=[\d.]+;desc="pg-pool \d+q"/);
    expect(timing).toMatch(/(^|,\s*)node-total;dur=[\d.]+/);
    expect(await db.admin('SELECT id, text FROM notes')).toEqual([note]);

    const post = routeIn(await nodeStats(), 'POST', '/api/notes');
    expect(post).toMatchObject({ count: 1, statusClasses: { '2xx': 1 } });
    expect(post!.clients['pg-pool']).toBe(1);
  });

  it('serves GET /api/notes/:id (read) itself, over Neon HTTP through the proxy; nothing reaches the gateway', async () => {
    const res = await ask(`${edge}/api/notes/${note.id}`);
    expect(res.status, res.text).toBe(200);
    expect(res.body).toEqual(note);
    expect(dbDesc(res.headers.get('server-timing'))).toBe('neon-http 1q');
    const missing = await ask(`${edge}/api/notes/987654`);
    expect(missing.status, missing.text).toBe(404);
    expect(missing.body.error.code).toBe('not_found');
    expect(routeIn(await nodeStats(), 'GET', '/api/notes/:id')).toBeUndefined();
  });

  it('answers a wrong method at the edge 405 method_not_allowed + Allow, as JSON, without forwarding it', async () => {
    const res = await ask(`${edge}/api/notes`, { method: 'PUT', json: { text: 'x' } });
    expect(res.status, res.text).toBe(405);
    expect(res.headers.get('allow')).toBe('POST');
    expect(res.body.error.code).toBe('method_not_allowed');
  });

  it('checks a write’s body at the edge: 400 validation_failed, never forwarded', async () => {
    const res = await ask(`${edge}/api/notes`, { method: 'POST', json: { text: '' } });
    expect(res.status, res.text).toBe(400);
    expect(res.body.error.code).toBe('validation_failed');
    expect(routeIn(await nodeStats(), 'POST', '/api/notes')?.count).toBe(1);
    expect(await db.admin('SELECT count(*)::int AS n FROM notes')).toEqual([{ n: 1 }]);
  });

  it("the edge's /ops/stats shows both routes: the write forwarded, the reads on Neon HTTP", async () => {
    // Outside development the edge's figures need OPS_TOKEN, as the gateway's do.
    expect((await ask(`${edge}/ops/stats`)).status).toBe(401);
    const res = await ask(`${edge}/ops/stats`, { headers: { authorization: `Bearer ${opsToken}` } });
    expect(res.status, res.text).toBe(200);
    const post = routeIn(res.body, 'POST', '/api/notes');
    const get = routeIn(res.body, 'GET', '/api/notes/:id');
    expect(post, res.text).toMatchObject({ count: 2, statusClasses: { '2xx': 1, '4xx': 1 } });
    expect(post!.clients.forwarded).toBe(1);
    expect(get, res.text).toMatchObject({ count: 2, statusClasses: { '2xx': 1, '4xx': 1 } });
    expect(get!.clients['neon-http']).toBe(2);
  });

  it('the Node gateway refuses an unsigned POST (401 unauthorized) and writes nothing; its stats need OPS_TOKEN', async () => {
    const unsigned = await ask(`${nodeUrl}/api/notes`, { method: 'POST', json: { text: 'not signed' } });
    expect(unsigned.status, unsigned.text).toBe(401);
    expect(unsigned.body.error.code).toBe('unauthorized');
    expect(await db.admin('SELECT count(*)::int AS n FROM notes')).toEqual([{ n: 1 }]);
    expect((await ask(`${nodeUrl}/ops/stats`)).status).toBe(401);
  });
});

describe('poolgate dev --app ./app.ts: the whole topology for the scratch app, one command', () => {
  /** `npx poolgate …` in the scratch, as the README says, to its end. */
  const npx = (args: string[], env: Record<string, string> = {}) =>
    run('npx', ['poolgate', ...args], { cwd: scratch, env: childEnv(env), timeoutMs: 60_000 });
  /** EDGE_PORT, NODE_PORT and NEON_PROXY_PORT on ports free a moment ago. */
  const devPorts = async () => ({
    EDGE_PORT: String(await freePort()),
    NODE_PORT: String(await freePort()),
    NEON_PROXY_PORT: String(await freePort()),
  });
  let installCommand: string[];

  it('without its optional peers: one line naming them and the exact `npm i -D …` to run, exit 1, nothing started', async () => {
    const embedded = await npx(['dev', '--app', './app.ts'], await devPorts());
    expect(embedded.code, `${embedded.stdout}${embedded.stderr}`).toBe(1);
    expect(embedded.stdout).toBe('');
    expect(embedded.stderr).toMatch(
      /^poolgate: poolgate dev needs esbuild, miniflare, @electric-sql\/pglite and @electric-sql\/pglite-socket in your project \(PGlite is the embedded database when DATABASE_URL is unset\); add them with: npm i -D esbuild@\S+ miniflare@\S+ @electric-sql\/pglite@\S+ @electric-sql\/pglite-socket@\S+\n$/,
    );
    expect(existsSync(join(scratch, '.data'))).toBe(false);

    const onDatabaseUrl = await npx(['dev', '--app', './app.ts'], {
      ...(await devPorts()),
      DATABASE_URL: 'postgres://nobody@127.0.0.1:1/x',
    });
    expect(onDatabaseUrl.code).toBe(1);
    expect(onDatabaseUrl.stderr).toMatch(
      /^poolgate: poolgate dev needs esbuild and miniflare in your project; add them with: npm i -D esbuild@\S+ miniflare@\S+\n$/,
    );
    installCommand = /npm i -D .+$/.exec(embedded.stderr.trim())![0].split(' ');
  });

  describe('once the command it printed has added them', () => {
    let dev: Child;
    let ports: Record<'EDGE_PORT' | 'NODE_PORT' | 'NEON_PROXY_PORT', string>;
    let edge: string;
    let nodeUrl: string;
    let embeddedUrl: string;
    /** The note written through the edge. */
    let note: { id: number; text: string };

    /**
     * Starts `command args…` in the scratch in a process group of its own, as a terminal runs it
     * (its Ctrl-C reaches every process: npx, npm's shell and poolgate); resolves once it is ready.
     */
    async function startDev(command: string, args: string[], env: Record<string, string>): Promise<{ child: Child; edge: string }> {
      const child = startProcess(command, args, { cwd: scratch, env: childEnv(env), group: true });
      children.push(child);
      let exited = false;
      void child.exited.then(() => (exited = true));
      const url = await waitFor(
        () => {
          const found = /^poolgate: ready; your app at the edge is (http:\/\/\S+) \(Ctrl-C stops everything\)$/m.exec(child.output())?.[1];
          if (!found && exited) throw new Error(`${command} ${args.join(' ')} exited: ${child.output()}`);
          return found;
        },
        { timeoutMs: 120_000, intervalMs: 100, what: `${command} ${args.join(' ')} to be ready` },
      );
      return { child, edge: url };
    }

    beforeAll(async () => {
      expect(installCommand, 'the line above named the install command').toBeDefined();
      const [npm, ...args] = installCommand;
      await runOk(npm!, [...args, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: scratch, timeoutMs: 240_000 });
      ports = await devPorts();
      ({ child: dev, edge } = await startDev('npx', ['poolgate', 'dev', '--app', './app.ts'], ports));
      nodeUrl = /Node gateway on (http:\/\/\S+)/.exec(dev.output())![1]!;
      embeddedUrl = `postgres://postgres@127.0.0.1:${/embedded PGlite on 127\.0\.0\.1:(\d+)/.exec(dev.output())![1]}/postgres`;
    }, 300_000);

    it('prints the address of every part, on the ports EDGE_PORT, NODE_PORT and NEON_PROXY_PORT; the database is the embedded default', () => {
      const out = dev.output();
      expect(edge).toBe(`http://127.0.0.1:${ports.EDGE_PORT}`);
      expect(nodeUrl).toBe(`http://127.0.0.1:${ports.NODE_PORT}`);
      expect(out).toMatch(new RegExp(`^poolgate: local Neon proxy on http://127\\.0\\.0\\.1:${ports.NEON_PROXY_PORT}$`, 'm'));
      expect(out).toMatch(
        new RegExp(`^poolgate: edge app \\(workerd\\) on ${edge} → reads via Neon proxy, writes forwarded to ${nodeUrl}$`, 'm'),
      );
      expect(out).toMatch(/^poolgate: embedded PGlite on 127\.0\.0\.1:\d+ \(data in \.data\/pglite\)$/m);
      expect(existsSync(join(scratch, '.data/pglite/PG_VERSION'))).toBe(true);
      expect(out).toMatch(/^poolgate: applied migrations [\d, ]+$/m);
    });

    it('serves its read at the edge, over Neon HTTP through the local proxy, on the migrated database', async () => {
      const missing = await ask(`${edge}/api/notes/4242`);
      expect(missing.status, `${missing.text}\n${dev.output()}`).toBe(404);
      expect(missing.body.error.code).toBe('not_found');
      expect(dbDesc(missing.headers.get('server-timing'))).toBe('neon-http 1q');
    });

    it('forwards a write through the edge, signed, to the Node gateway, which applies it; the edge then reads it back', async () => {
      const created = await ask(`${edge}/api/notes`, { method: 'POST', json: { text: 'written in poolgate dev' } });
      expect(created.status, `${created.text}\n${dev.output()}`).toBe(201);
      expect(created.body).toEqual({ id: expect.any(Number), text: 'written in poolgate dev' });
      note = created.body;
      const timing = created.headers.get('server-timing') ?? '';
      expect(dbDesc(timing)).toBe('forwarded 0q');
      expect(timing).toMatch(/(^|,\s*)node-db;dur=[\d.]+;desc="pg-pool \d+q"/);

      const client = new pg.Client({ connectionString: embeddedUrl });
      await client.connect();
      try {
        expect((await client.query('SELECT id, text FROM notes')).rows).toEqual([created.body]);
      } finally {
        await client.end();
      }
      const read = await ask(`${edge}/api/notes/${created.body.id}`);
      expect(read.status, read.text).toBe(200);
      expect(read.body).toEqual(created.body);
      expect(dbDesc(read.headers.get('server-timing'))).toBe('neon-http 1q');

      // The Node gateway saw the write (and only the write): its stats are open in development.
      const stats = await ask(`${nodeUrl}/ops/stats`);
      expect(stats.status, stats.text).toBe(200);
      expect(routeIn(stats.body, 'POST', '/api/notes')).toMatchObject({ count: 1, statusClasses: { '2xx': 1 } });
      expect(routeIn(stats.body, 'GET', '/api/notes/:id')).toBeUndefined();
    });

    it('Ctrl-C stops everything gracefully: the gateway drains, every part stops, poolgate exits 0', async () => {
      dev.pressCtrlC();
      const exit = await dev.exited;
      const out = dev.output();
      expect(out).toMatch(/^poolgate: SIGINT, stopping/m);
      for (const line of [
        'Node gateway drained, pool ended',
        'edge app (workerd) stopped',
        'Neon proxy stopped',
        'embedded PGlite stopped',
      ])
        expect(out).toContain(`poolgate: ${line}`);
      expect(out).toMatch(/^poolgate: stopped$/m); // printed just before poolgate's process.exit(0)
      expect(out).not.toMatch(/exiting now|not cleanly/);
      // npx runs the bin through `sh -c`; where /bin/sh is dash, that shell dies of the same Ctrl-C
      // once poolgate has exited 0, and npm re-raises it on itself (the next test sees the 0 itself).
      expect(exit.code === 0 || exit.signal === 'SIGINT', `${JSON.stringify(exit)}\n${out}`).toBe(true);
      for (const port of Object.values(ports)) expect(await isListening(Number(port)), `port ${port}`).toBe(false);
    });

    it('run as the bin itself, Ctrl-C exits 0; the embedded data is still there the next time', async () => {
      const again = await devPorts();
      const { child, edge: url } = await startDev(process.execPath, ['node_modules/.bin/poolgate', 'dev', '--app', './app.ts'], again);
      expect(child.output()).not.toMatch(/applied migrations/);
      const read = await ask(`${url}/api/notes/${note.id}`);
      expect(read.status, read.text).toBe(200);
      expect(read.body).toEqual(note);
      child.pressCtrlC();
      expect(await child.exited, child.output()).toEqual({ code: 0, signal: null });
      expect(child.output()).toMatch(/^poolgate: stopped$/m);
      for (const port of Object.values(again)) expect(await isListening(Number(port)), `port ${port}`).toBe(false);
    });

    it('a busy port: the same one line as npm start, naming the port and its variable, exit 1', async () => {
      const busy = await devPorts();
      const holder = createServer((socket) => socket.destroy());
      await new Promise<void>((resolve) => holder.listen(Number(busy.EDGE_PORT), '127.0.0.1', resolve));
      try {
        const result = await npx(['dev', '--app', './app.ts'], busy);
        expect(result.code, `${result.stdout}${result.stderr}`).toBe(1);
        expect(result.stderr).toBe(`poolgate: port ${busy.EDGE_PORT} on 127.0.0.1 is in use; set EDGE_PORT to use another\n`);
      } finally {
        await new Promise((resolve) => holder.close(resolve));
      }
    });
  });
});

/** Whether anything accepts connections on the port. */
function isListening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
