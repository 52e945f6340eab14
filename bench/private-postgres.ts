/**
 * A PostgreSQL instance of the bench's own, for the baseline whose figure depends on how a
 * connection is authenticated: connect-per-request. The machine's shared server trusts every
 * local connection and speaks no TLS, which makes a new connection far cheaper than any real
 * deployment's. This one is what a managed Postgres asks of a client: `initdb -A scram-sha-256`
 * with a password, a self-signed certificate (RSA 2048, `openssl req -x509`), `ssl = on`, and a
 * pg_hba.conf that accepts SCRAM over TLS and rejects everything else on TCP. Its other settings
 * are copied from the shared server, so auth and TLS are the only differences.
 *
 * Runs the server binaries as the postgres user when the bench runs as root (Postgres refuses
 * root), as the bench's own user otherwise. The folder is named after the bench's pid: one left
 * by a run that was killed outright (its postmaster still up) is stopped and deleted by the next.
 */
import { isAlive } from './stale.js';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { appendFile, chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const exec = promisify(execFile);
const isRoot = process.getuid?.() === 0;
const PREFIX = 'poolgate-bench-pg-';

export interface BenchPostgresOptions {
  /** Where initdb, pg_ctl and postgres are (default /usr/lib/postgresql/15/bin). */
  binDir?: string;
  /** Settings copied from the shared server (name → value as `current_setting()` shows it). */
  settings?: Record<string, string>;
}

export interface BenchPostgres {
  port: number;
  /** How clients authenticate, for the report: e.g. "SCRAM-SHA-256 over TLSv1.3 (…)". */
  auth: string;
  /** The settings that differ from the shared server's, for the report. */
  differences: string[];
  /**
   * A connection string for `database` as postgres with the password, `sslmode=require` with
   * libpq's meaning (encrypted, certificate not verified: it is self-signed).
   */
  url(database?: string): string;
  /** `pg_ctl restart -m fast`: every connection is cut, and the server is back when this resolves. */
  restart(): Promise<void>;
  /** Stops the server and deletes its folder. Idempotent. */
  destroy(): Promise<void>;
}

export class BenchPostgresError extends Error {
  override name = 'BenchPostgresError';
}

/** Why this machine cannot run the instance, or undefined when it can. */
export function privatePostgresUnavailable(binDir = '/usr/lib/postgresql/15/bin'): string | undefined {
  if (!existsSync(join(binDir, 'initdb'))) return `no initdb in ${binDir}`;
  if (!['/usr/bin/openssl', '/bin/openssl', ...(process.env.PATH ?? '').split(':').map((d) => join(d, 'openssl'))].some(existsSync))
    return 'openssl is not installed (needed for the server certificate)';
  return undefined;
}

/** Runs a server binary as the user Postgres will run as. */
function asServerUser(bin: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return isRoot ? exec('runuser', ['-u', 'postgres', '--', bin, ...args]) : exec(bin, args);
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Stops and deletes instances left by bench runs that are gone; returns their folders. */
export async function removeStaleInstances(binDir = '/usr/lib/postgresql/15/bin'): Promise<string[]> {
  const removed: string[] = [];
  for (const entry of readdirSync(tmpdir())) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(entry);
    if (!m || Number(m[1]) === process.pid || isAlive(Number(m[1]))) continue;
    const dir = join(tmpdir(), entry);
    if (existsSync(join(dir, 'data', 'postmaster.pid')))
      await asServerUser(join(binDir, 'pg_ctl'), ['-D', join(dir, 'data'), 'stop', '-m', 'immediate', '-w']).catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
    removed.push(dir);
  }
  return removed;
}

const HBA = `# poolgate bench: SCRAM over TLS only
local     all all                scram-sha-256
hostssl   all all 127.0.0.1/32   scram-sha-256
hostssl   all all ::1/128        scram-sha-256
hostnossl all all 0.0.0.0/0      reject
hostnossl all all ::/0           reject
`;

/** Settings the instance must have whatever the shared server says. */
const OWN = ['port', 'listen_addresses', 'unix_socket_directories', 'ssl', 'ssl_cert_file', 'ssl_key_file', 'max_connections'];

/**
 * Starts the instance and checks that a connection really is SCRAM over TLS.
 * @example
 * const pgx = await startBenchPostgres({ settings: { shared_buffers: '128MB' } });
 * const client = new pg.Client(pgx.url('postgres'));
 * … await pgx.destroy();
 */
export async function startBenchPostgres(options: BenchPostgresOptions = {}): Promise<BenchPostgres> {
  const binDir = options.binDir ?? '/usr/lib/postgresql/15/bin';
  const unavailable = privatePostgresUnavailable(binDir);
  if (unavailable) throw new BenchPostgresError(unavailable);
  const dir = await mkdtemp(join(tmpdir(), `${PREFIX}${process.pid}-`));
  const data = join(dir, 'data');
  const password = randomBytes(18).toString('base64url');
  const port = await freePort();
  let started = false;
  let destroying: Promise<void> | undefined;
  const destroy = () =>
    (destroying ??= (async () => {
      if (started) await asServerUser(join(binDir, 'pg_ctl'), ['-D', data, 'stop', '-m', 'fast', '-w']).catch(() => {});
      await rm(dir, { recursive: true, force: true });
    })());
  const url = (database = 'postgres') =>
    `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}?sslmode=require&uselibpqcompat=true`;

  try {
    const owner = isRoot
      ? await Promise.all(['-u', '-g'].map(async (flag) => Number((await exec('id', [flag, 'postgres'])).stdout)))
      : undefined;
    if (owner) await chown(dir, owner[0]!, owner[1]!);
    const pwFile = join(dir, 'pw');
    await writeFile(pwFile, password, { mode: 0o600 });
    if (owner) await chown(pwFile, owner[0]!, owner[1]!);
    await asServerUser(join(binDir, 'initdb'), [
      '-D',
      data,
      '-U',
      'postgres',
      '-A',
      'scram-sha-256',
      `--pwfile=${pwFile}`,
      '-N',
      '-E',
      'UTF8',
    ]);
    await rm(pwFile);
    // Made by the server's user, so it owns the key (Postgres wants it private to itself).
    await asServerUser('openssl', [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-sha256',
      '-days',
      '2',
      '-subj',
      '/CN=127.0.0.1',
      '-keyout',
      join(data, 'server.key'),
      '-out',
      join(data, 'server.crt'),
    ]);
    await asServerUser('chmod', ['600', join(data, 'server.key')]);
    // Both files exist (initdb wrote them), so they keep their owner.
    await writeFile(join(data, 'pg_hba.conf'), HBA);
    const copied = Object.entries(options.settings ?? {}).filter(([name]) => !OWN.includes(name));
    const sharedMax = Number(options.settings?.max_connections ?? 100);
    // Room for connect-per-request's connections beside the gateway's idle pool.
    const maxConnections = Math.max(sharedMax, 200);
    const conf = [
      `port = ${port}`,
      `listen_addresses = '127.0.0.1'`,
      `unix_socket_directories = '${dir}'`,
      `ssl = on`,
      `ssl_cert_file = 'server.crt'`,
      `ssl_key_file = 'server.key'`,
      `max_connections = ${maxConnections}`,
      ...copied.map(([name, value]) => `${name} = '${value.replace(/'/g, "''")}'`),
    ];
    await appendFile(join(data, 'postgresql.conf'), `\n# poolgate bench\n${conf.join('\n')}\n`);
    await asServerUser(join(binDir, 'pg_ctl'), ['-D', data, '-l', join(dir, 'log'), '-w', '-t', '60', 'start']);
    started = true;

    // Prove it: the connection the baseline will make is TLS, and a plain one is refused.
    const client = new pg.Client({ connectionString: url(), connectionTimeoutMillis: 10_000 });
    client.on('error', () => {});
    await client.connect();
    let tls: { version: string; cipher: string };
    try {
      const r = await client.query<{ ssl: boolean; version: string; cipher: string }>(
        'SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()',
      );
      if (!r.rows[0]?.ssl) throw new BenchPostgresError('the connection is not TLS');
      tls = r.rows[0];
      // pg_hba.conf sends TCP to SCRAM; the password stored as a SCRAM verifier makes it SCRAM-SHA-256.
      const stored = await client.query<{ scram: boolean }>(
        `SELECT rolpassword LIKE 'SCRAM-SHA-256$%' AS scram FROM pg_authid WHERE rolname = current_user`,
      );
      if (!stored.rows[0]?.scram) throw new BenchPostgresError('the password is not stored as a SCRAM-SHA-256 verifier');
    } finally {
      await client.end().catch(() => {});
    }
    const plain = new pg.Client({
      connectionString: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres?sslmode=disable`,
    });
    plain.on('error', () => {});
    const refused = await plain.connect().then(
      () => false,
      () => true,
    );
    await plain.end().catch(() => {});
    if (!refused) throw new BenchPostgresError('a connection without TLS was accepted');
    return {
      port,
      auth: `SCRAM-SHA-256 over ${tls.version} (${tls.cipher}; self-signed RSA 2048 certificate; sslmode=require)`,
      differences: [
        'ssl = on',
        'pg_hba.conf: hostssl scram-sha-256, hostnossl reject',
        ...(maxConnections !== sharedMax ? [`max_connections ${maxConnections} (shared: ${sharedMax})`] : []),
      ],
      url,
      restart: async () => {
        await asServerUser(join(binDir, 'pg_ctl'), ['-D', data, '-l', join(dir, 'log'), '-w', '-t', '60', '-m', 'fast', 'restart']);
      },
      destroy,
    };
  } catch (err) {
    await destroy().catch(() => {});
    const detail = (err as { stderr?: string }).stderr?.trim().split('\n').slice(-2).join(' | ');
    throw new BenchPostgresError(`${(err as Error).message.split('\n')[0]}${detail ? ` (${detail})` : ''}`);
  }
}
