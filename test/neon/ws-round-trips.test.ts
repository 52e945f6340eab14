/**
 * Round trips of the edge's WebSocket session (issue 13), counted on the wire. A relay between
 * the driver's WebSocket and the proxy delays each direction by ONE_WAY_MS — a WAN in miniature,
 * so what a side sends before it could have heard the other belongs to one burst — and records
 * which side sent each chunk. A round trip is a burst from the client followed by a burst from
 * the server, counted until the work resolved at the client (the Terminate and close after it
 * are not on a request's path). The WebSocket upgrade is one of them; the TCP handshake before
 * it (and TLS, with wss) is not visible to the relay and comes on top.
 *
 * "before" is the WebSocket path as it was: a proxy that only pipes bytes (written out below),
 * the driver told not to pipeline its connect, and a session that awaits every statement
 * (BEGIN, each statement, COMMIT). "after" is the local proxy doing the startup (pipelined
 * connect: startup, password and the first query in one write) and neonWsConnector under the
 * core (BEGIN written with the first statement; a read-only COMMIT not awaited). Both driver
 * majors; trust-auth PostgreSQL (the shared server) and a private cluster with scram-sha-256,
 * md5 and cleartext password users. The counts are asserted, and printed.
 *
 * The second half checks that the pipelined statements keep the transaction's meaning: a failed
 * BEGIN fails the statement sent with it, a write's COMMIT is always awaited (an error there still
 * fails the transaction), a read-only transaction that swallowed an error still hears 25P02.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import * as neonCurrent from '@neondatabase/serverless';
import * as neonPrevious from 'neon-serverless-0-10';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { neonWsConnector, useLocalNeonProxy, type NeonDriver, type NeonProxySettings } from '../../src/db/connectors/neon.js';
import { createDatabase } from '../../src/db/core/database.js';
import type { Db, QueryObserver, TxOptions } from '../../src/db/types.js';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { privatePostgresAvailable, startPrivatePostgres, useAuthMethods, type PrivatePostgres } from '../helpers/private-postgres.js';

const ONE_WAY_MS = 20;

type NeonConfigLike = NeonProxySettings & { webSocketConstructor: unknown };
interface Driver {
  label: string;
  neonConfig: NeonConfigLike;
  module: NeonDriver;
}
const drivers: Driver[] = [
  { label: '1.x', neonConfig: neonCurrent.neonConfig, module: neonCurrent },
  { label: '0.10.x', neonConfig: neonPrevious.neonConfig, module: neonPrevious as unknown as NeonDriver },
];

const SUPER_PASSWORD = 'super secret';
/** On both servers; the name is unique only at COMMIT, so a write can fail there. */
const ITEMS_TABLE = `CREATE TABLE rt_items (id serial PRIMARY KEY, name text NOT NULL,
  CONSTRAINT rt_items_name_key UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)`;

let shared: TestDatabase;
let cluster: PrivatePostgres | undefined;
let proxy: NeonProxy;
let pipe: { port: number; close(): Promise<void> };
/** Relays in front of the byte pipe (before) and of the proxy (after). */
let viaPipe: TripRelay;
let viaProxy: TripRelay;
const proxyLog: string[] = [];
const report: string[] = [];

/** The connection string for an auth method: trust on the shared server, the others on the private cluster. */
const methods = {
  trust: () => shared.url,
  'scram-sha-256': () => cluster && cluster.url('postgres', SUPER_PASSWORD),
  md5: () => cluster && `postgres://md5_user:md5%20pass@127.0.0.1:${cluster.port}/postgres`,
  'password (cleartext)': () => cluster && `postgres://plain_user:plain-pass@127.0.0.1:${cluster.port}/postgres`,
};
type Method = keyof typeof methods;

