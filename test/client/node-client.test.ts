/**
 * `poolgate/functions` on PostgreSQL (without TEST_DATABASE_URL on the embedded PGlite, which skips
 * the three cases that need a second session or a server-side cancel): the guide's API
 * (executeQuery, the `sql` tag, executeTransaction, healthCheck, getStats, getPgPool,
 * getNeonClient) through the core — values never interpolated, BEGIN … COMMIT done for the caller (and refused inside the callback), a
 * serialization failure retried as a whole and committed once, deadlines and aborts cancelled on
 * the server, pool exhaustion as a stable code, and the module-level default client built lazily.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import * as functions from '../../src/runtime/functions.js';
import { AppError, ConfigError, createNodeClient, statement, type NodeClient } from '../../src/runtime/functions.js';
import { createTestDatabase, onRealPostgres, PGLITE_CANNOT, realPostgresUrl, type TestDatabase } from '../helpers/db.js';
import { freePort } from '../helpers/wait.js';

const FUNCTIONS_MODULE = fileURLToPath(new URL('../../src/runtime/functions.ts', import.meta.url));

let db: TestDatabase;
let client: NodeClient;
const opened: NodeClient[] = [];

/** A client of the test's own on the test database (closed in afterAll). */
function nodeClient(env: Record<string, string> = {}): NodeClient {
  const c = createNodeClient({ env: { DATABASE_URL: db.url, POOL_MIN: '0', LOG_LEVEL: 'silent', ...env } });
  opened.push(c);
  return c;
}

const tag = () => randomBytes(4).toString('hex');

async function waitFor(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const activeWith = async (marker: string) =>
  Number(
    (
      await db.admin(`SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()`, [
        `%${marker}%`,
      ])
    ).rows[0].n,
  );

const itemsNamed = async (name: string) => Number((await db.admin('SELECT count(*) AS n FROM items WHERE name = $1', [name])).rows[0].n);

beforeAll(async () => {
  db = await createTestDatabase('poolgate_client');
  await db.admin('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)');
  await db.admin('CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)');
  client = nodeClient({ POOL_MAX: '4' });
});

afterAll(async () => {
  await functions.closePool();
  for (const c of opened) await c.close().catch(() => {});
  await db?.drop();
});

describe('a database that is down (a real closed port)', () => {
  const calls: [string, (c: NodeClient) => Promise<unknown>][] = [
    ['executeQuery read', (c) => c.executeQuery('SELECT 1', [], 'read')],
    ['executeQuery write', (c) => c.executeQuery('SELECT 1')],
    ['executeTransaction', (c) => c.executeTransaction((tx) => tx.query('SELECT 1'))],
    ['sql', (c) => c.sql`SELECT ${1}::int`],
    ['readBatch', (c) => c.readBatch([statement`SELECT ${1}::int`])],
  ];
  it.each(calls)(
    '%s fails with AppError database_unavailable (503): the driver error kept as its cause, no address, password or stack in its message',
    async (_name, call) => {
      const port = await freePort();
      const down = createNodeClient({ connectionString: `postgres://app:s3cret-pw@127.0.0.1:${port}/notes`, env: { LOG_LEVEL: 'silent' } });
      opened.push(down);
      const err = await call(down).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AppError);
      expect(err).toMatchObject({ status: 503, code: 'database_unavailable', cause: { code: 'ECONNREFUSED' } });
      expect((err as Error).message).not.toMatch(new RegExp(`${port}|s3cret|127\\.0\\.0\\.1|\\sat\\s`));
    },
  );
});

