/**
 * A PostgreSQL cluster of the test's own (initdb into a temporary folder, its own port), for what
 * the shared server must not suffer: being stopped and restarted, or password authentication
 * (the shared one trusts every local connection). Runs the server binaries as the postgres user
 * (through `su` when the tests run as root). `destroy()` stops it and deletes the folder.
 */
import { freePort } from './wait.js';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chown, mkdtemp, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

/** Where PostgreSQL 15's server binaries are. */
export const BIN = '/usr/lib/postgresql/15/bin';
const exec = promisify(execFile);
const isRoot = process.getuid?.() === 0;

/** Whether this machine can run a private cluster: the binaries, and root or the postgres user. */
export const privatePostgresAvailable = existsSync(join(BIN, 'initdb')) && (isRoot || userInfo().username === 'postgres');

export interface PrivatePostgres {
  port: number;
  /** A connection string for `database` as the superuser postgres (with `password`, if given). */
  url(database?: string, password?: string): string;
  /** pg_ctl stop -m fast: backends are terminated, the listener closes; resolves once it is down. */
  stop(): Promise<void>;
  /** pg_ctl start, without waiting until it accepts connections (the caller watches for that). */
  start(): Promise<void>;
  /** Resolves when a connection succeeds (polled every `intervalMs`); the time it did, performance.now(). */
  acceptsConnections(timeoutMs?: number, intervalMs?: number): Promise<number>;
  /** Stops the server (if running) and deletes its folder. */
  destroy(): Promise<void>;
}

export interface PrivatePostgresOptions {
  /** Require this password (scram-sha-256) on TCP connections; trust when unset. */
  password?: string;
  /** Server settings, each passed as `-c name=value` on the command line (so ALTER SYSTEM cannot override them). */
  settings?: Record<string, string>;
}

const quote = (arg: string) => `'${arg.replace(/'/g, `'\\''`)}'`;

/** Runs a server binary as the postgres user: the server refuses to run as root. */
export function asPostgres(args: string[]): Promise<{ stdout: string; stderr: string }> {
  if (!isRoot) return exec(args[0]!, args.slice(1));
  return exec('su', ['postgres', '-c', args.map(quote).join(' ')]);
}

/**
 * A new temporary folder the postgres user owns (a server's data folder, log and socket go in it).
 * On tmpfs (/dev/shm) when it has room: creating a cluster's thousand files on this machine's ext4
 * took initdb 2.0 s and pg_basebackup 1.1 s, on tmpfs 0.75 s and 0.14 s. A container's default
 * /dev/shm (64 MB) has no room for one, so then the usual temporary folder.
 */
export async function postgresOwnedDir(): Promise<string> {
  const dir = await mkdtemp(join(await scratchBase(), 'poolgate-pg-'));
  if (isRoot) {
    const [uid, gid] = await Promise.all(['-u', '-g'].map(async (flag) => Number((await exec('id', [flag, 'postgres'])).stdout)));
    await chown(dir, uid!, gid!);
  }
  return dir;
}

const TMPFS = '/dev/shm';
const TMPFS_ROOM_BYTES = 1024 ** 3;

async function scratchBase(): Promise<string> {
  const room = await statfs(TMPFS).then(
    (fs) => fs.bavail * fs.bsize,
    () => 0,
  );
  return room >= TMPFS_ROOM_BYTES ? TMPFS : tmpdir();
}

/** Where a server lives (its data folder is `dir`/data) and how it is started. */
export interface ServerPlace extends PrivatePostgresOptions {
  dir: string;
  port: number;
}

/** stop/start/acceptsConnections/destroy for an existing data folder (made by initdb or pg_basebackup). */
export function controlServer({ dir, port, password, settings = {} }: ServerPlace): PrivatePostgres {
  const ctl = (...args: string[]) => asPostgres([join(BIN, 'pg_ctl'), '-D', join(dir, 'data'), ...args]);
  const serverOptions = [
    `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
    ...Object.entries(settings).map(([name, value]) => `-c ${name}=${value}`),
  ].join(' ');
  let running = false;
  const url = (database = 'postgres', pw?: string) =>
    `postgres://postgres${pw === undefined ? '' : `:${encodeURIComponent(pw)}`}@127.0.0.1:${port}/${database}`;

  const self: PrivatePostgres = {
    port,
    url,
    async stop() {
      await ctl('stop', '-m', 'fast', '-w');
      running = false;
    },
    async start() {
      await ctl('start', '-W', '-l', join(dir, 'log'), '-o', serverOptions);
      running = true;
    },
    async acceptsConnections(timeoutMs = 30_000, intervalMs = 5) {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const client = new pg.Client({ connectionString: url('postgres', password), connectionTimeoutMillis: 1_000 });
        client.on('error', () => {});
        try {
          await client.connect();
          const at = performance.now();
          await client.end();
          return at;
        } catch (err) {
          if (performance.now() > deadline) throw err;
          await new Promise((r) => setTimeout(r, intervalMs));
        }
      }
    },
    async destroy() {
      if (running) await self.stop().catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
  return self;
}

