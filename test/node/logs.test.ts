/**
 * Structured logs from a real Node gateway (issue 24): every line one JSON object with time,
 * level and msg; the configuration at start-up without its secrets; connection events; a request
 * line per request at debug, carrying the request id the client sees; and under an overload burst
 * (237 requests against one held connection) a bounded number of lines — summaries, not a line
 * per shed request.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { adminClient, json, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];
const FORWARD_SECRET = 'f'.repeat(16) + randomUUID().replaceAll('-', '');
const OPS_TOKEN = 'ops-' + randomUUID();

type Line = Record<string, unknown> & { time: string; level: string; msg: string };

/** Every line parsed; fails on the first one that is not one JSON object with the three fields. */
function parsed(lines: readonly string[]): Line[] {
  return lines.map((text) => {
    expect(text, 'one line, no newline inside').not.toContain('\n');
    const line = JSON.parse(text) as Line;
    expect(line, text).toMatchObject({ time: expect.any(String), level: expect.any(String), msg: expect.any(String) });
    expect(new Date(line.time).toISOString(), text).toBe(line.time);
    expect(LEVELS, text).toContain(line.level);
    return line;
  });
}

const gateways: TestGateway[] = [];
afterAll(async () => {
  for (const g of gateways) await g.stop().catch(() => {});
});

describe('at LOG_LEVEL=debug', () => {
  it('writes JSON lines only: the configuration without secrets, connections opened, a line per request with its id and figures', async () => {
    const t = await startTestGateway({ LOG_LEVEL: 'debug', FORWARD_SECRET, OPS_TOKEN });
    gateways.push(t);
    const sentId = `client-${randomUUID()}`;
    const health = await json(`${t.url}/health`, { headers: { 'x-request-id': sentId } });
    expect(health.status).toBe(200);
    const missing = await json(`${t.url}/api/users/${randomUUID()}`); // unsigned: refused by verify-forward
    await t.stop();

    const lines = parsed(t.logs);
    const all = t.logs.join('\n');
    expect(all).not.toContain(FORWARD_SECRET);
    expect(all).not.toContain(OPS_TOKEN);
    expect(all).not.toContain(t.db.url);

    const config = lines.find((l) => l.event === 'config');
    expect(config).toMatchObject({ level: 'info', config: { logLevel: 'debug', pool: { max: 5 } } });
    expect(config!.config).not.toHaveProperty('forwardSecret');
    expect(lines.some((l) => l.event === 'connection.opened' && l.upstream === 'postgres')).toBe(true);
    expect(lines.some((l) => l.event === 'gateway.started')).toBe(true);

    const requests = lines.filter((l) => l.event === 'request');
    expect(requests.find((l) => l.requestId === sentId)).toMatchObject({
      level: 'debug',
      method: 'GET',
      route: '/health',
      status: 200,
      client: expect.any(String),
      durationMs: expect.any(Number),
      dbMs: expect.any(Number),
      acquireMs: expect.any(Number),
    });
    expect(requests.find((l) => l.requestId === missing.headers.get('x-request-id'))).toMatchObject({
      route: '/api/users/:id',
      status: missing.status,
      code: missing.body.error.code,
    });
    // The closing summary, and the pool's connections closed when it ended.
    expect(lines.some((l) => l.event === 'requests' && l.total === 2)).toBe(true);
    // (the pool ends within the gateway's bounded while, or just after it on a slow embedded database)
    await waitFor(() => parsed(t.logs).some((l) => l.event === 'connection.closed'), { what: 'a connection.closed line' });
  });
});

describe('at LOG_LEVEL=info, under an overload burst', () => {
  it('237 requests against one held connection make a bounded number of lines: summaries, not one per request', async () => {
    // LOG_SLOW_MS at its bound: the held request is not logged as slow, however long it is held.
    const t = await startTestGateway({
      POOL_MAX: '1',
      POOL_MIN: '0',
      POOL_ACQUIRE_TIMEOUT_MS: '300',
      POOL_QUEUE_MAX: '1',
      LOG_SLOW_MS: '3600000',
    });
    gateways.push(t);
    const u = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `logs-${randomUUID()}@example.com`, name: 'Logs' } });
    expect(u.status).toBe(201);
    const locker: pg.Client = await adminClient(t.db);
    let codes: string[];
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
      const slow = json(`${t.url}/api/users/${u.body.id}`);
      await waitFor(() => t.gateway.database.stats()!.active === 1, { what: 'the slow request to hold the connection' });
      const burst = await Promise.all(Array.from({ length: 237 }, () => json(`${t.url}/api/users/${u.body.id}`)));
      expect(burst.map((r) => r.status)).toEqual(Array(237).fill(503));
      codes = burst.map((r) => r.body.error.code as string);
      await locker.query('COMMIT');
      expect((await slow).status).toBe(200);
    } finally {
      await locker.query('ROLLBACK').catch(() => {});
      await locker.end();
    }
    // Those that found the one queue place free waited and timed out; the others were refused at once.
    const refused = codes.filter((c) => c === 'overloaded').length;
    expect(refused + codes.filter((c) => c === 'pool_exhausted').length).toBe(237);
    expect(refused).toBeGreaterThan(200);
    await t.stop();

    const lines = parsed(t.logs);
    const requestLines = lines.filter((l) => l.event === 'request');
    // One line per kind (overloaded, pool_exhausted), the rest counted in the summary.
    expect(
      requestLines
        .filter((l) => l.status === 503)
        .map((l) => l.code)
        .sort(),
    ).toEqual(['overloaded', 'pool_exhausted']);
    expect(requestLines.filter((l) => l.status !== 503)).toEqual([]);
    expect(lines.filter((l) => l.event === 'shed')).toEqual([
      expect.objectContaining({ level: 'warn', shed: { pool: expect.objectContaining({ total: refused }) } }),
    ]);
    expect(lines.filter((l) => l.event === 'requests')).toEqual([expect.objectContaining({ level: 'warn', '5xx': 237, unwritten: 235 })]);
    expect(lines.length).toBeLessThan(20);
  });
});
