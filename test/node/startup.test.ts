/**
 * Start-up failures of the real entry point (`tsx src/fitness/entries/node.ts`, what `npm run start:node`
 * runs), spawned as its own process: each exits non-zero with exactly one line on stderr that
 * names what to fix and never echoes a secret.
 */
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseTarget } from '../../src/config.js';
import { AppError, describeStartupFailure } from '../../src/errors.js';
import { createBreaker } from '../../src/resilience/breaker.js';
import { startupErrorLine, StartupError } from '../../src/runtime/node.js';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';
import { privatePostgresAvailable, startPrivatePostgres, type PrivatePostgres } from '../helpers/private-postgres.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TSX = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the gateway with exactly `env` (plus PATH/HOME) and waits, bounded, for it to exit. */
function runGateway(env: Record<string, string>, timeoutMs = 30_000): Promise<Exit> {
  return new Promise((resolve, reject) => {
    const child = spawn(TSX, ['src/fitness/entries/node.ts'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', PORT: '0', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the gateway did not exit within ${timeoutMs} ms; stdout: ${stdout} stderr: ${stderr}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function expectOneLine(exit: Exit, mustName: string, secret: string) {
  expect(exit.code).not.toBe(0);
  expect(exit.code).not.toBeNull();
  const lines = exit.stderr.split('\n').filter((l) => l !== '');
  expect(lines, exit.stderr).toHaveLength(1);
  expect(exit.stderr.endsWith('\n')).toBe(true);
  expect(lines[0]).toContain(mustName);
  expect(lines[0]).toMatch(/^poolgate: /);
  expect(exit.stderr + exit.stdout).not.toContain(secret);
  expect(exit.stderr).not.toMatch(/\n\s+at /); // no stack
}

describe('start-up failures', () => {
  it('a malformed DATABASE_URL: one line naming DATABASE_URL, no password', async () => {
    const exit = await runGateway({ DATABASE_URL: 'postgres://user:s3cret@' });
    expectOneLine(exit, 'DATABASE_URL', 's3cret');
  });

  it('a DATABASE_URL that is not postgres://: one line naming DATABASE_URL, no password', async () => {
    const exit = await runGateway({ DATABASE_URL: 'mysql://user:s3cret@127.0.0.1/db' });
    expectOneLine(exit, 'DATABASE_URL', 's3cret');
  });

  it('an unreachable database: one line naming DATABASE_URL and the host:port refused, no password or user', async () => {
    const exit = await runGateway({ DATABASE_URL: 'postgres://someuser:s3cret@127.0.0.1:1/db', POOL_CONNECTION_TIMEOUT_MS: '2000' });
    expectOneLine(exit, 'DATABASE_URL', 's3cret');
    expect(exit.stderr).not.toContain('someuser');
    expect(exit.stderr).toBe('poolgate: connection refused to 127.0.0.1:1; is PostgreSQL running there? check DATABASE_URL\n');
  });

  it('a closed port: "connection refused to host:port", not circuit_open', async () => {
    const port = await closedPort();
    const exit = await runGateway({ DATABASE_URL: `postgres://someuser:s3cret@127.0.0.1:${port}/db` });
    expectOneLine(exit, 'DATABASE_URL', 's3cret');
    expect(exit.stderr).toBe(`poolgate: connection refused to 127.0.0.1:${port}; is PostgreSQL running there? check DATABASE_URL\n`);
    expect(exit.stderr).not.toContain('someuser');
  });

  const noSuchDatabase = onRealPostgres(
    'a database that does not exist: names it and DATABASE_URL, not "error 3D000"',
    PGLITE_CANNOT.databases,
  );
  it.skipIf(!realPostgresUrl)(noSuchDatabase, async () => {
    const url = new URL(realPostgresUrl!);
    url.pathname = '/poolgate_no_such_db';
    url.password = 's3cret';
    const exit = await runGateway({ DATABASE_URL: url.toString() });
    expectOneLine(exit, 'DATABASE_URL', 's3cret');
    expect(exit.stderr).toBe('poolgate: database "poolgate_no_such_db" does not exist; create it or check DATABASE_URL\n');
  });

  it('REQUEST_TIMEOUT_MS=-5: says it must be positive, with the value and the allowed range', async () => {
    const exit = await runGateway({ DATABASE_URL: 'postgres://u:s3cret@127.0.0.1:1/db', REQUEST_TIMEOUT_MS: '-5' });
    expectOneLine(exit, 'REQUEST_TIMEOUT_MS', 's3cret');
    expect(exit.stderr).toContain('REQUEST_TIMEOUT_MS: must be a positive whole number, got "-5"');
    expect(exit.stderr).toContain('1 to 3600000');
  });

  it('POOL_MAX=abc: one line naming POOL_MAX', async () => {
    const exit = await runGateway({ DATABASE_URL: 'postgres://u:s3cret@127.0.0.1:1/db', POOL_MAX: 'abc' });
    expectOneLine(exit, 'POOL_MAX', 's3cret');
  });

  it('POOL_MIN above POOL_MAX: one line naming POOL_MIN', async () => {
    const exit = await runGateway({ DATABASE_URL: 'postgres://u:s3cret@127.0.0.1:1/db', POOL_MAX: '2', POOL_MIN: '3' });
    expectOneLine(exit, 'POOL_MIN', 's3cret');
  });
});

/** A port nothing listens on (bound once to find it free, then closed). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe.skipIf(!privatePostgresAvailable)('start-up failures against a server that checks passwords (private cluster)', () => {
  let cluster: PrivatePostgres;
  beforeAll(async () => {
    cluster = await startPrivatePostgres({ password: 'right-password' });
  });
  afterAll(() => cluster?.destroy());

  it('a wrong password: one line naming DATABASE_URL and the refused credentials, no password', async () => {
    const exit = await runGateway({ DATABASE_URL: cluster.url('postgres', 'wr0ng-s3cret') });
    expectOneLine(exit, 'DATABASE_URL', 'wr0ng-s3cret');
    expect(exit.stderr).toContain('refused the credentials');
    expect(exit.stderr).not.toContain('right-password');
  });
});

describe('start-up lines for errors behind an open breaker (in process)', () => {
  const target = databaseTarget('postgres://alice:s3cret@db.internal:5433/fitness')!;

  it('circuit_open at start-up names what opened the breaker: a refused connection', async () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 10.0.0.1:5433'), { code: 'ECONNREFUSED' });
    const breaker = createBreaker('postgres', { isFailure: () => true, threshold: 1 });
    await breaker.execute(() => Promise.reject(refused)).catch(() => {});
    const open = await breaker.execute(() => Promise.resolve()).catch((e: unknown) => e);
    expect(open).toBeInstanceOf(AppError);
    expect((open as AppError).code).toBe('circuit_open');
    const line = describeStartupFailure(open, target);
    expect(line).toBe('connection refused to db.internal:5433; is PostgreSQL running there? check DATABASE_URL');
    expect(startupErrorLine(new StartupError(line))).toBe(`poolgate: ${line}`);
  });

  it.each<[{ code?: string; message?: string }, string]>([
    [{ code: 'ENOTFOUND' }, 'cannot resolve the database host "db.internal"; check DATABASE_URL'],
    [{ code: '3D000' }, 'database "fitness" does not exist; create it or check DATABASE_URL'],
    [{ code: '28P01' }, 'the database at db.internal:5433 refused the credentials (28P01); check DATABASE_URL'],
    [{ message: 'timeout expired' }, 'timed out connecting to db.internal:5433; is it reachable from here? check DATABASE_URL'],
  ])('%j → %s, never the user or password', (fields, expected) => {
    const line = describeStartupFailure(Object.assign(new Error('connect failed'), fields), target)!;
    expect(line).toBe(expected);
    expect(line).not.toMatch(/alice|s3cret/);
  });
});