/** Starts `server` and waits until it accepts connections; destroys it if either fails. */
export async function startedOrDestroyed<T extends PrivatePostgres>(server: T): Promise<T> {
  try {
    await server.start();
    await server.acceptsConnections();
  } catch (err) {
    await server.destroy();
    throw err;
  }
  return server;
}

/**
 * @example
 * const pgx = await startPrivatePostgres();
 * await pgx.stop(); await pgx.start(); await pgx.acceptsConnections();
 * await pgx.destroy();
 */
export async function startPrivatePostgres(options: PrivatePostgresOptions = {}): Promise<PrivatePostgres> {
  const dir = await postgresOwnedDir();
  const server = controlServer({ dir, port: await freePort(), ...options });
  const initdb = [join(BIN, 'initdb'), '-D', join(dir, 'data'), '-U', 'postgres', '-N', '--auth-local=trust'];
  if (options.password !== undefined) {
    await writeFile(join(dir, 'pw'), options.password, { mode: 0o644 });
    initdb.push('--auth-host=scram-sha-256', `--pwfile=${join(dir, 'pw')}`);
  } else initdb.push('--auth-host=trust');
  try {
    await asPostgres(initdb);
  } catch (err) {
    await server.destroy();
    throw err;
  }
  return startedOrDestroyed(server);
}

/** A database on the cluster, in the shape the gateway helpers take (dropped with the cluster). */
export async function privateTestDatabase(cluster: PrivatePostgres, name: string) {
  const server = new pg.Client({ connectionString: cluster.url() });
  await server.connect();
  try {
    await server.query(`CREATE DATABASE ${name}`);
  } finally {
    await server.end();
  }
  const pool = new pg.Pool({ connectionString: cluster.url(name), max: 1 });
  pool.on('error', () => {});
  return {
    url: cluster.url(name),
    name,
    real: true,
    admin: (sql: string, params?: unknown[]) => pool.query(sql, params),
    drop: () => pool.end().catch(() => {}),
  };
}

/** The roles `useAuthMethods` makes: one per auth method besides the superuser's SCRAM (the md5 password has a space on purpose). */
export const AUTH_ROLES = {
  trust: { user: 'trust_user', password: undefined },
  password: { user: 'plain_user', password: 'plain-pass' },
  md5: { user: 'md5_user', password: 'md5 pass' },
} as const;

/**
 * Roles for trust, cleartext and md5 (stored as md5), and a pg_hba.conf with a line per method
 * (everyone else: SCRAM), written by the server itself (COPY … TO, as superuser) and reloaded;
 * resolves once the reload has taken effect.
 */
export async function useAuthMethods(cluster: PrivatePostgres, superPassword: string): Promise<void> {
  const { trust, password, md5 } = AUTH_ROLES;
  const admin = new pg.Client({ connectionString: cluster.url('postgres', superPassword) });
  await admin.connect();
  try {
    await admin.query(`SET password_encryption = 'md5'; CREATE ROLE ${md5.user} LOGIN PASSWORD '${md5.password}'`);
    await admin.query(`RESET password_encryption; CREATE ROLE ${password.user} LOGIN PASSWORD '${password.password}'`);
    await admin.query(`CREATE ROLE ${trust.user} LOGIN`);
    const hbaFile = (await admin.query<{ hba_file: string }>('SHOW hba_file')).rows[0]!.hba_file;
    const lines = [
      'local all all trust',
      `host all ${trust.user} 127.0.0.1/32 trust`,
      `host all ${password.user} 127.0.0.1/32 password`,
      `host all ${md5.user} 127.0.0.1/32 md5`,
      'host all all 127.0.0.1/32 scram-sha-256',
    ];
    await admin.query(`COPY (VALUES ${lines.map((l) => `('${l}')`).join(', ')}) TO '${hbaFile}'`);
    await admin.query('SELECT pg_reload_conf()');
  } finally {
    await admin.end();
  }
  // The reload is asynchronous: trust_user gets in without a password once it has happened.
  for (let tries = 0; ; tries++) {
    const probe = new pg.Client({ connectionString: cluster.url('postgres').replace('postgres@', `${trust.user}@`) });
    try {
      await probe.connect();
      await probe.end();
      return;
    } catch (err) {
      if (tries > 100) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
