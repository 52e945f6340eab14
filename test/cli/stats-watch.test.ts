/**
 * `poolgate stats <url>` as a process against a real gateway (the fitness app on the test's
 * database): once, the figures printed are /stats's; with --watch, two polls as two blocks (not a
 * terminal: no screen clearing), the second with each route's rate since the first; a gateway that
 * wants OPS_TOKEN, and one that is not there, each one line naming the fix, exit 1.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { json, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';
import { runPoolgate, spawnPoolgate } from '../helpers/poolgate-bin.js';
import { freePort } from '../helpers/wait.js';

const TOKEN = 'stats-watch-test-token-0123456789';
const SECRET = 'stats-watch-forward-secret-0123456789abcdef';

let t: TestGateway;
let userId: number;

beforeAll(async () => {
  t = await startTestGateway();
  const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `stats-${randomUUID()}@example.com`, name: 'Stats' } });
  expect(u.status).toBe(201);
  userId = u.body.id;
  for (let i = 0; i < 12; i++) expect((await json(`${t.url}/api/users/${userId}`)).status).toBe(200);
}, 60_000);
afterAll(async () => {
  await t?.stop();
});

/** The table rows of one printed block, by "METHOD /route": the cells between runs of 2+ spaces. */
function rows(block: string): Map<string, string[]> {
  const lines = block.split('\n');
  const header = lines.findIndex((l) => l.startsWith('route '));
  const out = new Map<string, string[]>();
  for (const line of lines.slice(header + 1)) {
    if (!/^[A-Z]+ \//.test(line)) break;
    const cells = line.split(/\s{2,}/);
    out.set(cells[0]!, cells);
  }
  return out;
}

const f2 = (ms: number) => ms.toFixed(2);

describe('poolgate stats', () => {
  it('prints /stats once: the route figures, pool and breakers as the gateway reports them', async () => {
    const run = await runPoolgate(['stats', t.url]);
    expect(run.code, JSON.stringify(run)).toBe(0);
    expect(run.stderr).toBe('');
    // No traffic since, but this very poll: the API route's figures cannot have moved.
    const stats = (await json(`${t.url}/stats`)).body;
    const api = stats.routes.find((r: any) => r.route === '/api/users/:id' && r.method === 'GET');
    const [, count, rate, p50, p99, db, wait, errors, cache, clients] = rows(run.stdout).get('GET /api/users/:id')!;
    expect([count, rate, p50, p99, db, wait, errors, cache]).toEqual([
      String(api.count),
      '-',
      f2(api.latencyMs.p50),
      f2(api.latencyMs.p99),
      f2(api.dbTimeMs.mean),
      f2(api.acquireWaitMs.mean),
      String(api.errorCount),
      '-',
    ]);
    expect(api.count).toBe(12);
    expect(clients).toBe(
      Object.entries(api.clients)
        .map(([k, n]) => `${k} ${String(n)}`)
        .join(', '),
    );
    expect(run.stdout).toMatch(new RegExp(`^pool +total \\d+ {2}active \\d+ {2}idle \\d+ {2}waiting 0 {2}max ${stats.pool.max}$`, 'm'));
    expect(run.stdout).toMatch(new RegExp(`^breakers +${stats.breakers.map((b: any) => `${b.name} ${b.state}`).join('  ')}$`, 'm'));
    expect(run.stdout).not.toContain('\x1b[');
  });

  it('--watch polls until killed: a block per poll, the second with rates since the first', async () => {
    const watch = spawnPoolgate(['stats', '--watch', '--interval', '300', t.url]);
    try {
      const blocks = await waitFor(
        () => {
          const parts = watch.output().stdout.split(/\n(?=poolgate stats )/);
          return parts.length >= 3 ? parts.slice(0, 2) : undefined; // a third started: the second is whole
        },
        { timeoutMs: 30_000, what: `two polls (output so far: ${JSON.stringify(watch.output())})` },
      );
      const [first, second] = blocks.map(rows);
      expect(first!.get('GET /api/users/:id')![2]).toBe('-');
      // No API request between the polls: its rate is 0; each poll is one GET /stats more.
      expect(second!.get('GET /api/users/:id')!.slice(1, 3)).toEqual(['12', '0.0']);
      expect(Number(second!.get('GET /stats')![1])).toBe(Number(first!.get('GET /stats')![1]) + 1);
      expect(Number(second!.get('GET /stats')![2])).toBeGreaterThan(0);
    } finally {
      watch.child.kill('SIGTERM');
    }
    const ended = await watch.exited;
    expect(ended.code, ended.stderr).toBe(0);
    expect(ended.stderr).toBe('');
  });

  it('a gateway that wants OPS_TOKEN: one line naming --token, exit 1; with the token it prints', async () => {
    const locked = await startTestGateway({ FORWARD_SECRET: SECRET, OPS_TOKEN: TOKEN, POOLGATE_ENV: '' }, { db: t.db });
    try {
      const refused = await runPoolgate(['stats', locked.url]);
      expect(refused).toEqual({
        code: 1,
        stdout: '',
        stderr: `poolgate: ${locked.url}/stats needs the gateway's OPS_TOKEN (401); pass --token <OPS_TOKEN> or set OPS_TOKEN\n`,
      });
      const wrong = await runPoolgate(['stats', locked.url, '--token', 'x'.repeat(30)]);
      expect(wrong.stderr).toMatch(/refused the token \(401\)/);
      const fromEnv = await runPoolgate(['stats', locked.url], { OPS_TOKEN: TOKEN });
      expect(fromEnv.code, fromEnv.stderr).toBe(0);
      expect(fromEnv.stdout).toMatch(/^poolgate stats /);
    } finally {
      await locked.stop();
    }
  });

  it('nothing listening: one line naming the URL and the fix, exit 1', async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const run = await runPoolgate(['stats', '--watch', url]);
    expect(run).toEqual({
      code: 1,
      stdout: '',
      stderr: `poolgate: cannot reach ${url}/stats (ECONNREFUSED); is the gateway running there? check the URL\n`,
    });
  });

  it('no URL, or a bad --interval: a usage error, exit 2', async () => {
    const none = await runPoolgate(['stats']);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/^poolgate: stats needs the gateway's URL/);
    const interval = await runPoolgate(['stats', t.url, '--interval', 'soon']);
    expect(interval.code).toBe(2);
    expect(interval.stderr).toMatch(/^poolgate: --interval must be a whole number from 100 to 3600000, got "soon"\n/);
  });
});
