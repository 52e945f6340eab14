/**
 * `poolgate/edge` with the real `@neondatabase/serverless` driver, pointed at poolgate's local Neon
 * proxy by `createEdgeClient({ neonProxyUrl })` as a development deployment would: statements,
 * the `sql` tag and read batches as Neon HTTP round trips, transactions on a WebSocket session
 * whose per-call pool is ended before the call returns, and healthCheck.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { createEdgeClient, statement, type EdgeClient } from '../../src/runtime/edge-functions.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';

let db: TestDatabase;
let proxy: NeonProxy;
let edge: EdgeClient;

const tag = () => Math.random().toString(36).slice(2, 10);
const itemsNamed = async (name: string) => Number((await db.admin('SELECT count(*) AS n FROM items WHERE name = $1', [name])).rows[0].n);

/**
 * The proxy sees the WebSocket close a moment after the client's pool ended; a pool left open
 * would keep it for the driver's idle timeout (10 s), far beyond this wait.
 */
async function socketsClosed(withinMs = 1_000): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (proxy.stats().wsActiveCount > 0) {
    if (Date.now() > deadline) throw new Error(`a WebSocket was still open ${withinMs} ms after the call returned`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

beforeAll(async () => {
  db = await createTestDatabase('poolgate_edge_client');
  await db.admin('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)');
  proxy = await startNeonProxy({ databaseUrls: [db.url], port: 0, logLevel: 'silent' });
  edge = createEdgeClient({ connectionString: db.url, neonProxyUrl: proxy.url, timeoutMs: 10_000, scope: 'edge client test' });
});

afterAll(async () => {
  await edge?.close();
  await proxy?.close();
  await db?.drop();
});

describe('createEdgeClient through the local Neon proxy', () => {
  it('executeQuery writes and reads over Neon HTTP', async () => {
    const name = `q-${tag()}`;
    const inserted = await edge.executeQuery<{ id: number }>('INSERT INTO items (name) VALUES ($1) RETURNING id', [name]);
    expect(inserted.rowCount).toBe(1);
    const read = await edge.executeQuery('SELECT name FROM items WHERE id = $1', [inserted.rows[0]!.id], 'read');
    expect(read.rows).toEqual([{ name }]);
  });

  it('the sql tag sends values as parameters: a quote and a literal "$1" arrive as text', async () => {
    const name = `O'Brien said $1 ${tag()}`;
    await edge.sql`INSERT INTO items (name) VALUES (${name})`;
    expect(await edge.sql.read`SELECT name, ${'$1'}::text AS a FROM items WHERE name = ${name}`).toEqual([{ name, a: '$1' }]);
  });

  it('readBatch answers several statements from one snapshot, in one round trip', async () => {
    const name = `batch-${tag()}`;
    await edge.sql`INSERT INTO items (name) VALUES (${name})`;
    const before = proxy.stats().httpRequestCount;
    const [count, echo] = await edge.readBatch([
      statement`SELECT count(*)::int AS n FROM items WHERE name = ${name}`,
      statement`SELECT ${name}::text AS name`,
    ]);
    expect(proxy.stats().httpRequestCount - before).toBe(1);
    expect(count!.rows).toEqual([{ n: 1 }]);
    expect(echo!.rows).toEqual([{ name }]);
  });

  it('executeTransaction commits on a WebSocket session and ends its pool before returning', async () => {
    const name = `tx-${tag()}`;
    const id = await edge.executeTransaction(async (tx) => {
      const [row] = await tx.sql<{ id: number }>`INSERT INTO items (name) VALUES (${name}) RETURNING id`;
      await tx.query('INSERT INTO items (name) VALUES ($1)', [`${name}-2`]);
      return row!.id;
    });
    expect(typeof id).toBe('number');
    expect(await itemsNamed(name)).toBe(1);
    expect(await itemsNamed(`${name}-2`)).toBe(1);
    expect(proxy.stats().wsOpenedCount).toBeGreaterThan(0);
    await socketsClosed();
  });

  it('executeTransaction rolls back when the callback throws', async () => {
    const name = `rollback-${tag()}`;
    await expect(
      edge.executeTransaction(async (tx) => {
        await tx.query('INSERT INTO items (name) VALUES ($1)', [name]);
        throw new Error('changed my mind');
      }),
    ).rejects.toThrow('changed my mind');
    expect(await itemsNamed(name)).toBe(0);
    await socketsClosed();
  });

  it('refuses BEGIN inside the callback, as on Node', async () => {
    await expect(edge.executeTransaction((tx) => tx.query('BEGIN'))).rejects.toThrow(/remove "BEGIN" from the callback/);
  });

  it('healthCheck answers healthy, and getStats names the client that served each call type', async () => {
    expect(await edge.healthCheck()).toEqual({ healthy: true, latencyMs: expect.any(Number) });
    const routes = edge.getStats().routes;
    const servedBy = Object.fromEntries(routes.map((r) => [`${r.method} ${r.route}`, Object.keys(r.clients)]));
    expect(servedBy).toMatchObject({
      'executeQuery read': ['neon-http'],
      'readBatch read': ['neon-http'],
      'executeTransaction write': ['neon-ws'],
    });
    expect(edge.getStats().breakers.map((b) => b.name)).toEqual(['neon-http', 'neon-ws']);
  });

  it('getNeonClient is the Neon driver itself, through the same proxy', async () => {
    const sql = edge.getNeonClient();
    expect(await sql`SELECT ${1}::int AS one`).toEqual([{ one: 1 }]);
  });
});