beforeAll(async () => {
  shared = await createTestDatabase('poolgate_ws_trips');
  await shared.admin(ITEMS_TABLE);
  if (privatePostgresAvailable) {
    cluster = await startPrivatePostgres({ password: SUPER_PASSWORD });
    await useAuthMethods(cluster, SUPER_PASSWORD);
    const admin = new pg.Client({ connectionString: cluster.url('postgres', SUPER_PASSWORD) });
    await admin.connect();
    await admin.query(ITEMS_TABLE).finally(() => admin.end());
  }
  proxy = await startNeonProxy({
    databaseUrls: [shared.url, ...(cluster ? [cluster.url()] : [])],
    port: 0,
    logLevel: 'debug',
    log: (line) => proxyLog.push(line),
  });
  pipe = await startBytePipe();
  viaPipe = await TripRelay.start(pipe.port, ONE_WAY_MS);
  viaProxy = await TripRelay.start(proxy.port, ONE_WAY_MS);
});

afterAll(async () => {
  if (report.length) console.log(`round trips (one way ${ONE_WAY_MS} ms; the upgrade included):\n${report.join('\n')}`);
  await viaPipe?.close();
  await viaProxy?.close();
  await pipe?.close();
  await proxy?.close();
  await cluster?.destroy();
  await shared?.drop();
});

afterEach(() => {
  for (const driver of drivers) driver.neonConfig.pipelineConnect = 'password';
});

/** Points `driver` at `relay`: "before" also turns the pipelined connect off, as it used to be. */
function route(driver: Driver, relay: TripRelay, pipelineConnect: 'password' | false): void {
  useLocalNeonProxy(driver.neonConfig, relay.url);
  driver.neonConfig.webSocketConstructor = WebSocket;
  driver.neonConfig.pipelineConnect = pipelineConnect;
}

/** Runs `work`, then counts the round trips of the relay's newest session up to when it resolved. */
async function measure(relay: TripRelay, work: () => Promise<void>, cleanup: () => Promise<void>): Promise<{ trips: number; ms: number }> {
  const started = performance.now();
  const sessions = relay.sessions.length;
  let done: number;
  try {
    await work();
  } finally {
    done = performance.now();
    await cleanup();
  }
  expect(relay.sessions.length, 'one WebSocket').toBe(sessions + 1);
  return { trips: roundTrips(relay.sessions.at(-1)!, done), ms: Math.round(done - started) };
}

/** Connect + one query on a Pool, the way the driver is used (a pool per request). */
function connectAndQuery(driver: Driver, url: string, relay: TripRelay) {
  const pool = new driver.module.Pool({ connectionString: url, max: 1 });
  pool.on('error', () => {});
  return measure(
    relay,
    async () => {
      const client = await pool.connect();
      try {
        expect((await client.query('SELECT $1::int + 1 AS n', [41])).rows).toEqual([{ n: 42 }]);
      } finally {
        client.release();
      }
    },
    () => pool.end(),
  );
}

const observer: QueryObserver = { acquired() {}, queried() {}, served() {} };

/** A transaction through the core and neonWsConnector: the edge's session, as it runs now. */
function coreTransaction(driver: Driver, url: string, statements: string[][], opts: TxOptions) {
  const database = createDatabase({ sessions: neonWsConnector({ connectionString: url, driver: driver.module }) });
  const db = database.forRequest(observer);
  return measure(
    viaProxy,
    async () => {
      await db.transaction(async (tx) => {
        for (const [text, ...params] of statements) await tx.query(text!, params);
      }, opts);
    },
    async () => {
      await db.end?.();
      await database.close();
    },
  );
}

/** The same transaction the way the WebSocket session ran it before: every statement awaited. */
function awaitedTransaction(driver: Driver, url: string, statements: string[][], begin: string, relay: TripRelay) {
  const pool = new driver.module.Pool({ connectionString: url, max: 1 });
  pool.on('error', () => {});
  return measure(
    relay,
    async () => {
      const client = await pool.connect();
      try {
        await client.query(begin);
        for (const [text, ...params] of statements) await client.query(text!, params);
        await client.query('COMMIT');
      } finally {
        client.release();
      }
    },
    () => pool.end(),
  );
}

