/**
 * Errors are classified by kind (SQLSTATE, system codes, and where a codeless driver failure
 * happened), once, in the connectors; never by message (issue 19). Real PostgreSQL.
 *
 * Before: a server error whose message said "Connection terminated" (here raised by the statement
 * itself, P0001) was taken for a lost connection: a read ran it again, it answered 503 and counted
 * against the breaker. The driver's read timeout (no code) is still a timeout; a real lost
 * connection is covered in backend-terminated.test.ts and the contract suite.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classified } from '../../src/db/connectors/driver-errors.js';
import { createPgPoolDatabase, type PgPoolDatabase } from '../../src/db/connectors/pg-pool.js';
import { failureKind, isConnectionError, isTimeoutError, markFailure, toAppError } from '../../src/errors.js';
import { POOL } from '../contract/backends.js';
import { createTestDatabase, realPostgresUrl, type TestDatabase, onRealPostgres, PGLITE_CANNOT } from '../helpers/db.js';
import { recordingObserver } from '../helpers/observer.js';

const observer = recordingObserver;

const failure = async (work: Promise<unknown>) =>
  work.then(
    () => {
      throw new Error('expected a failure');
    },
    (e: unknown) => e,
  );

describe.skipIf(!realPostgresUrl)(onRealPostgres('errors by kind, not by message (real PostgreSQL)', PGLITE_CANNOT.cancel), () => {
  let db: TestDatabase;
  let database: PgPoolDatabase;

  beforeAll(async () => {
    db = await createTestDatabase('poolgate_errkind');
    database = createPgPoolDatabase(
      { ...POOL, connectionString: db.url, max: 2, min: 0, pipelineLanes: 0, applicationName: 'errkind', queryTimeoutMs: 300 },
      { Pool: pg.Pool, Client: pg.Client },
    );
  });

  afterAll(async () => {
    await database?.close().catch(() => {});
    await db?.drop();
  });

  it("a server error that says 'Connection terminated' is the SQL's (P0001): 500, not run again, the breaker untouched", async () => {
    const o = observer('read');
    const raise = "DO $$ BEGIN RAISE EXCEPTION 'Connection terminated unexpectedly'; END $$";
    const err = await failure(database.forRequest(o).query(raise));
    expect(err).toMatchObject({ code: 'P0001' });
    expect(isConnectionError(err)).toBe(false);
    expect(toAppError(err)).toMatchObject({ status: 500, code: 'internal' });
    expect(o.retries).toBe(0);
    expect(database.breakers()[0]).toMatchObject({ state: 'closed' });
  });

  it('the driver’s read timeout (no code) is a timeout: 504, and its connection is not reused', async () => {
    const err = await failure(database.forRequest(observer('transactional')).query('SELECT pg_sleep(2)'));
    expect(failureKind(err)).toBe('read_timeout');
    expect(isTimeoutError(err)).toBe(true);
    expect(toAppError(err)).toMatchObject({ status: 504, code: 'timeout' });
    const after = await database.forRequest(observer('transactional')).query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    expect(after.rows[0]!.pid).toBeTypeOf('number');
    expect(database.stats()?.closedCount).toBeGreaterThanOrEqual(1);
  });
});

describe('classified: a codeless driver error is named by where it happened', () => {
  it('connecting: connect_failed; on a statement: lost when the client says so, else a read timeout', () => {
    expect(failureKind(classified(new Error('timeout expired'), 'connect'))).toBe('connect_failed');
    expect(failureKind(classified(new Error('x'), 'statement', { _ended: true }))).toBe('connection_lost');
    expect(failureKind(classified(new Error('x'), 'statement', { _queryable: false }))).toBe('connection_lost');
    expect(failureKind(classified(new Error('Query read timeout'), 'statement', { _queryable: true }))).toBe('read_timeout');
  });
  it('errors with a code, and misuse (TypeError), are left as they are', () => {
    const server = Object.assign(new Error('Connection terminated'), { code: 'P0001' });
    expect(failureKind(classified(server, 'statement'))).toBeUndefined();
    expect(failureKind(classified(new TypeError('Connection terminated'), 'statement'))).toBeUndefined();
    expect(isConnectionError(new Error('Connection terminated unexpectedly'))).toBe(false);
    expect(isConnectionError(markFailure(new Error('anything'), 'connection_lost'))).toBe(true);
  });
});
