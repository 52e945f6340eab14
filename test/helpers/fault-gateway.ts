/**
 * The set-up the fault scenarios share: a fresh database, the fault proxy in front of it, a
 * gateway whose pool connects through the proxy, and one user to write workouts for.
 */
import { randomUUID } from 'node:crypto';
import { createTestDatabase, type TestDatabase } from './db.js';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';
import { json, startTestGateway, type TestGateway } from './gateway.js';

export interface BehindFaultProxy {
  db: TestDatabase;
  proxy: FaultProxy;
  t: TestGateway;
  userId: string;
  /** Stops the gateway, then the proxy, then drops the database. */
  stop(): Promise<void>;
}

export async function startBehindFaultProxy(overrides: Record<string, string>, label: string): Promise<BehindFaultProxy> {
  const db = await createTestDatabase();
  const u = new URL(db.url);
  let proxy: FaultProxy | undefined;
  let t: TestGateway | undefined;
  const stop = async () => {
    await t?.stop();
    await proxy?.close();
    await db.drop();
  };
  try {
    proxy = await startFaultProxy({ target: { host: u.hostname, port: Number(u.port) } });
    t = await startTestGateway({ DATABASE_URL: proxy.urlFor(db.url), ...overrides }, { db });
    const res = await json(`${t.url}/api/users`, { method: 'POST', json: { email: `${label}-${randomUUID()}@example.com`, name: label } });
    if (res.status !== 201) throw new Error(`creating the scenario's user answered ${res.status}`);
    return { db, proxy, t, userId: res.body.id, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
