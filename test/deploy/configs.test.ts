/**
 * The toolchain and deploy configs say what is true: the tests run on the Node 24 the project
 * brings, `npm run build` makes every folder netlify.toml names, and wrangler.toml runs at the
 * same compatibility date as the local workerd and ships no development variables.
 */
import { titledSnippets, withBuildLock } from '../helpers/package.js';
import { execFile } from 'node:child_process';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { COMPATIBILITY_DATE } from '../../src/local/workerd.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** `key = "value"` pairs of a TOML file, comments dropped; enough for these flat configs. */
async function tomlStrings(file: string): Promise<{ key: string; value: string }[]> {
  const text = await readFile(join(ROOT, file), 'utf8');
  return [...text.replace(/#.*$/gm, '').matchAll(/^\s*([\w.]+)\s*=\s*"([^"]*)"/gm)].map((m) => ({ key: m[1]!, value: m[2]! }));
}
const valueOf = (pairs: { key: string; value: string }[], key: string) => pairs.find((p) => p.key === key)?.value;

describe('the runtime the project brings', () => {
  it('runs the tests on Node 24, whatever the system Node is', async () => {
    expect(process.versions.node.split('.')[0]).toBe('24');
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as {
      engines: { node: string };
      devDependencies: Record<string, string>;
    };
    expect(pkg.devDependencies.node).toMatch(/^24\./);
    expect(pkg.engines.node).toBe('>=24');
  });
});

const BUILT = [
  'dist/public/index.html',
  'dist/netlify/edge-functions/poolgate.js',
  'dist/netlify/functions/gateway.mjs',
  'dist/lib/fitness/entries/node.js',
] as const;

describe('netlify.toml', () => {
  /** What the build made, read while the build lock is held (a package test may rebuild dist/ right after). */
  const sizes = new Map<string, number>();
  let gateway: { default: unknown; config?: unknown };

  beforeAll(async () => {
    // Under the package tests' lock: they must never pack a dist/ this build is rewriting.
    await withBuildLock(async () => {
      await run('npm', ['run', 'build'], { cwd: ROOT, timeout: 120_000 });
      for (const file of BUILT) sizes.set(file, (await stat(join(ROOT, file))).size);
      gateway = (await import(pathToFileURL(join(ROOT, 'dist/netlify/functions/gateway.mjs')).href)) as typeof gateway;
    });
  }, 300_000);

  it('names only folders that `npm run build` makes, each holding its entry', async () => {
    const pairs = await tomlStrings('netlify.toml');
    expect(valueOf(pairs, 'command')).toBe('npm run build');
    const folders = ['publish', 'edge_functions', 'directory'].map((key) => valueOf(pairs, key));
    expect(folders).toEqual(['dist/public', 'dist/netlify/edge-functions', 'dist/netlify/functions']);
    for (const file of BUILT.slice(0, 3)) expect(sizes.get(file), file).toBeGreaterThan(0);
    for (const p of pairs.filter((p) => p.key === 'function')) expect(p.value).toBe('poolgate');
  });

  // Netlify serves a function with a config.path only at that path: the edge's forwards to
  // NODE_FUNCTION_URL/api/… (/.netlify/functions/gateway/api/…) would then reach nothing.
  it('deploys the Node function at /.netlify/functions/gateway, sub-paths included: no config.path here or in the README', async () => {
    const fn = gateway;
    expect(typeof fn.default).toBe('function');
    expect(fn.config).toBeUndefined();
    const readme = titledSnippets(await readFile(join(ROOT, 'README.md'), 'utf8'));
    expect(readme.get('netlify/functions/gateway.ts')).toContain('/.netlify/functions/gateway');
    expect(readme.get('netlify/functions/gateway.ts')).not.toMatch(/export\s+const\s+config\b/);
    const toml = await readFile(join(ROOT, 'netlify.toml'), 'utf8');
    expect(toml).toMatch(/^#\s+NODE_FUNCTION_URL\s+https:\/\/<your-site>\/\.netlify\/functions\/gateway$/m);
    expect(toml.replace(/#.*$/gm, '')).not.toMatch(/\.netlify\/functions|\[\[redirects\]\]/);
  });

  it('builds on Node 24 (and so runs the Node function on it)', async () => {
    expect(valueOf(await tomlStrings('netlify.toml'), 'NODE_VERSION')).toBe('24');
  });

  it('the build also emits the Node gateway as plain JavaScript', () => {
    expect(sizes.get('dist/lib/fitness/entries/node.js')).toBeGreaterThan(0);
  });
});

describe('wrangler.toml', () => {
  it('runs at the compatibility date the local workerd and the tests use', async () => {
    expect(valueOf(await tomlStrings('wrangler.toml'), 'compatibility_date')).toBe(COMPATIBILITY_DATE);
    expect(COMPATIBILITY_DATE >= '2026-07-01').toBe(true);
  });

  it('ships no development variables into a deploy', async () => {
    const keys = (await tomlStrings('wrangler.toml')).map((p) => p.key);
    for (const dev of ['NEON_PROXY_URL', 'POOLGATE_ENV', 'NODE_FUNCTION_URL', 'DATABASE_URL', 'FORWARD_SECRET'])
      expect(keys).not.toContain(dev);
  });
});