describe.each(drivers)('driver $label: connect + one query', (driver) => {
  const expected: Record<Method, { before: number; after: number; notPipelined: number }> = {
    // upgrade, startup → AuthenticationOk … ReadyForQuery, query
    trust: { before: 3, after: 2, notPipelined: 3 },
    // upgrade, startup → SASL, SASLInitialResponse → continue, SASLResponse → final + Ok …, query
    'scram-sha-256': { before: 5, after: 2, notPipelined: 4 },
    // upgrade, startup → the password request, password → Ok …, query
    md5: { before: 4, after: 2, notPipelined: 4 },
    'password (cleartext)': { before: 4, after: 2, notPipelined: 4 },
  };

  it.each(Object.keys(methods) as Method[])('%s', async (method) => {
    const url = methods[method]();
    if (!url) return void expect.soft(privatePostgresAvailable, 'a private cluster needs the PostgreSQL binaries').toBe(false);
    route(driver, viaPipe, false);
    const before = await connectAndQuery(driver, url, viaPipe);
    route(driver, viaProxy, 'password');
    const after = await connectAndQuery(driver, url, viaProxy);
    route(driver, viaProxy, false);
    const notPipelined = await connectAndQuery(driver, url, viaProxy);
    report.push(
      `  ${driver.label} ${method}, connect + 1 query: before ${before.trips} (${before.ms} ms), after ${after.trips} (${after.ms} ms); ` +
        `a client that does not pipeline, through the proxy: ${notPipelined.trips}`,
    );
    expect({ before: before.trips, after: after.trips, notPipelined: notPipelined.trips }).toEqual(expected[method]);
  });
});

describe.each(drivers)('driver $label: transactions on a fresh session', (driver) => {
  const reads = [
    ['SELECT id FROM rt_items WHERE name = $1', 'nobody'],
    ['SELECT count(*)::int AS n FROM rt_items WHERE id > $1', '0'],
  ];
  const cases = [
    {
      name: 'an interactive read (REPEATABLE READ READ ONLY, 2 statements)',
      statements: reads,
      opts: { isolation: 'repeatable read', readOnly: true } as TxOptions,
      begin: 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
      // before: upgrade, startup, BEGIN, 2 statements, COMMIT; after: upgrade, startup + BEGIN + 1st, 2nd.
      expected: { trust: [6, 3], 'scram-sha-256': [8, 3] },
    },
    {
      name: 'the same read at SERIALIZABLE (its COMMIT can fail, so it is awaited)',
      statements: reads,
      opts: { isolation: 'serializable', readOnly: true } as TxOptions,
      begin: 'BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY',
      expected: { trust: [6, 4], 'scram-sha-256': [8, 4] },
    },
    {
      name: 'a write (1 INSERT)',
      statements: [['INSERT INTO rt_items (name) VALUES ($1)']],
      opts: {} as TxOptions,
      begin: 'BEGIN',
      // before: upgrade, startup, BEGIN, INSERT, COMMIT; after: upgrade, startup + BEGIN + INSERT, COMMIT.
      expected: { trust: [5, 3], 'scram-sha-256': [7, 3] },
    },
  ];
  let n = 0;
  const fresh = (statements: string[][]) =>
    statements.map((s) => (s[0]!.startsWith('INSERT') ? [s[0]!, `${driver.label}-${n++}-${Math.random()}`] : s));

  for (const c of cases) {
    it.each(['trust', 'scram-sha-256'] as const)(`${c.name}: %s`, async (method) => {
      const url = methods[method]();
      if (!url) return void expect.soft(privatePostgresAvailable).toBe(false);
      route(driver, viaPipe, false);
      const before = await awaitedTransaction(driver, url, fresh(c.statements), c.begin, viaPipe);
      route(driver, viaProxy, 'password');
      const after = await coreTransaction(driver, url, fresh(c.statements), c.opts);
      report.push(
        `  ${driver.label} ${method}, ${c.name}: before ${before.trips} (${before.ms} ms), after ${after.trips} (${after.ms} ms)`,
      );
      expect([before.trips, after.trips]).toEqual(c.expected[method]);
    });
  }
});

