/**
 * The embedded PGlite honours a connection's startup `options` as PostgreSQL does (PGlite itself
 * ignores them): `-c name=value` holds from the first statement, DISCARD ALL returns to it, other
 * connections on the one shared session do not see it, and options PostgreSQL refuses are refused
 * at connect with its SQLSTATE. Real `pg` clients against the real embedded server.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../../src/local/embedded.js';
import { parseStartupOptions } from '../../src/local/startup-options.js';

let server: EmbeddedPostgres;
let admin: pg.Client;
const opened: pg.Client[] = [];

async function connect(options?: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: server.url, options });
  client.on('error', () => {});
  opened.push(client);
  await client.connect();
  return client;
}

const where = async (client: pg.Client) =>
  (await client.query<{ x: string; timeout: string }>("SELECT x, current_setting('statement_timeout') AS timeout FROM t")).rows[0];

beforeAll(async () => {
  server = await startEmbeddedPostgres();
  admin = await connect();
  await admin.query(`CREATE SCHEMA tenant_a; CREATE TABLE tenant_a.t (x text); INSERT INTO tenant_a.t VALUES ('tenant_a');
    CREATE TABLE public.t (x text); INSERT INTO public.t VALUES ('public')`);
}, 120_000);

afterAll(async () => {
  for (const client of opened) await client.end().catch(() => {});
  await server?.stop();
});

describe('startup options on the embedded PGlite', () => {
  it('-c settings hold for their connection only, interleaved with another', async () => {
    const tenant = await connect('-c search_path=tenant_a,public -c statement_timeout=5s');
    expect(await where(tenant)).toEqual({ x: 'tenant_a', timeout: '5s' });
    expect(await where(admin)).toEqual({ x: 'public', timeout: '0' });
    expect(await where(tenant)).toEqual({ x: 'tenant_a', timeout: '5s' });
    await tenant.end();
    expect(await where(admin)).toEqual({ x: 'public', timeout: '0' });
  });

  it('DISCARD ALL and RESET return to the startup value, as on PostgreSQL', async () => {
    const tenant = await connect('--search-path=tenant_a,public');
    // Any other value than the server's default: with one shared session, a SET back to the default
    // cannot be told from a session that never had the startup value (startup-options.ts).
    await tenant.query('SET search_path TO public, tenant_a');
    expect((await where(tenant))?.x).toBe('public'); // SET wins until reset
    await tenant.query('DISCARD ALL');
    expect((await where(tenant))?.x).toBe('tenant_a');
    await tenant.query('SET search_path TO public, tenant_a');
    await tenant.query('RESET search_path');
    expect((await where(tenant))?.x).toBe('tenant_a');
    await tenant.end();
  });

  it('a transaction sees its connection’s settings throughout', async () => {
    const tenant = await connect('-c search_path=tenant_a,public');
    await tenant.query('BEGIN');
    expect((await where(tenant))?.x).toBe('tenant_a');
    await tenant.query('INSERT INTO t VALUES ($1)', ['in tx']);
    await tenant.query('COMMIT');
    expect((await admin.query("SELECT count(*)::int AS n FROM tenant_a.t WHERE x = 'in tx'")).rows).toEqual([{ n: 1 }]);
    await tenant.end();
  });

  it.each([
    ['-c no_such_setting=1', '42704', /unrecognized configuration parameter "no_such_setting"/],
    ['-c statement_timeout=abc', '22023', /invalid value for parameter "statement_timeout"/],
    ['endpoint=ep-cool-darkness-123456', '42601', /invalid command-line argument for server process: endpoint=/],
  ])('refuses %s at connect with %s, as PostgreSQL does', async (options, sqlstate, message) => {
    const err = await connect(options).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: sqlstate, severity: 'FATAL' });
    expect((err as Error).message).toMatch(message);
    expect((await where(admin))?.x).toBe('public');
  });
});

describe('parseStartupOptions', () => {
  it('reads -c name=value, -cname=value and --name=value, a backslash keeping a space', () => {
    expect(parseStartupOptions(' -c search_path=a,\\ b  -cwork_mem=8MB --statement-timeout=5s ')).toEqual([
      { name: 'search_path', value: 'a, b' },
      { name: 'work_mem', value: '8MB' },
      { name: 'statement_timeout', value: '5s' },
    ]);
    expect(parseStartupOptions('')).toEqual([]);
  });

  it('refuses a switch without name=value', () => {
    expect(() => parseStartupOptions('-c')).toThrow(/invalid command-line argument/);
    expect(() => parseStartupOptions('-c =x')).toThrow(/invalid command-line argument/);
    expect(() => parseStartupOptions('-B 100')).toThrow(/invalid command-line argument for server process: -B/);
  });
});
