/**
 * The live dashboard in a real browser (issue 24): Debian's Chromium, driven by playwright-core,
 * opens /dashboard on a Node gateway in development while the fitness API is under traffic, and
 * waits until the charts have drawn polls with data — requests per second, latency, database time,
 * acquire wait and the pool, with a line per route — then saves a screenshot (its path is printed).
 * The page runs under its strict CSP: any violation or page error fails the test. A production
 * gateway (signed-only, DASHBOARD=on, OPS_TOKEN) serves the page, which asks for the token and,
 * once given, polls /stats with it. Skipped, by name, where no Chromium is installed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mixedLoad } from '../helpers/fitness-load.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { ROOT } from '../helpers/package.js';

/** Debian's chromium (apt-get install chromium); never a browser downloaded by playwright. */
function findChromium(): string | undefined {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  for (const name of ['chromium', 'chromium-browser']) {
    try {
      const path = execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim();
      if (path && existsSync(path)) return path;
    } catch {
      // Not on PATH: try the next name.
    }
  }
  return undefined;
}

const executablePath = findChromium();
const named = (name: string) => (executablePath ? name : `${name} — skipped: no chromium on PATH (apt-get install chromium)`);
const TOKEN = 'dashboard-browser-token-0123456789';
const SECRET = 'dashboard-browser-forward-secret-0123456789abcdef';
const SHOT_DIR = join(ROOT, 'test-results', 'dashboard');

/** What the page reports of one chart: polls with a value, its series, the largest value drawn. */
const chart = (page: Page, id: string) =>
  page.$eval(`#${id}`, (el) => ({
    points: Number((el as HTMLElement).dataset.points),
    series: Number((el as HTMLElement).dataset.series ?? 0),
    max: Number((el as HTMLElement).dataset.max ?? 0),
    canvases: el.querySelectorAll('canvas').length,
  }));

/** Every CSP violation and page error, recorded from before the page's first script. */
async function watch(page: Page): Promise<string[]> {
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) problems.push(`console: ${msg.text()}`);
  });
  page.on('response', (res) => {
    if (res.status() >= 400) problems.push(`${res.status()} ${new URL(res.url()).pathname}`);
  });
  await page.addInitScript(() =>
    document.addEventListener('securitypolicyviolation', (e) => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`)),
  );
  return problems;
}

describe.skipIf(!executablePath)(named('the dashboard in Chromium'), () => {
  let browser: Browser;
  let dev: TestGateway;
  let prod: TestGateway;

  beforeAll(async () => {
    dev = await startTestGateway({ POOLGATE_ENV: 'development' });
    prod = await startTestGateway({ POOLGATE_ENV: '', FORWARD_SECRET: SECRET, OPS_TOKEN: TOKEN, DASHBOARD: 'on' }, { db: dev.db });
    browser = await chromium.launch({ executablePath });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await prod?.stop();
    await dev?.stop();
  });

  it('draws every route, the pool and the rest from /stats while the API is under traffic; screenshot saved', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
    const problems = await watch(page);
    // Traffic until the charts are full, bounded in count whatever happens.
    let stop = false;
    const traffic = (async () => {
      for (let round = 0; round < 60 && !stop; round++) await mixedLoad(dev.url, { requests: 40, concurrency: 4, users: 3 });
    })();
    try {
      await page.goto(`${dev.url}/dashboard?interval=400`);
      await page.waitForFunction(
        () => {
          const n = (id: string, key: string) => Number(document.getElementById(id)?.dataset[key] ?? 0);
          return n('rate', 'points') >= 5 && n('rate', 'series') >= 4 && n('db', 'max') > 0 && n('pool', 'max') > 0;
        },
        undefined,
        { timeout: 45_000, polling: 200 },
      );
    } finally {
      stop = true;
      await traffic;
    }
    for (const id of ['rate', 'latency', 'db', 'acquire', 'pool', 'retries']) {
      const c = await chart(page, id);
      expect(c.canvases, id).toBeGreaterThan(0);
      expect(c.points, id).toBeGreaterThan(0);
    }
    const rate = await chart(page, 'rate');
    expect(rate.max).toBeGreaterThan(0);
    expect((await chart(page, 'latency')).series).toBe(2 * rate.series);
    // The routes under traffic are drawn by name, and which client served them.
    const legend = await page.$eval('#rate', (el) => el.textContent ?? '');
    for (const route of ['POST /api/users', 'GET /api/users/:id']) expect(legend).toContain(route);
    const clients = await page.$eval('#clients', (el) => el.textContent ?? '');
    expect(clients).toContain('GET /api/users/:id');
    expect(clients).toContain('pg-pool');
    expect((await chart(page, 'breakers')).points).toBeGreaterThan(0);
    expect(problems).toEqual([]);

    mkdirSync(SHOT_DIR, { recursive: true });
    const shot = join(SHOT_DIR, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`dashboard screenshot: ${shot}`);
    await page.close();
  });

  it('in production (signed-only, OPS_TOKEN): the page asks for the token, then polls /stats with it', async () => {
    const page = await browser.newPage();
    const problems = await watch(page);
    await page.goto(`${prod.url}/dashboard?interval=300`);
    await page.waitForSelector('#token:not([hidden])');
    expect(await page.textContent('#token-message')).toContain('OPS_TOKEN');
    expect(await page.getAttribute('body', 'data-polls')).toBe('0');
    await page.fill('#token input[name=token]', TOKEN);
    await page.click('#token button[type=submit]');
    await page.waitForFunction(() => Number(document.body.dataset.polls) >= 3, undefined, { timeout: 30_000 });
    expect(await page.isHidden('#token')).toBe(true);
    // The polls themselves are traffic: GET /stats is drawn, answered with the token.
    expect(await page.$eval('#rate', (el) => el.textContent ?? '')).toContain('GET /stats');
    expect(await page.evaluate(() => sessionStorage.getItem('poolgate.opsToken'))).toBe(TOKEN);
    // The first poll, without the token, is the one refused.
    expect(problems).toEqual(['401 /stats']);
    await page.close();
  });
});
