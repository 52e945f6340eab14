/**
 * Start-up failures of the real entry point (`tsx src/runtime/node.ts`, what `npm run start:node`
 * runs), spawned as its own process: each exits non-zero with exactly one line on stderr that
 * names what to fix and never echoes a secret.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

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
    const child = spawn(TSX, ['src/runtime/node.ts'], {
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

  it('an unreachable database: one line naming DATABASE_URL, no password, host or user', async () => {
    const exit = await runGateway({ DATABASE_URL: 'postgres://someuser:s3cret@127.0.0.1:1/db', POOL_CONNECTION_TIMEOUT_MS: '2000' });
    expectOneLine(exit, 'DATABASE_URL', 's3cret');
    expect(exit.stderr).not.toContain('someuser');
    expect(exit.stderr).not.toContain('127.0.0.1:1');
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
