/**
 * Pins what the self-sizing pool relies on in pg-pool (pg-pool.ts, PgPoolConnector#resize): the
 * pool reads `options.max` at every checkout, so lowering it stops new connections and raising it
 * allows them again. A pg upgrade that copies `max` away fails here. Fake clients: no server.
 */
import { EventEmitter } from 'node:events';
import pg from 'pg';
import { describe, expect, it } from 'vitest';

class FakeClient extends EventEmitter {
  /** pg-pool keeps a released client only when it is still queryable. */
  _queryable = true;
  connect(cb: (err?: Error) => void) {
    setImmediate(() => cb());
  }
  end(cb?: () => void) {
    setImmediate(() => (this.emit('end'), cb?.()));
    return Promise.resolve();
  }
}

describe('pg.Pool options.max at runtime', () => {
  it('is read at every checkout', { timeout: 5_000 }, async () => {
    const pool = new pg.Pool({ max: 1, Client: FakeClient as unknown as typeof pg.Client });
    const a = await pool.connect();
    let second: pg.PoolClient | undefined;
    const waiting = pool.connect().then((c) => (second = c));
    await new Promise((r) => setImmediate(r));
    expect(pool.waitingCount).toBe(1); // max 1: the second waits

    pool.options.max = 3;
    const c = await pool.connect(); // raised: a new connection opens at once
    expect(pool.totalCount).toBe(2);

    pool.options.max = 1; // lowered: released connections wait in the idle list, none opens
    a.release();
    await waiting;
    expect(second).toBe(a);
    second!.release(true);
    c.release(true);
    await new Promise((r) => setImmediate(r));
    expect(pool.totalCount).toBe(0);
    await pool.end();
  });
});
