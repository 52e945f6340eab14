/**
 * The HTTP path's database connections: one pool per (server, database, user, password,
 * application_name, options), as Neon keeps one per endpoint and role — a connection opened with
 * one password must not serve a request that brought another — under one bound on the backends
 * all pools hold together, so requests with ever new passwords (which a trust server ignores)
 * cannot take every backend Postgres has. A pool is its key's idle connections and a count; a
 * key with nothing open is forgotten, and an idle connection is closed after `idleTimeoutMs`, or
 * at once when another key needs its backend. Requests wait in one FIFO queue, and one scheduler
 * (`#schedule`) decides who gets what whenever something changes.
 *
 * Every value comes back as the Postgres text the server sent (the driver parses types itself),
 * and every client has an 'error' listener, so a backend killed by `pg_terminate_backend` or a
 * server restart costs one connection, never the process. A connection goes back only in a clean
 * session (releaseClean).
 */
import { createHash } from 'node:crypto';
import { Socket } from 'node:net';
import pg from 'pg';
import { describeTarget, type ConnectionInfo } from './targets.js';

/** Hands every column back untouched: the wire text, or null. */
const rawText: pg.CustomTypesConfig = { getTypeParser: () => (value: string) => value };

export interface PoolRegistryOptions {
  /** Connections per key. */
  maxPerTarget: number;
  /** Connections over every key, open or opening. */
  maxBackends: number;
  /** TCP connect to ReadyForQuery; past it the attempt fails (a database that accepts and never answers). */
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  log: (line: string) => void;
}

/** A checked-out connection; `release(true)` closes it instead of keeping it. */
export interface Lease {
  client: pg.Client;
  release(discard: boolean): void;
}

/** A connection could not be opened in time; the message says so without naming credentials. */
export class ConnectTimeoutError extends Error {
  override name = 'ConnectTimeoutError';
}

interface Idle {
  key: string;
  client: pg.Client;
  /** When it went idle (performance.now()): the oldest is evicted first. */
  since: number;
  timer: ReturnType<typeof setTimeout>;
}

/** One key's connections: the idle ones (oldest first) and how many it has in all. */
interface Pool {
  idle: Idle[];
  count: number;
}

interface Waiter {
  key: string;
  info: ConnectionInfo;
  /** The request went away: out of the queue, and a connect under way for it is dropped. */
  signal: AbortSignal;
  resolve(lease: Lease): void;
  reject(err: Error): void;
}

export class PoolRegistry {
  readonly #pools = new Map<string, Pool>();
  readonly #waiters: Waiter[] = [];
  readonly #opts: PoolRegistryOptions;
  /** Connections open or opening (or closing, until their backend is gone), over every key. */
  #total = 0;
  #ending: Promise<void> | undefined;

  constructor(opts: PoolRegistryOptions) {
    this.#opts = opts;
  }

  get poolCount(): number {
    return this.#pools.size;
  }

  get backendCount(): number {
    return this.#total;
  }

