/**
 * Liveness and readiness. The gateway reaches its database through a TCP relay the test owns,
 * so "the database became unreachable" is a real network cut (every connection reset, the port
 * closed), not a mock; restoring the relay brings readiness back.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { json, leaksIn, seenResponses, startTestGateway, waitFor, type TestGateway } from '../helpers/gateway.js';

/** A loopback TCP relay to the database that can be cut and restored on the same port. */
class Relay {
  #server: net.Server | undefined;
  readonly #sockets = new Set<net.Socket>();
  port = 0;

  constructor(
    readonly targetHost: string,
    readonly targetPort: number,
  ) {}

  async open(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.targetPort, this.targetHost);
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => {
          this.#sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.#server = server;
  }

  /** Resets every relayed connection and stops accepting new ones. */
  async cut(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const s of this.#sockets) s.resetAndDestroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

let db: TestDatabase;
let relay: Relay;
let t: TestGateway;

beforeAll(async () => {
  db = await createTestDatabase();
  const target = new URL(db.url);
  relay = new Relay(target.hostname, Number(target.port || 5432));
  await relay.open();
  const viaRelay = new URL(db.url);
  viaRelay.hostname = '127.0.0.1';
  viaRelay.port = String(relay.port);
  t = await startTestGateway(
    { DATABASE_URL: viaRelay.toString(), POOL_MAX: '2', POOL_MIN: '1', POOL_CONNECTION_TIMEOUT_MS: '1000' },
    { db: { ...db, url: viaRelay.toString() } },
  );
});

afterAll(async () => {
  await t?.stop();
  await relay?.cut();
  await db?.drop();
});

describe('/health', () => {
  it('answers 200 without touching the database', async () => {
    const before = t.gateway.database.stats()!;
    const res = await json(`${t.url}/health`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok' });
    expect(res.headers.get('server-timing')).toContain('db;dur=0.00;desc="none 0q"');
    const after = t.gateway.database.stats()!;
    expect(after.acquisitionCount).toBe(before.acquisitionCount);
    expect(after.openedCount).toBe(before.openedCount);
  });
});

describe('/health/ready', () => {
  it('answers 200 with the pool state while the database answers', async () => {
    const res = await json(`${t.url}/health/ready`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      status: 'ready',
      client: 'pg-pool',
      database: { ok: true, latencyMs: expect.any(Number) },
      pool: { max: 2, total: expect.any(Number), active: 0, idle: expect.any(Number), waiting: 0 },
    });
    expect(res.body.pool.total).toBeGreaterThanOrEqual(1);
  });

  it('answers 503 with Retry-After when the database is unreachable, while /health stays 200', async () => {
    await relay.cut();
    // The pool notices the reset connections and drops them.
    await waitFor(() => t.gateway.database.stats()!.total === 0, { what: 'the pool to drop its reset connections' });

    const started = performance.now();
    const res = await json(`${t.url}/health/ready`);
    expect(performance.now() - started).toBeLessThan(5_000); // bounded by the ready timeout, not the connect retries
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('2');
    expect(res.body).toMatchObject({ status: 'unavailable', client: 'pg-pool', database: { ok: false, reason: expect.any(String) } });
    expect(res.body.database.reason).toMatch(/^[a-z_]+$/); // a code, never a driver message

    const live = await json(`${t.url}/health`);
    expect(live.status).toBe(200);

    const api = await json(`${t.url}/api/users/00000000-0000-4000-8000-000000000001`);
    expect(api.status).toBe(503);
    expect(api.body.error).toMatchObject({ code: expect.stringMatching(/^[a-z_]+$/), requestId: expect.any(String) });
  });

  it('answers 200 again once the database is reachable again', async () => {
    await relay.open();
    const ready = await waitFor(
      async () => {
        const res = await json(`${t.url}/health/ready`);
        return res.status === 200 ? res : undefined;
      },
      { timeoutMs: 15_000, intervalMs: 200, what: '/health/ready to recover' },
    );
    expect(ready.body.database.ok).toBe(true);
    expect((await json(`${t.url}/api/users/00000000-0000-4000-8000-000000000001`)).status).toBe(404);
  });

  it('no response leaked internals, and nothing logged the connection string', () => {
    expect(seenResponses.flatMap((text) => [...leaksIn(text, db), ...leaksIn(text, t.db)])).toEqual([]);
    expect(t.logs.filter((l) => l.includes('postgres://'))).toEqual([]);
  });
});
