/**
 * doctor's rules, each a pure function of what was read: which variable wins, the budget
 * arithmetic, TLS and pooler heuristics, migrations by id and checksum, skew thresholds, secret
 * strength. test/cli/doctor.test.ts runs the command against real databases.
 */
import { describe, expect, it } from 'vitest';
import { checksumOf } from '../db/migrate.js';
import {
  budgetFinding,
  connectionFindings,
  formatFindings,
  migrationFindings,
  poolerFinding,
  secretFindings,
  skewFinding,
  tlsFinding,
} from './doctor.js';

const SECRET_URL = 'postgres://alice:hunter2hunter2@db.example.com:5432/app';
const target = (host: string, port = '5432') => ({ host, port, database: 'app' });
const budget = (mode: 'auto' | 'off' | number, reserve = 3) => ({ mode, reserve, intervalMs: 1000 });
const server = { maxConnections: 100, superuserReserved: 3, reservedConnections: 0, clientBackends: 7 };

describe('connection variables', () => {
  it('DATABASE_URL wins and the others are named, never their values', () => {
    const { findings, url, from } = connectionFindings({
      DATABASE_URL: SECRET_URL,
      POSTGRES_URL: SECRET_URL,
      NETLIFY_DB_URL: 'postgres://x@y/z',
    });
    expect([url, from]).toEqual([SECRET_URL, 'DATABASE_URL']);
    expect(findings[0]!.mark).toBe('ok');
    expect(findings[0]!.text).toMatch(/same value as POSTGRES_URL; also set, not read: NETLIFY_DB_URL/);
    expect(findings[0]!.text).toMatch(/db\.example\.com:5432, database "app"/);
    expect(JSON.stringify(findings)).not.toMatch(/alice|hunter2/);
  });

  it('only another name set: ✗ with "set DATABASE_URL=$THAT", the checks then use it', () => {
    const { findings, url, from } = connectionFindings({ POSTGRES_URL_NON_POOLING: 'postgres://a@h/d', POSTGRES_URL: SECRET_URL });
    expect(from).toBe('POSTGRES_URL');
    expect(url).toBe(SECRET_URL);
    expect(findings[0]).toMatchObject({ mark: 'fail', fix: 'set DATABASE_URL=$POSTGRES_URL' });
  });

  it('none set: ✗, the embedded database named', () => {
    expect(connectionFindings({}).findings[0]).toMatchObject({ mark: 'fail', text: expect.stringMatching(/embedded PGlite/) });
  });
});

describe('connections against max_connections', () => {
  it('POOL_BUDGET=off: instances × POOL_MAX above the server limit fails, with a POOL_MAX that fits', () => {
    const f = budgetFinding(server, { max: 20, budget: budget('off') }, 5, false);
    expect(f.mark).toBe('fail');
    expect(f.text).toMatch(/5 instances × POOL_MAX 20 = 100 > max_connections 100 − superuser_reserved_connections 3 = 97/);
    expect(f.fix).toMatch(/POOL_MAX=18 /);
    expect(budgetFinding(server, { max: 19, budget: budget('off') }, 5, false).mark).toBe('ok');
  });

  it('POOL_BUDGET=auto: over the limit is shared (!), under one per instance fails', () => {
    expect(budgetFinding(server, { max: 20, budget: budget('auto') }, 5, false)).toMatchObject({
      mark: 'warn',
      text: expect.stringMatching(/about 18 per instance/),
    });
    expect(budgetFinding(server, { max: 20, budget: budget('auto') }, 95, false).mark).toBe('fail');
    expect(budgetFinding(server, { max: 10, budget: budget('auto') }, 5, false).mark).toBe('ok');
  });

  it("POOL_BUDGET=<n> is judged by the gateway's own share rule: 5 × POOL_MAX 10 within a budget of 50 is ok (the reserve is the server's business then)", () => {
    expect(budgetFinding(server, { max: 10, budget: budget(50) }, 5, false)).toMatchObject({ mark: 'ok' });
    expect(budgetFinding(server, { max: 11, budget: budget(50) }, 5, false)).toMatchObject({
      mark: 'warn',
      text: expect.stringMatching(/about 10 per instance/),
    });
  });

  it('POOL_BUDGET=<n> above the server limit fails; behind a pooler the server limit is not the one', () => {
    expect(budgetFinding(server, { max: 5, budget: budget(200) }, 1, false).mark).toBe('fail');
    expect(budgetFinding(server, { max: 20, budget: budget('off') }, 50, true)).toMatchObject({
      mark: 'ok',
      text: expect.stringMatching(/max_client_conn/),
    });
  });
});

