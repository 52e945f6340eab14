/**
 * One `pg.Pool` per (server, database, user, password, options), created on first use, as Neon
 * keeps one per endpoint and role. Every value comes back as the Postgres text the server sent
 * (the driver parses types itself), and every pool and client has an 'error' listener, so a
 * backend killed by `pg_terminate_backend` or a server restart costs one connection, never the
 * process. A connection goes back to its pool only in a clean session (releaseClean).
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import { describeTarget, type ConnectionInfo } from './targets.js';

/** Hands every column back untouched: the wire text, or null. */
const rawText: pg.CustomTypesConfig = { getTypeParser: () => (value: string) => value };

export interface PoolRegistryOptions {
  maxPerTarget: number;
  log: (line: string) => void;
}

export class PoolRegistry {
  readonly #pools = new Map<string, pg.Pool>();
  readonly #opts: PoolRegistryOptions;
  #ending: Promise<void> | undefined;

  constructor(opts: PoolRegistryOptions) {
    this.#opts = opts;
  }

  get poolCount(): number {
    return this.#pools.size;
  }

  /** Checks out a client for `info`; release it with `release(true)` when it must not be reused. */
  connect(info: ConnectionInfo): Promise<pg.PoolClient> {
    if (this.#ending) return Promise.reject(new Error('The proxy is closing; no new database connections are opened.'));
    return this.#poolFor(info).connect();
  }

  /** Ends every pool once; a second call returns the same promise. */
  end(): Promise<void> {
    this.#ending ??= Promise.all([...this.#pools.values()].map((p) => p.end().catch(() => {}))).then(() => {
      this.#pools.clear();
    });
    return this.#ending;
  }

  #poolFor(info: ConnectionInfo): pg.Pool {
    // The password only enters the key as a digest, so the map never holds it in clear.
    const secret = createHash('sha256')
      .update(info.password ?? '')
      .digest('hex');
    const key = JSON.stringify([info.host, info.port, info.database, info.user, secret, info.options ?? '']);
    let pool = this.#pools.get(key);
    if (pool) return pool;
    const where = `${info.user}@${describeTarget(info)}/${info.database}`;
    pool = new pg.Pool({
      host: info.host,
      port: info.port,
      user: info.user,
      password: info.password,
      database: info.database,
      application_name: info.applicationName,
      options: info.options,
      max: this.#opts.maxPerTarget,
      idleTimeoutMillis: 30_000,
      allowExitOnIdle: true,
      types: rawText,
    });
    // Idle clients report here. A checked-out client's failure reaches its caller as a failed
    // query; the listener only keeps the 'error' event from being unhandled (which would crash).
    pool.on('error', (err) => this.#opts.log(`neon-proxy: idle connection to ${where} lost (${err.message})`));
    pool.on('connect', (client) => {
      client.on('error', () => {});
    });
    this.#pools.set(key, pool);
    return pool;
  }
}

/**
 * Hands `client` back to its pool in a clean session, as Neon gives every HTTP request: DISCARD
 * ALL resets everything a statement can leave behind (SET and set_config, SET ROLE and SET
 * SESSION AUTHORIZATION, prepared statements, cursors, LISTEN, session advisory locks, temp
 * tables, sequence state, cached plans). It cannot run inside a transaction block, so a
 * connection left in one — or one the caller gives up on, or whose reset fails — is dropped.
 */
export async function releaseClean(client: pg.PoolClient, discard: boolean): Promise<void> {
  if (discard || client.getTransactionStatus() !== 'I') {
    client.release(true);
    return;
  }
  try {
    await client.query('DISCARD ALL');
  } catch {
    client.release(true);
    return;
  }
  client.release();
}
