/**
 * The routing rules of db/core/replicas.ts over fake servers (each answers the look with a status
 * row and records the statements it ran). Real standbys: test/node/replicas.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { AppError } from '../../errors.js';
import type { Database, Db, QueryObserver, QueryResult } from '../types.js';
import { Replica, ReplicatedDatabase, STATUS_SQL } from './replicas.js';

interface FakeServer extends Database {
  ran: string[];
  status: { standby: boolean; replayed: string; lag_ms: number } | Error;
  fail?: Error;
}

function server(name: string, replayed = '0/100', lag = 0): FakeServer {
  const self: FakeServer = {
    kind: 'pg-pool',
    ran: [],
    status: { standby: true, replayed, lag_ms: lag },
    forRequest(): Db {
      const answer = (text: string): QueryResult => {
        if (text === STATUS_SQL) {
          if (self.status instanceof Error) throw self.status;
          return { rows: [self.status], rowCount: 1 };
        }
        self.ran.push(text);
        if (self.fail) throw self.fail;
        return { rows: [{ server: name }], rowCount: 1 };
      };
      const run = (text: string): Promise<QueryResult> => Promise.resolve().then(() => answer(text));
      return {
        kind: 'pg-pool',
        query: run as Db['query'],
        readBatch: async (statements) => Promise.all(statements.map((s) => run(s.text))),
        transaction: async (fn) => fn({ query: run as Db['query'] }),
      };
    },
    ping: () => Promise.resolve({ ok: true, latencyMs: 0 }),
    stats: () => undefined,
    breakers: () => [],
    close: async () => {},
  };
  return self;
}

const observer = (o: Partial<QueryObserver> = {}): QueryObserver & { servers: string[] } => {
  const servers: string[] = [];
  return { acquired() {}, queried() {}, served() {}, readFrom: (s) => servers.push(s), servers, intent: 'read', ...o };
};

async function setUp(replicas: FakeServer[], maxLagMs = 1_000) {
  const primary = server('primary');
  const db = new ReplicatedDatabase(
    primary,
    replicas.map((r, i) => new Replica(`replica-${i + 1}`, r)),
    { maxLagMs, checkIntervalMs: 60_000 },
  );
  await db.lookAll();
  return { primary, db };
}

describe('reads on replicas', () => {
  it('a read route reads from a replica; its transactions, and every transactional request, from the primary', async () => {
    const r1 = server('r1');
    const { primary, db } = await setUp([r1]);
    const read = observer();
    const rdb = db.forRequest(read);
    await rdb.query('SELECT 1');
    await rdb.transaction((tx) => tx.query('SELECT 2'));
    await rdb.query('SELECT 3'); // after the primary, the request stays there: never back in time
    expect(r1.ran).toEqual(['SELECT 1']);
    expect(primary.ran).toEqual(['SELECT 2', 'SELECT 3']);
    expect(read.servers).toEqual(['replica-1', 'primary']);
    await db.forRequest(observer({ intent: 'transactional' })).query('SELECT 4');
    expect(primary.ran).toContain('SELECT 4');
  });

  it('a token is honoured only by a replica that has replayed past it, else the primary', async () => {
    const behind = server('behind', '0/100');
    const ahead = server('ahead', '0/200');
    const { primary, db } = await setUp([behind, ahead]);
    for (let i = 0; i < 4; i++) await db.forRequest(observer({ consistency: '0/180' })).query('SELECT t');
    expect(ahead.ran).toHaveLength(4);
    expect(behind.ran).toHaveLength(0);
    await db.forRequest(observer({ consistency: '0/300' })).query('SELECT late');
    expect(primary.ran).toEqual(['SELECT late']);
    expect(db.figures()).toMatchObject({ tokensHonoured: 4, onPrimary: { token: 1, noReplica: 0 } });
  });

  it('a replica lagging past the bound, or down at its look, takes no reads', async () => {
    const lagging = server('lagging', '0/100', 5_000);
    const down = server('down');
    down.status = Object.assign(new Error('refused'), { code: 'ECONNREFUSED' });
    const { primary, db } = await setUp([lagging, down]);
    await db.forRequest(observer()).query('SELECT x');
    expect(primary.ran).toEqual(['SELECT x']);
    expect(db.figures().onPrimary.noReplica).toBe(1);
    expect(db.figures().replicas.map((r) => [r.name, r.up, r.lagMs])).toEqual([
      ['replica-1', true, 5000],
      ['replica-2', false, 0],
    ]);
  });

  it('equal replicas share the reads; a busier one gets fewer', async () => {
    const a = server('a');
    const b = server('b');
    const { db } = await setUp([a, b]);
    for (let i = 0; i < 10; i++) await db.forRequest(observer()).query('SELECT s');
    expect([a.ran.length, b.ran.length]).toEqual([5, 5]);
    db.replicas[0]!.inFlight = 3;
    for (let i = 0; i < 4; i++) await db.forRequest(observer()).query('SELECT s');
    expect(b.ran).toHaveLength(9);
  });

  it("a read that fails for the replica's sake runs again on the primary and takes the replica out; a SQL error does not", async () => {
    const r1 = server('r1');
    const { primary, db } = await setUp([r1]);
    r1.fail = new AppError(503, 'circuit_open', 'open');
    const o = observer();
    expect((await db.forRequest(o).query('SELECT a')).rows).toEqual([{ server: 'primary' }]);
    expect(o.servers).toEqual(['replica-1', 'primary']);
    expect(db.figures().replicas[0]).toMatchObject({ up: false, fellBackCount: 1 });
    await db.lookAll(); // back at its next look
    r1.fail = Object.assign(new Error('syntax'), { code: '42601' });
    await expect(db.forRequest(observer()).query('SELECT b')).rejects.toMatchObject({ code: '42601' });
    expect(primary.ran).toEqual(['SELECT a']);
  });

  it('looks again only when the last look is due, and hands that look to the request that started it', async () => {
    const r1 = server('r1');
    const primary = server('primary');
    const db = new ReplicatedDatabase(primary, [new Replica('replica-1', r1)], { maxLagMs: 1_000, checkIntervalMs: 60_000 });
    const first = db.forRequest(observer());
    await first.query('SELECT 1'); // nothing known yet: the primary
    expect(primary.ran).toEqual(['SELECT 1']);
    await first.end?.(); // the look it started
    const second = db.forRequest(observer());
    await second.query('SELECT 2');
    expect(r1.ran).toEqual(['SELECT 2']);
    expect(second.end?.()).toBeUndefined(); // not due again for a minute
    expect(db.figures().replicas[0]!.checkCount).toBe(1);
  });
});