describe('TLS and poolers', () => {
  it('a remote host without sslmode: ! and the fix; sslmode=require against a server without TLS: ✗; local: ✓', () => {
    expect(tlsFinding(SECRET_URL, target('db.example.com'), true, false)).toMatchObject({
      mark: 'warn',
      fix: expect.stringMatching(/sslmode=require/),
    });
    expect(tlsFinding(`${SECRET_URL}?sslmode=require`, target('db.example.com'), false, undefined).mark).toBe('fail');
    expect(tlsFinding(`${SECRET_URL}?sslmode=require`, target('db.example.com'), true, true).mark).toBe('ok');
    expect(tlsFinding('postgres://u@127.0.0.1:5432/d', target('127.0.0.1'), false, false).mark).toBe('ok');
  });

  it('Neon -pooler hosts and port 6432 read as pooled (the port said to be a guess); others as direct', () => {
    expect(poolerFinding('postgres://u@ep-x-pooler.eu.aws.neon.tech/d', target('ep-x-pooler.eu.aws.neon.tech')).pooled).toBe(true);
    const bouncer = poolerFinding('postgres://u@h:6432/d', target('h', '6432'));
    expect(bouncer.pooled).toBe(true);
    expect(bouncer.finding.text).toMatch(/guess/);
    expect(poolerFinding('postgres://u@ep-x.eu.aws.neon.tech/d', target('ep-x.eu.aws.neon.tech')).pooled).toBe(false);
  });
});

describe('migrations', () => {
  const tables = { migrations: true, idempotencyKeys: true, forwardNonces: true };
  const app = {
    name: 'notes',
    migrations: [
      { id: 1, name: 'a', sql: 'CREATE TABLE a ()' },
      { id: 2, name: 'b', sql: 'CREATE TABLE b ()' },
    ],
  };

  it("poolgate's tables missing: ✗ naming them and the command", async () => {
    const [f] = await migrationFindings({ tables: { ...tables, forwardNonces: false }, recorded: [] }, undefined, undefined);
    expect(f).toMatchObject({
      mark: 'fail',
      text: expect.stringMatching(/poolgate_forward_nonces/),
      fix: expect.stringMatching(/^run poolgate migrate/),
    });
  });

  it("the app's ids not recorded: ✗; an edited one: !; all applied: ✓", async () => {
    const recorded = [{ app: 'notes', id: 1, name: 'a', checksum: await checksumOf('CREATE TABLE a ()') }];
    const pending = await migrationFindings({ tables, recorded }, app, 'notes.mjs');
    expect(pending[1]).toMatchObject({
      mark: 'fail',
      text: 'app "notes": migration 2 not applied (of 2)',
      fix: 'run poolgate migrate --app notes.mjs',
    });
    const edited = await migrationFindings(
      {
        tables,
        recorded: [
          { ...recorded[0]!, checksum: 'other' },
          { app: 'notes', id: 2, name: 'b', checksum: null },
        ],
      },
      app,
      'notes.mjs',
    );
    expect(edited.map((f) => f.mark)).toEqual(['ok', 'ok', 'warn']);
  });
});

describe('clock skew and secrets', () => {
  it("skew: ✓ under 2 s, ! under 30 s, ✗ beyond the signatures' 30 s", () => {
    expect(skewFinding(150, 1).mark).toBe('ok');
    expect(skewFinding(-5_000, 1).mark).toBe('warn');
    expect(skewFinding(-45_000, 1)).toMatchObject({ mark: 'fail', text: expect.stringMatching(/45\.0 s ahead of the database server's/) });
  });

  it('FORWARD_SECRET: short ✗, published ✗, repetitive ✗, random ✓; missing with NODE_FUNCTION_URL ✗', () => {
    const mark = (env: Record<string, string>) => secretFindings(env)[0]!.mark;
    expect(mark({ FORWARD_SECRET: 'short-secret' })).toBe('fail');
    expect(mark({ FORWARD_SECRET: 'short-secret', POOLGATE_ENV: 'development' })).toBe('warn');
    expect(mark({ FORWARD_SECRET: 'poolgate-development-only-forward-secret' })).toBe('fail');
    expect(mark({ FORWARD_SECRET: 'f'.repeat(40) })).toBe('fail');
    expect(mark({ FORWARD_SECRET: 'Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdo' })).toBe('ok');
    expect(mark({ NODE_FUNCTION_URL: 'https://x.example/fn' })).toBe('fail');
    expect(mark({})).toBe('warn');
    expect(JSON.stringify(secretFindings({ FORWARD_SECRET: 'short-secret' }))).not.toMatch(/short-secret/);
  });

  it('the checklist: one line per finding with its mark and fix, then the count', () => {
    const text = formatFindings(
      [
        { mark: 'fail', check: 'x', text: 'broken', fix: 'mend it' },
        { mark: 'warn', check: 'y', text: 'odd' },
      ],
      2,
    );
    expect(text.split('\n')).toEqual([
      'poolgate doctor: the environment as the gateway reads it, for 2 instances',
      '✗ x: broken — fix: mend it',
      '! y: odd',
      '1 problem (✗) and 1 warning (!)',
      '',
    ]);
  });
});
