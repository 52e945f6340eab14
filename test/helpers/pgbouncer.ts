/**
 * A real PgBouncer of the test's own, in front of the test's PostgreSQL (TEST_DATABASE_URL): an
 * ini in a temporary folder, a free port on 127.0.0.1, trust auth, every database forwarded to the
 * server, the pool mode the test asks for and every other setting at PgBouncer's default (what a
 * user's platform runs unless told otherwise). PgBouncer refuses to run as root, so as root it is
 * started with `-u postgres`. `stop()` ends it (SIGTERM: its fast exit) and deletes the folder;
 * the test process's exit ends it too, if stop() was never reached.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './wait.js';

const isRoot = process.getuid?.() === 0;

/** The pgbouncer binary on PATH (Debian: /usr/sbin), or undefined when it is not installed. */
function findPgBouncer(): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin']) {
    try {
      execFileSync(join(dir, 'pgbouncer'), ['--version'], { stdio: 'ignore' });
      return join(dir, 'pgbouncer');
    } catch {
      // not here
    }
  }
  return undefined;
}

const PGBOUNCER = findPgBouncer();

/** Why a PgBouncer test cannot run here, or undefined when it can. */
export const pgBouncerMissing: string | undefined = PGBOUNCER
  ? undefined
  : 'pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run installs it)';

/**
 * The name of a test (or describe) that needs PgBouncer and a real PostgreSQL behind it: as given
 * when both are here; else with the reason. The run's closing line counts the names that say
 * TEST_DATABASE_URL, so a missing server says so too.
 * @example describe.skipIf(!!behindPgBouncerSkip)(onPgBouncer('mixed load behind PgBouncer'), …)
 */
export function onPgBouncer(name: string): string {
  const why = behindPgBouncerSkip();
  return why ? `${name} — skipped: ${why}` : name;
}

/** Why a test behind PgBouncer is skipped here: no pgbouncer, or no real PostgreSQL for it to front. */
export function behindPgBouncerSkip(): string | undefined {
  if (!process.env.TEST_DATABASE_URL)
    return 'PgBouncer needs a real PostgreSQL server behind it (PGlite takes no pooler); set TEST_DATABASE_URL to run it';
  return pgBouncerMissing;
}

export type PoolMode = 'transaction' | 'session';

export interface PgBouncer {
  port: number;
  mode: PoolMode;
  /** `serverUrl` (a database on the server behind it) with its host and port replaced by PgBouncer's. */
  url(serverUrl: string): string;
  /** What PgBouncer printed (its log goes to stderr). */
  log(): string;
  stop(): Promise<void>;
}

/**
 * @example
 * const bouncer = await startPgBouncer('transaction');
 * const t = await startTestGateway({ DATABASE_URL: bouncer.url(db.url) }, { db });
 * await bouncer.stop();
 */
export async function startPgBouncer(
  mode: PoolMode,
  /** More [pgbouncer] settings (each as `name = value`); none by default: PgBouncer's own defaults. */
  settings: Record<string, string> = {},
  serverUrl = process.env.TEST_DATABASE_URL,
): Promise<PgBouncer> {
  if (!PGBOUNCER) throw new Error(pgBouncerMissing);
  if (!serverUrl) throw new Error('startPgBouncer needs a PostgreSQL server (TEST_DATABASE_URL)');
  const server = new URL(serverUrl);
  const user = decodeURIComponent(server.username) || 'postgres';
  const dir = await mkdtemp(join(tmpdir(), 'poolgate-pgbouncer-'));
  const port = await freePort();
  const ini = [
    '[databases]',
    `* = host=${server.hostname} port=${server.port || 5432}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    'auth_type = trust',
    `auth_file = ${join(dir, 'users.txt')}`,
    `pool_mode = ${mode}`,
    ...Object.entries(settings).map(([name, value]) => `${name} = ${value}`),
  ].join('\n');
  await writeFile(join(dir, 'pgbouncer.ini'), `${ini}\n`);
  await writeFile(join(dir, 'users.txt'), `"${user}" ""\n`);
  if (isRoot) {
    const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }));
    for (const f of ['', 'pgbouncer.ini', 'users.txt']) await chown(join(dir, f), id('-u'), id('-g'));
  }
  const child: ChildProcess = spawn(PGBOUNCER, [...(isRoot ? ['-u', 'postgres'] : []), join(dir, 'pgbouncer.ini')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => void (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => void (output += d.toString()));
  // A test process that ends without stop() (a failed hook, a killed run) must not leave PgBouncer behind.
  const killOnExit = () => {
    child.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', killOnExit);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  void exited.then(() => process.off('exit', killOnExit));
  let stopping: Promise<void> | undefined;
  const self: PgBouncer = {
    port,
    mode,
    url(target) {
      const u = new URL(target);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    log: () => output,
    stop() {
      stopping ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        await exited;
        await rm(dir, { recursive: true, force: true });
      })();
      return stopping;
    },
  };
  try {
    await acceptsConnections(self.url(serverUrl), exited, () => output);
  } catch (err) {
    await self.stop();
    throw err;
  }
  return self;
}

/** Resolves once a connection through PgBouncer answers; fails at once if it exited, or after 10 s. */
async function acceptsConnections(url: string, exited: Promise<void>, output: () => string): Promise<void> {
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (gone) throw new Error(`pgbouncer exited at start:\n${output()}`);
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1_000 });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
      return;
    } catch (err) {
      await client.end().catch(() => {});
      if (Date.now() > deadline) throw new Error(`pgbouncer did not answer in 10 s:\n${output()}`, { cause: err });
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