describe('createNodeClient on PostgreSQL (on PGlite without TEST_DATABASE_URL)', () => {
  describe('executeQuery and the sql tag', () => {
    it('writes and reads; a read may be declared as a kind or an option', async () => {
      const name = `q-${tag()}`;
      const inserted = await client.executeQuery<{ id: number }>('INSERT INTO items (name) VALUES ($1) RETURNING id', [name]);
      expect(inserted.rowCount).toBe(1);
      expect(inserted.command).toBe('INSERT');
      const read = await client.executeQuery<{ name: string }>('SELECT name FROM items WHERE id = $1', [inserted.rows[0]!.id], 'read');
      expect(read.rows).toEqual([{ name }]);
      const again = await client.executeQuery('SELECT name FROM items WHERE id = $1', [inserted.rows[0]!.id], {
        kind: 'read',
        timeoutMs: 5_000,
      });
      expect(again.rows).toEqual([{ name }]);
    });

    it("refuses the guide's kind 'query' with a sentence naming the two kinds", async () => {
      await expect(client.executeQuery('SELECT 1', [], 'query' as never)).rejects.toThrow(
        /kind must be 'read' \(may run again after a lost connection\) or 'write' \(the default\), got "query"/,
      );
    });

    it('sends template values as parameters: a quote and a literal "$1" arrive as text, never as SQL', async () => {
      const name = `O'Brien said $1; DROP TABLE items; -- ${tag()}`;
      const [row] = await client.sql<{ id: number }>`INSERT INTO items (name) VALUES (${name}) RETURNING id`;
      const rows = await client.sql.read<{ name: string; a: string; b: number }>`
        SELECT name, ${'$1'}::text AS a, ${2}::int AS b FROM items WHERE id = ${row!.id}`;
      expect(rows).toEqual([{ name, a: '$1', b: 2 }]);
      expect(await itemsNamed(name)).toBe(1);
      expect(statement`SELECT ${1}, ${'x'}`).toEqual({ text: 'SELECT $1, $2', params: [1, 'x'] });
    });

    it('refuses sql called with a plain string (its values would be inside the SQL text)', async () => {
      const id = 1;
      await expect((client.sql as unknown as (text: string) => Promise<unknown>)(`SELECT * FROM items WHERE id = ${id}`)).rejects.toThrow(
        /sql is a tagged template .* For text with \$1 placeholders use executeQuery\(text, params\)/,
      );
    });

    it('reads a batch from one snapshot', async () => {
      const name = `batch-${tag()}`;
      await client.executeQuery('INSERT INTO items (name) VALUES ($1)', [name]);
      const [count, one] = await client.readBatch([
        statement`SELECT count(*)::int AS n FROM items WHERE name = ${name}`,
        statement`SELECT ${name}::text AS name`,
      ]);
      expect(count!.rows).toEqual([{ n: 1 }]);
      expect(one!.rows).toEqual([{ name }]);
    });
  });

  describe('executeTransaction', () => {
    it('runs BEGIN … COMMIT for the callback and returns its value', async () => {
      const name = `tx-${tag()}`;
      const id = await client.executeTransaction(async (tx) => {
        const [row] = await tx.sql<{ id: number }>`INSERT INTO items (name) VALUES (${name}) RETURNING id`;
        await tx.query('INSERT INTO items (name) VALUES ($1)', [`${name}-2`]);
        return row!.id;
      });
      expect(typeof id).toBe('number');
      expect(await itemsNamed(name)).toBe(1);
      expect(await itemsNamed(`${name}-2`)).toBe(1);
    });

    it('rolls back when the callback throws, and rethrows its error', async () => {
      const name = `rollback-${tag()}`;
      const boom = new Error('validation failed after the insert');
      await expect(
        client.executeTransaction(async (tx) => {
          await tx.query('INSERT INTO items (name) VALUES ($1)', [name]);
          throw boom;
        }),
      ).rejects.toBe(boom);
      expect(await itemsNamed(name)).toBe(0);
    });

    it.skipIf(!realPostgresUrl)(
      onRealPostgres(
        'retries the whole transaction once on a real serialization failure (40001) and commits it exactly once',
        PGLITE_CANNOT.secondSession,
      ),
      async () => {
        await db.admin('INSERT INTO counters (id, n) VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0');
        const c = nodeClient();
        const name = `serial-${tag()}`;
        let attempts = 0;
        const seen = await c.executeTransaction(
          async (tx) => {
            attempts++;
            await tx.query('INSERT INTO items (name) VALUES ($1)', [name]); // takes the snapshot
            const [before] = await tx.sql<{ n: number }>`SELECT n FROM counters WHERE id = ${1}`;
            // First attempt only: another session commits a change to the row after our snapshot.
            if (attempts === 1) await db.admin('UPDATE counters SET n = n + 100 WHERE id = 1');
            await tx.query('UPDATE counters SET n = n + 1 WHERE id = 1');
            return before!.n;
          },
          { isolation: 'repeatable read' },
        );
        expect(attempts).toBe(2);
        expect(seen).toBe(100);
        expect((await db.admin('SELECT n FROM counters WHERE id = 1')).rows[0].n).toBe(101);
        expect(await itemsNamed(name)).toBe(1);
        const stats = c.getStats().routes.find((r) => r.method === 'executeTransaction');
        expect(stats).toMatchObject({ route: 'write', count: 1, retryCount: 1, statusClasses: { '2xx': 1 } });
      },
    );

    it("refuses the guide's BEGIN inside the callback: nothing of the callback is committed", async () => {
      const name = `guide-${tag()}`;
      await expect(
        client.executeTransaction(async (tx) => {
          await tx.query('INSERT INTO items (name) VALUES ($1)', [name]);
          await tx.query('BEGIN');
          await tx.query('COMMIT');
        }),
      ).rejects.toThrow(/executeTransaction run BEGIN and COMMIT themselves, and ROLLBACK on any error: remove "BEGIN" from the callback/);
      expect(await itemsNamed(name)).toBe(0);
      await expect(client.executeTransaction((tx) => tx.query(' /* end early */ commit'))).rejects.toThrow(/remove "COMMIT"/);
      await expect(client.executeTransaction((tx) => tx.sql`START TRANSACTION`)).rejects.toThrow(/remove "START TRANSACTION"/);
    });

    it('allows savepoints inside the callback (ROLLBACK TO is not a transaction end)', async () => {
      const name = `savepoint-${tag()}`;
      await client.executeTransaction(async (tx) => {
        await tx.query('INSERT INTO items (name) VALUES ($1)', [name]);
        await tx.query('SAVEPOINT before_second');
        await tx.query('INSERT INTO items (name) VALUES ($1)', [name]);
        await tx.query('ROLLBACK TO SAVEPOINT before_second');
      });
      expect(await itemsNamed(name)).toBe(1);
    });

    it('refuses BEGIN/COMMIT as a lone statement, which would strand a pooled connection in a transaction', async () => {
      await expect(client.executeQuery('BEGIN')).rejects.toThrow(
        /"BEGIN" refused: it would leave a pooled connection inside a transaction: use db\.transaction\(fn\) \(executeTransaction\(fn\)/,
      );
      await expect(client.sql`-- tidy up\nROLLBACK`).rejects.toThrow(/"ROLLBACK" refused: it would leave/);
    });

    it('refuses a tx used after its callback returned', async () => {
      let kept: functions.Transaction | undefined;
      await client.executeTransaction((tx) => {
        kept = tx;
        return Promise.resolve();
      });
      await expect(kept!.query('SELECT 1')).rejects.toThrow(/This transaction has ended/);
    });
  });

  describe('deadlines, aborts and exhaustion', () => {
    it.skipIf(!realPostgresUrl)(
      onRealPostgres('timeoutMs cuts a pg_sleep short with code timeout and cancels it on the server', PGLITE_CANNOT.cancel),
      async () => {
        // A sleep that outlives the test: an answer at all means the deadline cut it short.
        const marker = `sleep_${tag()}`;
        const call = client.executeQuery(`SELECT pg_sleep(600) AS ${marker}`, [], { timeoutMs: 1_000 });
        await waitFor(async () => (await activeWith(marker)) === 1, 'the sleep to run on the server');
        const err = await call.catch((e: unknown) => e);
        expect(err).toBeInstanceOf(AppError);
        expect(err).toMatchObject({ code: 'timeout', status: 504 });
        await waitFor(async () => (await activeWith(marker)) === 0, 'the sleep to be cancelled on the server', 20_000);
      },
    );

    it.skipIf(!realPostgresUrl)(
      onRealPostgres('an aborted signal cancels the call with code client_closed', PGLITE_CANNOT.cancel),
      async () => {
        const marker = `abort_${tag()}`;
        const controller = new AbortController();
        const call = client.executeQuery(`SELECT pg_sleep(600) AS ${marker}`, [], { signal: controller.signal });
        await waitFor(async () => (await activeWith(marker)) === 1, 'the sleep to run on the server');
        controller.abort();
        await expect(call).rejects.toMatchObject({ code: 'client_closed' });
        await waitFor(async () => (await activeWith(marker)) === 0, 'the sleep to be cancelled on the server', 20_000);
      },
    );

    it('gives pool_exhausted when no connection frees up within POOL_ACQUIRE_TIMEOUT_MS', async () => {
      const small = nodeClient({ POOL_MAX: '1', POOL_ACQUIRE_TIMEOUT_MS: '200' });
      // The one connection is held by a transaction that waits for this test, not for the server.
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      const holder = small.executeTransaction(async (tx) => {
        await tx.query('SELECT 1');
        await held;
      });
      await waitFor(() => small.getStats().pool?.active === 1, 'the first call to hold the connection');
      const err = await small.executeQuery('SELECT 1', [], 'read').catch((e: unknown) => e);
      release();
      await holder;
      expect(err).toBeInstanceOf(AppError);
      expect(err).toMatchObject({ code: 'pool_exhausted', status: 503 });
      const reads = small.getStats().routes.find((r) => r.method === 'executeQuery' && r.route === 'read');
      expect(reads).toMatchObject({ count: 1, errorCount: 1, statusClasses: { '5xx': 1 } });
      expect(small.getStats().pool).toMatchObject({ acquireTimeoutCount: 1 });
    });
  });

  describe('health, stats, escape hatches, close', () => {
    it('healthCheck answers healthy with a latency, and unhealthy with a reason code on an unreachable server', async () => {
      expect(await client.healthCheck()).toEqual({ healthy: true, latencyMs: expect.any(Number) });
      const down = createNodeClient({ connectionString: 'postgres://postgres@127.0.0.1:1/nowhere', env: { LOG_LEVEL: 'silent' } });
      opened.push(down);
      const report = await down.healthCheck(1_000);
      expect(report.healthy).toBe(false);
      expect(report.reason).toEqual(expect.any(String));
    });

    it('getStats counts each call type and kind, beside the pool figures and the breaker', async () => {
      const c = nodeClient();
      await c.executeQuery('SELECT 1', [], 'read');
      await c.executeQuery('SELECT 2', [], 'read');
      await c.executeQuery('SELECT 3');
      await c.sql`SELECT ${4}::int`;
      await c.sql.read`SELECT ${5}::int`;
      await c.executeTransaction((tx) => tx.query('SELECT 6'));
      await c.executeTransaction((tx) => tx.query('SELECT 7'), { readOnly: true });
      const stats = c.getStats();
      const counts = Object.fromEntries(stats.routes.map((r) => [`${r.method} ${r.route}`, r.count]));
      expect(counts).toEqual({
        'executeQuery read': 2,
        'executeQuery write': 1,
        'sql write': 1,
        'sql read': 1,
        'executeTransaction write': 1,
        'executeTransaction read': 1,
      });
      const tx = stats.routes.find((r) => r.method === 'executeTransaction' && r.route === 'write')!;
      expect(tx.queries.sum).toBe(3); // BEGIN, SELECT 6, COMMIT
      expect(tx.clients).toEqual({ 'pg-pool': 1 });
      // POOL_MAX 20 by default: up to 4 pipelined lanes for reads, the pool gets what the open ones
      // leave; calls one at a time keep one lane open (PGlite, one backend for every connection, gets
      // none). Each of the 7 calls took either a pooled session or a lane.
      const piped = stats.routes.reduce((n, r) => n + (r.clients['pg-pipeline'] ?? 0), 0);
      expect(stats.routes.filter((r) => r.clients['pg-pipeline']).every((r) => r.route === 'read')).toBe(true);
      // The pool's size: the share of POOL_BUDGET (POOL_MAX 20 on a quiet server) less the lanes open.
      const share = stats.pool?.budget?.share ?? 20;
      expect(stats.pool).toMatchObject({ acquisitionCount: 7 - piped, max: share - (db.real ? 1 : 0) });
      expect(stats.pool?.pipeline).toMatchObject({ lanes: db.real ? 1 : 0, inFlight: 0 });
      expect(stats.breakers).toEqual([expect.objectContaining({ name: 'postgres', state: 'closed' })]);
      expect(JSON.parse(JSON.stringify(stats))).toEqual(stats);
    });

    it('getPgPool returns the working pg.Pool under the client', async () => {
      const { rows } = await client.getPgPool().query<{ x: number }>('SELECT 41 + 1 AS x');
      expect(rows).toEqual([{ x: 42 }]);
    });

    it('getNeonClient is the Neon HTTP driver, pointed at NEON_PROXY_URL when set', async () => {
      let proxy: NeonProxy | undefined;
      try {
        proxy = await startNeonProxy({ databaseUrls: [db.url], port: 0, logLevel: 'silent' });
        const neonSql = nodeClient({ NEON_PROXY_URL: proxy.url }).getNeonClient();
        expect(await neonSql`SELECT ${"it's"}::text AS v`).toEqual([{ v: "it's" }]);
      } finally {
        await proxy?.close();
      }
    });

    it('close() runs once (the same promise) and later calls fail with shutting_down', async () => {
      const c = nodeClient();
      await c.executeQuery('SELECT 1');
      const first = c.close();
      expect(c.close()).toBe(first);
      await first;
      await expect(c.executeQuery('SELECT 1')).rejects.toMatchObject({ code: 'shutting_down' });
      expect(await c.healthCheck()).toEqual({ healthy: false, latencyMs: 0, reason: 'shutting_down' });
    });
  });

  describe('the module-level default client', () => {
    it('reads process.env lazily: a missing DATABASE_URL is one ConfigError line, and the next call tries again', async () => {
      const saved = { DATABASE_URL: process.env.DATABASE_URL, LOG_LEVEL: process.env.LOG_LEVEL };
      try {
        delete process.env.DATABASE_URL;
        const err = await functions.executeQuery('SELECT 1').catch((e: unknown) => e);
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as Error).message).toMatch(
          /^DATABASE_URL: is required \(a postgres:\/\/ URL; or pass createNodeClient\(\{ connectionString \}\)\)$/,
        );
        expect(() => functions.getStats()).toThrow(ConfigError);

        process.env.DATABASE_URL = db.url;
        process.env.LOG_LEVEL = 'silent';
        const name = `default-${tag()}`;
        await functions.executeTransaction((tx) => tx.query('INSERT INTO items (name) VALUES ($1)', [name]));
        expect(await functions.sql.read`SELECT name FROM items WHERE name = ${name}`).toEqual([{ name }]);
        expect((await functions.executeQuery('SELECT count(*)::int AS n FROM items WHERE name = $1', [name], 'read')).rows).toEqual([
          { n: 1 },
        ]);
        expect(await functions.healthCheck()).toMatchObject({ healthy: true });
        expect((await functions.getPgPool().query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
        expect(functions.getStats().routes.map((r) => `${r.method} ${r.route}`)).toEqual(
          expect.arrayContaining(['executeTransaction write', 'sql read', 'executeQuery read']),
        );

        const closing = functions.closePool();
        expect(functions.closePool()).toBe(closing);
        await closing;
      } finally {
        for (const [k, v] of Object.entries(saved)) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      }
    });
  });

  it('closeOnSignal: on SIGTERM the call in flight finishes, the pool ends, and the process dies of SIGTERM', async () => {
    const script = `
      const { createNodeClient } = await import(${JSON.stringify(FUNCTIONS_MODULE)});
      const c = createNodeClient({ closeOnSignal: true });
      c.executeQuery('SELECT pg_sleep(0.5), 42 AS answer').then((r) => console.log('answer ' + r.rows[0].answer));
      setTimeout(() => console.log('ready'), 200);
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      env: { ...process.env, DATABASE_URL: db.url, LOG_LEVEL: 'silent' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let errOut = '';
    let signalled = false;
    child.stderr.on('data', (d: Buffer) => (errOut += d.toString()));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!signalled && out.includes('ready')) signalled = child.kill('SIGTERM');
    });
    const signal = await exited;
    expect(errOut).toBe('');
    expect(out).toContain('answer 42');
    expect(signal).toBe('SIGTERM');
  });
});