describe.each(drivers)('driver $label: pipelined statements keep the transaction’s meaning', (driver) => {
  const connector = () => neonWsConnector({ connectionString: shared.url, driver: driver.module });
  const count = async (name: string) => (await shared.admin('SELECT count(*)::int AS n FROM rt_items WHERE name = $1', [name])).rows[0].n;
  /** A request's Db over the core and neonWsConnector, through the proxy with password auth; ended and closed after `fn`. */
  const withRequestDb = async (fn: (db: Db) => Promise<void>) => {
    route(driver, viaProxy, 'password');
    const database = createDatabase({ sessions: connector() });
    const db = database.forRequest(observer);
    try {
      await fn(db);
    } finally {
      await db.end?.();
      await database.close();
    }
  };

  it('a BEGIN that fails fails the statement written with it, which did not run', async () => {
    route(driver, viaProxy, 'password');
    const source = connector().source();
    const { session } = await source.acquire();
    try {
      const name = `bad-begin-${driver.label}`;
      await session.begin({ isolation: 'nonsense' as 'serializable' }); // BEGIN ISOLATION LEVEL NONSENSE, written with the next statement
      const err = (await session.query('INSERT INTO rt_items (name) VALUES ($1)', [name]).catch((e: unknown) => e)) as { code?: string };
      expect(err.code).toBe('42601');
      expect(await count(name)).toBe(0);
      // Without parameters (in the extended protocol too: one Sync closes both).
      await session.begin({ isolation: 'nonsense' as 'serializable' });
      expect(((await session.query('SELECT 1').catch((e: unknown) => e)) as { code?: string }).code).toBe('42601');
      // The session is usable and not inside a transaction.
      expect((await session.query(`SELECT current_setting('transaction_isolation') AS iso`)).rows).toEqual([{ iso: 'read committed' }]);
      // No transaction is open: VACUUM refuses to run inside one.
      expect(await session.query('VACUUM rt_items')).toMatchObject({ command: 'VACUUM' });
    } finally {
      session.release(false);
      await source.end?.();
    }
  });

  it('results of the statement sent with BEGIN are its own (with and without parameters)', async () => {
    await withRequestDb(async (db) => {
      const name = `results-${driver.label}`;
      const inserted = await db.transaction((tx) =>
        tx.query<{ id: number }>('INSERT INTO rt_items (name) VALUES ($1) RETURNING id', [name]),
      );
      expect(inserted.command).toBe('INSERT');
      expect(inserted.rowCount).toBe(1);
      expect(inserted.rows[0]!.id).toBeGreaterThan(0);
      const updated = await db.transaction((tx) => tx.query("UPDATE rt_items SET name = name WHERE name LIKE 'results-%'"));
      expect(updated).toMatchObject({ command: 'UPDATE', rows: [] });
      expect(updated.rowCount).toBeGreaterThanOrEqual(1);
      const iso = await db.transaction(
        (tx) => tx.query(`SELECT current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro`),
        {
          isolation: 'serializable',
          readOnly: true,
        },
      );
      expect(iso).toMatchObject({ command: 'SELECT', rowCount: 1, rows: [{ iso: 'serializable', ro: 'on' }] });
    });
  });

  it('a write’s COMMIT is awaited: a deferred constraint failing there fails the transaction, nothing written', async () => {
    const name = `deferred-${driver.label}`;
    await withRequestDb(async (db) => {
      const err = (await db
        .transaction(async (tx) => {
          await tx.query('INSERT INTO rt_items (name) VALUES ($1)', [name]);
          await tx.query('INSERT INTO rt_items (name) VALUES ($1)', [name]);
        })
        .catch((e: unknown) => e)) as { code?: string };
      expect(err.code).toBe('23505');
      expect(await count(name)).toBe(0);
    });
  });

  it('a read-only transaction whose callback swallowed an error still hears 25P02 (its COMMIT is awaited)', async () => {
    await withRequestDb(async (db) => {
      const err = (await db
        .transaction(
          async (tx) => {
            await tx.query('SELECT 1/0').catch(() => {});
            return 'carried on';
          },
          { isolation: 'repeatable read', readOnly: true },
        )
        .catch((e: unknown) => e)) as { code?: string };
      expect(err.code).toBe('25P02');
    });
  });

  it('a read-only COMMIT answered early is read before the session ends: a clean Terminate, no cancel', async () => {
    const logged = proxyLog.length;
    await withRequestDb(async (db) => {
      const result = await db.transaction((tx) => tx.query('SELECT 1 AS one'), { isolation: 'repeatable read', readOnly: true });
      expect(result.rows).toEqual([{ one: 1 }]);
    });
    await until(() => proxyLog.slice(logged).some((l) => l.includes('WebSocket to')));
    expect(proxyLog.slice(logged).filter((l) => l.includes('WebSocket to'))).toEqual([expect.stringContaining('(session ended)')]);
  });
});

