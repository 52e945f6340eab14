/**
 * Who may read the ops endpoints of a gateway that accepts only signed traffic (issue 10, case 7):
 * /health is open; /stats and /metrics need OPS_TOKEN as a bearer token (refused with 401 when no
 * token is configured); /health/ready answers its status code to anyone but its details only with
 * the token, so a load balancer needs no secret. A gateway without FORWARD_SECRET stays open.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { json, startTestGateway, type TestGateway } from '../helpers/gateway.js';

const SECRET = 'ops-access-forward-secret-0123456789abcdef';
const TOKEN = 'ops-access-token-0123456789-abcdef';
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

describe('ops endpoints on a signed-only gateway', () => {
  let locked: TestGateway;
  let withToken: TestGateway;
  let open: TestGateway;

  beforeAll(async () => {
    locked = await startTestGateway({ FORWARD_SECRET: SECRET, POOLGATE_ENV: '' });
    withToken = await startTestGateway({ FORWARD_SECRET: SECRET, POOLGATE_ENV: '', OPS_TOKEN: TOKEN }, { db: locked.db });
    open = await startTestGateway({}, { db: locked.db });
  }, 60_000);

  afterAll(async () => {
    await open?.stop();
    await withToken?.stop();
    await locked?.stop();
    await locked?.db.drop();
  });

  it('without OPS_TOKEN: /health answers, /stats and /metrics are 401 naming OPS_TOKEN, readiness is bare', async () => {
    expect((await json(`${locked.url}/health`)).status).toBe(200);
    for (const path of ['/stats', '/metrics']) {
      const res = await json(`${locked.url}${path}`);
      expect(res.status, path).toBe(401);
      expect(res.body.error.code).toBe('unauthorized');
      expect(res.body.error.message).toContain('OPS_TOKEN');
    }
    const ready = await json(`${locked.url}/health/ready`);
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({ status: 'ready' });
  });

  it('with OPS_TOKEN: the right bearer token reads everything; a wrong or missing one is refused', async () => {
    const stats = await json(`${withToken.url}/stats`, { headers: bearer(TOKEN) });
    expect(stats.status).toBe(200);
    expect(stats.body.pool.max).toBeGreaterThan(0);
    const metrics = await fetch(`${withToken.url}/metrics`, { headers: bearer(TOKEN) });
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toContain('poolgate_pool_max_connections');
    expect((await json(`${withToken.url}/health/ready`, { headers: bearer(TOKEN) })).body.pool).toBeDefined();
    for (const headers of [{}, bearer(`${TOKEN}x`), bearer(TOKEN.slice(1)), { authorization: TOKEN }]) {
      expect((await json(`${withToken.url}/stats`, { headers })).status).toBe(401);
      expect((await json(`${withToken.url}/health/ready`, { headers })).body).toEqual({ status: 'ready' });
    }
  });

  it('a gateway that takes unsigned traffic keeps its ops endpoints open', async () => {
    expect((await json(`${open.url}/stats`)).status).toBe(200);
    expect((await json(`${open.url}/health/ready`)).body.pool).toBeDefined();
  });
});
