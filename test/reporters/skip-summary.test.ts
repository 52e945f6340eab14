/**
 * The closing line about skipped tests (skip-summary.ts): vitest itself, run in a child process on
 * a fixture project, with the config's reporters and with the command line's (as .ci/run gives them).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { skipSummary } from './skip-summary.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const FIXTURES = fileURLToPath(new URL('./fixtures', import.meta.url));

/** `vitest run` on the fixture project; its stdout's lines (a failed run's too). */
async function vitest(args: string[]): Promise<string[]> {
  // A fresh run, not a nested worker of this one: none of this worker's VITEST* variables.
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('VITEST')));
  Object.assign(env, { NO_COLOR: '1', FORCE_COLOR: '0' });
  const { stdout } = await run(join(ROOT, 'node_modules/.bin/vitest'), ['run', '--root', FIXTURES, ...args], {
    cwd: FIXTURES,
    env,
    timeout: 60_000,
  }).catch((err: { stdout?: string; code?: unknown }) => {
    if (typeof err.stdout !== 'string' || err.code !== 1) throw err;
    return { stdout: err.stdout };
  });
  return stdout.trim().split('\n');
}

const CLOSING =
  'poolgate: 4 tests skipped: 3 need a real PostgreSQL (set TEST_DATABASE_URL=postgres://… to run them), 1 give another reason in their names';

describe('the closing line of a run', () => {
  it('with the config’s reporters: the last line counts the skips', async () => {
    const lines = await vitest(['skips.fixture.ts', 'plain.fixture.ts']);
    expect(lines.at(-1)).toBe(CLOSING);
  });

  it('with reporters from the command line, as .ci/run gives them, it is still there', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'poolgate-skip-summary-'));
    try {
      const outputFile = join(dir, 'result.json');
      const lines = await vitest([
        'skips.fixture.ts',
        'plain.fixture.ts',
        '--reporter=default',
        '--reporter=json',
        `--outputFile=${outputFile}`,
      ]);
      // After the default reporter's summary; only the json reporter's "report written to" follows.
      expect(lines.slice(-2)).toEqual([CLOSING, `JSON report written to ${outputFile}`]);
      expect(JSON.parse(await readFile(outputFile, 'utf8'))).toMatchObject({ numPendingTests: 4, numPassedTests: 2 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('nothing skipped: no line', async () => {
    const lines = await vitest(['plain.fixture.ts']);
    expect(lines.join('\n')).not.toContain('skipped');
  });

  it('tests left out by a failed beforeAll are the failure vitest reports, not skips', async () => {
    const lines = await vitest(['hook-fails.fixture.ts']);
    expect(lines.join('\n')).toContain('↓ never runs');
    expect(lines.join('\n')).not.toContain('poolgate:');
  });

  it('a name filter counts only the skips it selected', async () => {
    const lines = await vitest(['skips.fixture.ts', '-t', 'on PostgreSQL']);
    expect(lines.at(-1)).toBe('poolgate: 2 tests skipped: they need a real PostgreSQL (set TEST_DATABASE_URL=postgres://… to run them)');
  });
});

describe('skipSummary', () => {
  it('words each mix of reasons', () => {
    expect(skipSummary({ needDatabase: 0, other: 0 })).toBeUndefined();
    expect(skipSummary({ needDatabase: 1, other: 0 })).toBe(
      'poolgate: 1 test skipped: they need a real PostgreSQL (set TEST_DATABASE_URL=postgres://… to run them)',
    );
    expect(skipSummary({ needDatabase: 0, other: 2 })).toBe('poolgate: 2 tests skipped, each with its reason in its name');
  });
});
