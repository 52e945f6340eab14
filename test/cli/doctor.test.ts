/**
 * `poolgate doctor` as a process, against the test's databases, finding each misconfiguration in
 * its own case (exit 1, the ✗ line with its fix): DATABASE_URL missing but POSTGRES_URL set, an
 * unreachable host, instances × POOL_MAX above max_connections, migrations missing (poolgate's
 * tables, then an app's), a short FORWARD_SECRET, a clock 45 s off (POOLGATE_DOCTOR_CLOCK_OFFSET_MS,
 * doctor's test hook). And a sound deployment: exit 0. No case prints the password or the URL.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { runPoolgate, type BinRun } from '../helpers/poolgate-bin.js';
import { freePort } from '../helpers/wait.js';

const PASSWORD = 'doctor-s3cret-pw';
const SECRET = 'q8Vd2mZ1xR7kLp4sT0bN6wYc3hJ9fGa5';
let dir: string;
let fresh: TestDatabase;
let migrated: TestDatabase;
/** The database's URL with a password in it (trust auth ignores it): doctor must never print it. */
let freshUrl: string;
let migratedUrl: string;

const withPassword = (url: string) => {
  const u = new URL(url);
  u.password = PASSWORD;
  return u.toString();
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'poolgate-doctor-'));
  await writeFile(
    join(dir, 'notes-app.mjs'),
    `export default { name: 'notes', routes: [], migrations: [{ id: 1, name: 'notes', sql: 'CREATE TABLE notes (id serial PRIMARY KEY)' }] };\n`,
  );
  [fresh, migrated] = await Promise.all([createTestDatabase('poolgate_doctor'), createTestDatabase('poolgate_doctor')]);
  freshUrl = withPassword(fresh.url);
  migratedUrl = withPassword(migrated.url);
  const run = await runPoolgate(['migrate'], { DATABASE_URL: migrated.url }, dir);
  expect(run.code, run.stderr).toBe(0);
}, 60_000);
afterAll(async () => {
  await Promise.all([fresh?.drop(), migrated?.drop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

const doctor = async (env: Record<string, string>, args: string[] = []): Promise<BinRun> => {
  const run = await runPoolgate(['doctor', ...args], env, dir);
  const all = run.stdout + run.stderr;
  expect(all, 'the password').not.toContain(PASSWORD);
  for (const url of [freshUrl, migratedUrl, fresh.url, migrated.url]) expect(all, 'a whole URL').not.toContain(url);
  expect(run.stderr, JSON.stringify(run)).toBe('');
  return run;
};

/** The first checklist line for `check` (after its mark). */
const line = (run: BinRun, check: string) =>
  run.stdout.split('\n').find((l) => l.slice(2).startsWith(`${check}: `)) ?? `(no "${check}" line in:\n${run.stdout})`;

/** A sound Node gateway's environment on the migrated database. */
const sound = () => ({
  DATABASE_URL: migratedUrl,
  FORWARD_SECRET: SECRET,
  NODE_FUNCTION_URL: 'https://site.example/.netlify/functions/gateway',
});

describe('poolgate doctor', () => {
  it("a sound environment: ✗ only for the app's unapplied migration; once applied, every check ✓ and exit 0", async () => {
    const run = await doctor(sound(), ['--app', 'notes-app.mjs', '--instances', '2']);
    // The app's migration 1 is not applied on this database: the only ✗ expected.
    expect(run.code).toBe(1);
    expect(run.stdout.split('\n').filter((l) => l.startsWith('✗'))).toEqual([
      '✗ migrations: app "notes": migration 1 not applied (of 1) — fix: run poolgate migrate --app notes-app.mjs',
    ]);
    const applied = await runPoolgate(['migrate', '--app', 'notes-app.mjs'], { DATABASE_URL: migrated.url }, dir);
    expect(applied.stdout).toBe('poolgate: applied migrations 1\n');
    const again = await doctor(sound(), ['--app', 'notes-app.mjs', '--instances', '2']);
    expect(again.code, again.stdout).toBe(0);
    expect(again.stdout).toMatch(/^poolgate doctor: the environment as the gateway reads it, for 2 instances\n/);
    for (const check of [
      'connection variable',
      'configuration',
      'reachability',
      'TLS',
      'pooled or direct',
      'clock skew',
      'forward secret',
      'edge → Node',
    ])
      expect(line(again, check), again.stdout).toMatch(/^✓ /);
    expect(again.stdout).toMatch(/^✓ migrations: app "notes": all 1 migrations applied$/m);
    expect(line(again, 'connection variable')).toMatch(/DATABASE_URL is set \(127\.0\.0\.1:\d+, database "[^"]+"\)/);
    expect(again.stdout).toMatch(/\nno problems; \d+ warnings? \(!\)\n$/);
  });

  it('no DATABASE_URL but POSTGRES_URL: ✗ "set DATABASE_URL=$POSTGRES_URL", and the checks use POSTGRES_URL', async () => {
    const run = await doctor({ POSTGRES_URL: freshUrl, FORWARD_SECRET: SECRET });
    expect(run.code).toBe(1);
    expect(line(run, 'connection variable')).toMatch(
      /^✗ connection variable: DATABASE_URL is not set, but POSTGRES_URL is; poolgate reads DATABASE_URL only .* — fix: set DATABASE_URL=\$POSTGRES_URL$/,
    );
    expect(line(run, 'reachability')).toMatch(/^✓ reachability: connected to 127\.0\.0\.1:\d+/);
  });

  it('an unreachable host: ✗ reachability naming host:port, the database checks skipped', async () => {
    const port = await freePort();
    const run = await doctor({ DATABASE_URL: `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/app`, FORWARD_SECRET: SECRET });
    expect(run.code).toBe(1);
    expect(line(run, 'reachability')).toBe(
      `✗ reachability: connection refused to 127.0.0.1:${port}; is PostgreSQL running there? check DATABASE_URL — fix: check DATABASE_URL, the host's firewall and that PostgreSQL runs`,
    );
    expect(line(run, 'migrations')).toBe('- migrations: not checked (the database did not answer)');
  });

  it('sslmode=require against a server that offers no TLS: ✗ TLS saying so (the shared test server runs without TLS)', async () => {
    const run = await doctor({ DATABASE_URL: `${freshUrl}?sslmode=verify-full`, FORWARD_SECRET: SECRET });
    expect(run.code).toBe(1);
    expect(line(run, 'TLS')).toBe(
      '✗ TLS: sslmode=verify-full but the server does not offer TLS: connecting fails — fix: enable TLS on the server, or use the host your provider gives for TLS',
    );
  });

  it('instances × POOL_MAX above max_connections (POOL_BUDGET=off): ✗ with a POOL_MAX that fits', async () => {
    const settings = await fresh.admin(
      "SELECT current_setting('max_connections')::int AS max, current_setting('superuser_reserved_connections')::int AS reserved",
    );
    const available = settings.rows[0].max - settings.rows[0].reserved;
    const instances = Math.ceil(available / 20) + 1;
    const env = { DATABASE_URL: freshUrl, FORWARD_SECRET: SECRET, POOL_MAX: '20', POOL_BUDGET: 'off' };
    const run = await doctor(env, ['--instances', String(instances)]);
    expect(run.code).toBe(1);
    expect(line(run, 'connections')).toMatch(
      new RegExp(
        `^✗ connections: ${instances} instances × POOL_MAX 20 = ${instances * 20} > max_connections ${settings.rows[0].max} − superuser_reserved_connections ${settings.rows[0].reserved} = ${available}: .*53300.* — fix: set POOL_MAX=${Math.floor((available - 3) / instances)} \\(or fewer\\)`,
      ),
    );
    // The same demand under POOL_BUDGET=auto is shared, not refused: a warning.
    const auto = await doctor({ ...env, POOL_BUDGET: 'auto' }, ['--instances', String(instances)]);
    expect(line(auto, 'connections')).toMatch(/^! connections: .* shares it, about \d+ per instance instead of 20/);
    const one = await doctor(env, ['--instances', '1']);
    expect(line(one, 'connections')).toMatch(/^✓ connections: 1 instance × POOL_MAX 20 = 20 ≤ /);
  });

  it("a database never migrated: ✗ poolgate's tables missing, with the command", async () => {
    const run = await doctor({ DATABASE_URL: freshUrl, FORWARD_SECRET: SECRET });
    expect(run.code).toBe(1);
    expect(line(run, 'migrations')).toBe(
      "✗ migrations: poolgate's tables are missing (poolgate_migrations, poolgate_idempotency_keys, poolgate_forward_nonces): this database was never migrated — fix: run poolgate migrate --app <module> (the Node gateway also migrates at start; a Netlify function does not)",
    );
  });

  it('a short FORWARD_SECRET: ✗ naming its length and the minimum, never its value', async () => {
    const run = await doctor({ DATABASE_URL: migratedUrl, FORWARD_SECRET: 'too-short-secret' });
    expect(run.code).toBe(1);
    expect(line(run, 'forward secret')).toMatch(
      /^✗ forward secret: FORWARD_SECRET is 16 characters, under 32: .* — fix: set FORWARD_SECRET to 32\+ random/,
    );
    expect(run.stdout).not.toContain('too-short-secret');
  });

  it('a clock 45 s ahead of the server (the test hook): ✗ clock skew; 5 s: !', async () => {
    const run = await doctor({ ...sound(), POOLGATE_DOCTOR_CLOCK_OFFSET_MS: '45000' });
    expect(run.code).toBe(1);
    // The mark and the direction; the figure is off by up to half a round trip (a loaded machine).
    expect(line(run, 'clock skew')).toMatch(
      /^✗ clock skew: this machine's clock is 4\d\.\d s ahead of the database server's .* forwards between machines this far apart are refused — fix: synchronise the clock/,
    );
    const drift = await doctor({ ...sound(), POOLGATE_DOCTOR_CLOCK_OFFSET_MS: '-5000' });
    expect(line(drift, 'clock skew')).toMatch(/^! clock skew: this machine's clock is \d\.\d s behind/);
  });
});