  /** Checks out a connection for `info`; waits its turn when the bounds are reached, until `signal` aborts. */
  connect(info: ConnectionInfo, signal: AbortSignal): Promise<Lease> {
    if (this.#ending) return Promise.reject(new Error('The proxy is closing; no new database connections are opened.'));
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const at = this.#waiters.indexOf(waiter);
        if (at !== -1) this.#waiters.splice(at, 1);
        reject(new Error('the client went away while waiting for a connection'));
      };
      const waiter: Waiter = {
        key: keyOf(info),
        info,
        signal,
        resolve: (lease) => {
          signal.removeEventListener('abort', onAbort);
          // Gone meanwhile (its connect was under way): the connection goes back, unused.
          if (signal.aborted) lease.release(false);
          else resolve(lease);
        },
        reject: (err) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
      this.#schedule();
    });
  }

  /** Closes every connection once; a second call returns the same promise. */
  end(): Promise<void> {
    this.#ending ??= (async () => {
      for (const w of this.#waiters.splice(0)) w.reject(new Error('The proxy is closing.'));
      const idle = [...this.#pools.values()].flatMap((pool) => [...pool.idle]);
      await Promise.all(idle.map((i) => this.#closeIdle(i)));
    })();
    return this.#ending;
  }

  /**
   * The one place that decides: each waiter in turn gets its key's idle connection, a new one
   * within both bounds, or — every backend taken — the oldest idle connection of another key is
   * closed for it (one per pass; its close ends in #schedule again).
   */
  #schedule(): void {
    let evicted = false;
    for (let i = 0; i < this.#waiters.length;) {
      const waiter = this.#waiters[i]!;
      const pool = this.#pools.get(waiter.key);
      const idle = pool?.idle.pop();
      if (idle) {
        clearTimeout(idle.timer);
        this.#waiters.splice(i, 1);
        waiter.resolve(this.#lease(waiter.key, idle.client));
      } else if ((pool?.count ?? 0) < this.#opts.maxPerTarget && this.#total < this.#opts.maxBackends) {
        this.#waiters.splice(i, 1);
        this.#open(waiter);
      } else {
        if (!evicted && (pool?.count ?? 0) < this.#opts.maxPerTarget) {
          const victim = this.#oldestIdle();
          if (victim) void this.#closeIdle(victim);
          evicted = true;
        }
        i++;
      }
    }
  }

  #open(waiter: Waiter): void {
    this.#poolOf(waiter.key).count++;
    this.#total++;
    openClient(waiter.info, this.#opts.connectTimeoutMs, waiter.signal).then(
      (client) => {
        client.on('error', (err) => {
          const idle = this.#pools.get(waiter.key)?.idle.find((i) => i.client === client);
          if (!idle) return; // a checked-out client's failure reaches its caller as a failed query
          this.#opts.log(`neon-proxy: idle connection to ${whereOf(waiter.info)} lost (${err.message})`);
          void this.#closeIdle(idle);
        });
        waiter.resolve(this.#lease(waiter.key, client));
      },
      (err: Error) => {
        this.#forget(waiter.key);
        waiter.reject(err);
        this.#schedule();
      },
    );
  }

  #lease(key: string, client: pg.Client): Lease {
    let released = false;
    return {
      client,
      release: (discard) => {
        if (released) return;
        released = true;
        if (discard || this.#ending) void this.#closeClient(key, client);
        else this.#keep(key, client);
      },
    };
  }

  #keep(key: string, client: pg.Client): void {
    const idle: Idle = {
      key,
      client,
      since: performance.now(),
      timer: setTimeout(() => void this.#closeIdle(idle), this.#opts.idleTimeoutMs),
    };
    idle.timer.unref();
    this.#poolOf(key).idle.push(idle);
    this.#schedule();
  }

  #closeIdle(idle: Idle): Promise<void> {
    clearTimeout(idle.timer);
    const list = this.#pools.get(idle.key)?.idle;
    const at = list?.indexOf(idle) ?? -1;
    if (at === -1) return Promise.resolve(); // taken or closed meanwhile
    list!.splice(at, 1);
    return this.#closeClient(idle.key, idle.client);
  }

  /**
   * Ends `client` and counts its backend free only once the server closed the socket: Postgres
   * removes the backend before that, so the next connect cannot find it still counted.
   */
  async #closeClient(key: string, client: pg.Client): Promise<void> {
    await client.end().catch(() => {});
    this.#forget(key);
    this.#schedule();
  }

  #forget(key: string): void {
    this.#total--;
    const pool = this.#pools.get(key);
    if (!pool) return;
    pool.count--;
    if (pool.count === 0) this.#pools.delete(key);
  }

  #poolOf(key: string): Pool {
    let pool = this.#pools.get(key);
    if (!pool) this.#pools.set(key, (pool = { idle: [], count: 0 }));
    return pool;
  }

  #oldestIdle(): Idle | undefined {
    let oldest: Idle | undefined;
    for (const { idle } of this.#pools.values()) if (idle[0] && (!oldest || idle[0].since < oldest.since)) oldest = idle[0];
    return oldest;
  }
}

/** The password only enters the key as a digest, so the registry never holds it in clear. */
function keyOf(info: ConnectionInfo): string {
  const secret = createHash('sha256')
    .update(info.password ?? '')
    .digest('hex');
  return JSON.stringify([info.host, info.port, info.database, info.user, secret, info.applicationName ?? '', info.options ?? '']);
}

const whereOf = (info: ConnectionInfo) => `${info.user}@${describeTarget(info)}/${info.database}`;

/**
 * Opens one connection, up to ReadyForQuery, within `timeoutMs`, or until `signal` aborts (its
 * request went away: the slot is not held for nobody). The socket is ours, so a database that
 * accepts and never answers is cut at the deadline (the attempt then fails with
 * ConnectTimeoutError, not the driver's message).
 */
async function openClient(info: ConnectionInfo, timeoutMs: number, signal: AbortSignal): Promise<pg.Client> {
  const socket = new Socket();
  const client = new pg.Client({
    host: info.host,
    port: info.port,
    user: info.user,
    password: info.password,
    database: info.database,
    application_name: info.applicationName,
    options: info.options,
    types: rawText,
    stream: () => socket,
  });
  client.on('error', () => {});
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    socket.destroy();
  }, timeoutMs);
  timer.unref();
  const cut = () => socket.destroy();
  signal.addEventListener('abort', cut, { once: true });
  try {
    if (signal.aborted) throw new Error('the client went away before its connection was opened');
    await client.connect();
    return client;
  } catch (err) {
    socket.destroy();
    throw timedOut ? new ConnectTimeoutError(`no answer from ${describeTarget(info)} within ${timeoutMs} ms`) : err;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', cut);
  }
}

/**
 * Hands a connection back in a clean session, as Neon gives every HTTP request: DISCARD ALL
 * resets everything a statement can leave behind (SET and set_config, SET ROLE and SET SESSION
 * AUTHORIZATION, prepared statements, cursors, LISTEN, session advisory locks, temp tables,
 * sequence state, cached plans). It cannot run inside a transaction block, so a connection left
 * in one — or one the caller gives up on, or whose reset fails — is closed.
 */
export async function releaseClean(lease: Lease, discard: boolean): Promise<void> {
  if (discard || lease.client.getTransactionStatus() !== 'I') {
    lease.release(true);
    return;
  }
  try {
    await lease.client.query('DISCARD ALL');
  } catch {
    lease.release(true);
    return;
  }
  lease.release(false);
}
