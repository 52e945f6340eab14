/**
 * The dashboard's files through the real Node app assembly (createNodeApp from parseConfig), in
 * milliseconds with `app.request`: no database is opened (the pool connects lazily and nothing
 * here queries). What is pinned: the page and its files with their content types and CSP; a page
 * with no inline script or style and only relative links (it works under any mount prefix); the
 * DASHBOARD switch and its default by environment; production refusing the page where nobody may
 * read /stats; and assets.ts matching the sources it is generated from.
 */
import { readFile } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../config.js';
import { fitness } from '../../fitness/app.js';
import { DASHBOARD_ASSETS, dashboardAssetsModule } from '../../local/build.js';
import { createNodeApp, type NodeApp } from '../../runtime/node-app.js';

const TOKEN = 'dashboard-test-token-0123456789';
const SECRET = 'dashboard-test-forward-secret-0123456789abcdef';
const built: NodeApp[] = [];

function appWith(env: Record<string, string>) {
  const config = parseConfig({ DATABASE_URL: 'postgres://nobody@127.0.0.1:9/none', LOG_LEVEL: 'silent', ...env });
  const node = createNodeApp(config, { app: fitness, scope: 'test', connectionString: config.databaseUrl!, log: () => {} });
  built.push(node);
  // app.request(), as a Hono app has it: the built app is typed as the fetch it is.
  return { request: async (path: string, init?: RequestInit) => node.app.fetch(new Request(`http://gateway${path}`, init)) };
}

afterEach(async () => {
  await Promise.all(built.splice(0).map((b) => b.database.close()));
});

/** The page's script and stylesheet references, in document order. */
const referencesOf = (html: string) =>
  [...html.matchAll(/<(?:script\b[^>]*\bsrc|link rel="stylesheet"[^>]*\bhref)="([^"]+)"/g)].map((m) => m[1]!);

describe('GET /dashboard in development', () => {
  it('serves the page and each file it names, with its content type, the CSP and nosniff', async () => {
    const app = appWith({ POOLGATE_ENV: 'development' });
    const page = await app.request('/dashboard');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    const csp = page.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("default-src 'none'");
    expect(csp).not.toMatch(/unsafe-(inline|eval)/);
    const html = await page.text();

    const refs = referencesOf(html);
    expect(refs.length).toBe(4);
    const expected: Record<string, string> = { js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };
    for (const ref of refs) {
      const url = new URL(ref, 'http://gateway/dashboard');
      const res = await app.request(url.pathname + url.search);
      expect(res.status, ref).toBe(200);
      expect(res.headers.get('content-type'), ref).toBe(expected[url.pathname.split('.').pop()!]);
      expect(res.headers.get('x-content-type-options'), ref).toBe('nosniff');
      expect((await res.text()).length, ref).toBeGreaterThan(500);
    }
    const uplot = await (await app.request('/dashboard/uplot.js')).text();
    expect(uplot).toMatch(/^\/\*!\nThe MIT License/);
    expect(uplot).toContain('var uPlot=');
  });

  it('keeps to what a strict CSP allows: no inline script, style or handler, and only relative links', async () => {
    const html = await (await appWith({ POOLGATE_ENV: 'development' }).request('/dashboard')).text();
    for (const tag of html.match(/<script\b[^>]*>/g) ?? []) expect(tag).toMatch(/\bsrc="/);
    expect(html).not.toMatch(/<style\b|\sstyle="|\son[a-z]+="/i);
    // Relative: under /ops/dashboard the same page loads /ops/dashboard/app.js and polls /ops/stats.
    for (const ref of referencesOf(html)) expect(ref).toMatch(/^dashboard\//);
    const client = await (await appWith({ POOLGATE_ENV: 'development' }).request('/dashboard/app.js')).text();
    expect(client).toContain(`fetch("stats"`);
    expect(client).not.toMatch(/\beval\(|new Function\(|innerHTML/);
  });

  it('DASHBOARD=off turns it off', async () => {
    const app = appWith({ POOLGATE_ENV: 'development', DASHBOARD: 'off' });
    expect((await app.request('/dashboard')).status).toBe(404);
    expect((await app.request('/dashboard/uplot.js')).status).toBe(404);
  });
});

describe('GET /dashboard in production', () => {
  it('is off unless DASHBOARD=on', async () => {
    const app = appWith({ FORWARD_SECRET: SECRET, OPS_TOKEN: TOKEN });
    for (const path of ['/dashboard', '/dashboard/app.js', '/dashboard/uplot.js']) expect((await app.request(path)).status, path).toBe(404);
  });

  it('with DASHBOARD=on but no OPS_TOKEN on a signed-only gateway: refused, naming OPS_TOKEN', async () => {
    const app = appWith({ FORWARD_SECRET: SECRET, DASHBOARD: 'on' });
    for (const path of ['/dashboard', '/dashboard/app.js']) {
      const res = await app.request(path);
      expect(res.status, path).toBe(401);
      expect(((await res.json()) as { error: { message: string } }).error.message).toContain('OPS_TOKEN');
    }
  });

  it('with DASHBOARD=on and OPS_TOKEN: the page is served, its figures still need the token', async () => {
    const app = appWith({ FORWARD_SECRET: SECRET, DASHBOARD: 'on', OPS_TOKEN: TOKEN });
    expect((await app.request('/dashboard')).status).toBe(200);
    expect((await app.request('/stats')).status).toBe(401);
    expect((await app.request('/stats', { headers: { authorization: `Bearer ${TOKEN}` } })).status).toBe(200);
  });
});

it('assets.ts is what `npm run build:dashboard` makes of its sources (uplot, client.ts, page.css)', async () => {
  expect(await readFile(DASHBOARD_ASSETS, 'utf8'), 'run npm run build:dashboard').toBe(await dashboardAssetsModule());
});