interface Chunk {
  from: 'client' | 'server';
  /** When the relay received it (performance.now()). */
  at: number;
}

/** Client bursts each followed by a server burst, among the chunks received before `until`. */
function roundTrips(chunks: Chunk[], until: number): number {
  let trips = 0;
  let clientWaiting = false;
  for (const c of chunks) {
    if (c.at >= until) break;
    if (c.from === 'client') clientWaiting = true;
    else if (clientWaiting) {
      trips++;
      clientWaiting = false;
    }
  }
  return trips;
}

/** A TCP relay that delays each direction by `oneWayMs` (order kept) and records every chunk. */
class TripRelay {
  readonly sessions: Chunk[][] = [];
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  private constructor(server: Server) {
    this.#server = server;
  }

  static async start(targetPort: number, oneWayMs: number): Promise<TripRelay> {
    const server = createServer();
    const relay = new TripRelay(server);
    server.on('connection', (client) => {
      const upstream = connect({ host: '127.0.0.1', port: targetPort });
      const chunks: Chunk[] = [];
      relay.sessions.push(chunks);
      for (const s of [client, upstream]) {
        relay.#sockets.add(s);
        s.setNoDelay(true);
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
        s.on('close', () => relay.#sockets.delete(s));
      }
      const forward = (from: Socket, to: Socket, side: Chunk['from']) => {
        const later = delayed(to, oneWayMs);
        from.on('data', (chunk) => {
          chunks.push({ from: side, at: performance.now() });
          later(chunk);
        });
        from.on('end', () => later(null));
      };
      forward(client, upstream, 'client');
      forward(upstream, client, 'server');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return relay;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise((resolve) => this.#server.close(resolve));
  }
}

/** Writes (or, for null, ends) `to` `delayMs` after each call, in call order. */
function delayed(to: Socket, delayMs: number): (chunk: Buffer | null) => void {
  const queue: { due: number; chunk: Buffer | null }[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  const pump = () => {
    timer = undefined;
    while (queue.length > 0 && queue[0]!.due <= performance.now()) {
      const { chunk } = queue.shift()!;
      if (to.destroyed) continue;
      if (chunk) to.write(chunk);
      else to.end();
    }
    if (queue.length > 0) timer = setTimeout(pump, Math.max(1, queue[0]!.due - performance.now()));
  };
  return (chunk) => {
    queue.push({ due: performance.now() + delayMs, chunk });
    timer ??= setTimeout(pump, delayMs);
  };
}

/**
 * The WebSocket path as it was before issue 13: bytes piped both ways between the socket and
 * Postgres, which then runs the startup with the client itself.
 */
async function startBytePipe(): Promise<{ port: number; close(): Promise<void> }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  wss.on('connection', (ws, req) => {
    const [host, port] = new URL(req.url ?? '/', 'http://pipe.local').searchParams.get('address')!.split(':');
    const tcp = connect({ host: host!, port: Number(port) });
    tcp.setNoDelay(true);
    ws.on('message', (data: Buffer) => tcp.write(data));
    tcp.on('data', (chunk) => ws.send(chunk));
    tcp.on('close', () => ws.close());
    tcp.on('error', () => ws.terminate());
    ws.on('close', () => tcp.end());
    ws.on('error', () => tcp.destroy());
  });
  return {
    port: (wss.address() as { port: number }).port,
    close: () => new Promise((resolve) => wss.close(() => resolve())),
  };
}

async function until(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
