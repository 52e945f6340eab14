/**
 * Embedded PostgreSQL for local development and tests: PGlite (Postgres compiled to WASM)
 * served over TCP by pglite-socket, so the real `pg` driver (and the local Neon proxy) talk to
 * it exactly as they would to a server. Node-only; nothing in the core imports this.
 *
 * PGlite has a single backend: pglite-socket multiplexes every connection onto it and queues
 * statements, so concurrency works but nothing runs in parallel.
 *
 * A data directory is locked (data-dir-lock.ts) before PGlite opens it and until it is closed:
 * PGlite itself lets two processes open one folder, which damages it.
 */
import { existsSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
import { StartupError } from '../runtime/node.js';
import { lockDataDir, type DataDirLock } from './data-dir-lock.js';
import { StartupSettings } from './startup-options.js';

export interface EmbeddedPostgresOptions {
  /** Folder for the data files; omit for an in-memory database that vanishes on stop. */
  dataDir?: string;
  /**
   * The lock on `dataDir` when the caller took it already (the topology does, before it checks its
   * ports); otherwise it is taken here. Either way it is released on stop.
   */
  lock?: DataDirLock;
  /** TCP port; 0 picks a free one. */
  port?: number;
  host?: string;
  /** Connections pglite-socket accepts at once (they share one backend). */
  maxConnections?: number;
}

/** An existing data directory PGlite fails to open: one line with what to do, not a WebAssembly abort. */
export class DataDirDamagedError extends StartupError {
  override name = 'DataDirDamagedError';
  constructor(dataDir: string, cause: unknown) {
    super(`${dataDir} cannot be opened (damaged?): move it aside or delete it to start fresh`, { cause });
  }
}

export interface EmbeddedPostgres {
  /** A `postgres://` URL for `pg`, the Neon proxy or psql. */
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

/**
 * Starts PGlite and serves it on loopback.
 * @example const db = await startEmbeddedPostgres({ dataDir: '.data/pglite' }); … await db.stop();
 */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions = {}): Promise<EmbeddedPostgres> {
  const host = options.host ?? '127.0.0.1';
  const lock = options.lock ?? (options.dataDir ? await lockDataDir(options.dataDir) : undefined);
  let db: PGlite;
  try {
    db = await openPGlite(options.dataDir);
  } catch (err) {
    await lock?.release();
    throw err;
  }
  const server = new PGLiteSocketServer({
    db,
    host,
    port: options.port ?? 0,
    maxConnections: options.maxConnections ?? 64,
  });
  // Two fixes to pglite-socket 0.2.17 internals (see ExchangeQueue and closeOnTerminate below).
  // Connections pick up the server's queue when they attach, so swapping it before start() is enough.
  const internals = server as unknown as { queryQueue: ExchangeQueue; handleConnection(socket: Socket): Promise<void> };
  internals.queryQueue = new ExchangeQueue(db);
  const handleConnection = internals.handleConnection.bind(server);
  internals.handleConnection = (socket) => {
    closeOnTerminate(socket);
    return handleConnection(socket);
  };
  try {
    await server.start();
  } catch (err) {
    await db.close().catch(() => {});
    await lock?.release();
    throw err;
  }
  const port = actualPort(server, options.port ?? 0);
  let stopping: Promise<void> | undefined;
  return {
    url: `postgres://postgres@${host}:${port}/postgres`,
    port,
    stop() {
      stopping ??= (async () => {
        await server.stop().catch(() => {});
        await db.close().catch(() => {});
        await lock?.release(); // only once PGlite has closed its files
      })();
      return stopping;
    },
  };
}

/** PGlite reports a folder it cannot start from as a bare `RuntimeError: Aborted()`. */
async function openPGlite(dataDir: string | undefined): Promise<PGlite> {
  if (!dataDir) return PGlite.create();
  const hadData = existsSync(join(dataDir, 'PG_VERSION'));
  try {
    return await PGlite.create(dataDir);
  } catch (err) {
    if (hadData) throw new DataDirDamagedError(dataDir, err);
    throw err;
  }
}

function actualPort(server: PGLiteSocketServer, requested: number): number {
  // getServerConn() reports "host:port" of the bound socket.
  const conn = server.getServerConn();
  const port = Number(conn.slice(conn.lastIndexOf(':') + 1));
  return Number.isInteger(port) && port > 0 ? port : requested;
}

interface Queued {
  handlerId: number;
  message: Uint8Array;
  onData: (data: Uint8Array) => void;
  resolve: (bytes: number) => void;
  reject: (err: unknown) => void;
}

const SYNC = 0x53; // 'S'
const QUERY = 0x51; // 'Q'
const TERMINATE = 0x58; // 'X'
const PASSWORD = 0x70; // 'p'
const SYNC_MESSAGE = new Uint8Array([SYNC, 0, 0, 0, 4]);
const PROTOCOL_3 = 196608;

/**
 * Ends a connection once its client sends Terminate, as PostgreSQL does. pglite-socket keeps it
 * open, so a client that waits for the server to hang up (the Neon driver over the local proxy's
 * WebSocket) held one of `maxConnections` forever: after 63 WebSocket reads, every further one
 * failed. Watches the message framing only (lengths and type bytes); nothing is buffered beyond
 * an incomplete header.
 */
function closeOnTerminate(socket: Socket): void {
  let started = false; // past the startup message: typed messages from here on
  let skip = 0; // bytes left of the current message
  let pending: Buffer | undefined; // an incomplete header
  const watch = (chunk: Buffer) => {
    let buf = pending ? Buffer.concat([pending, chunk]) : chunk;
    pending = undefined;
    for (;;) {
      if (skip >= buf.length) {
        skip -= buf.length;
        return;
      }
      buf = buf.subarray(skip);
      skip = 0;
      const headerLength = started ? 5 : 8;
      if (buf.length < headerLength) {
        pending = Buffer.from(buf);
        return;
      }
      if (started && buf[0] === TERMINATE) {
        socket.off('data', watch);
        socket.end();
        return;
      }
      skip = started ? 1 + buf.readInt32BE(1) : buf.readInt32BE(0);
      if (!started && buf.readInt32BE(4) === PROTOCOL_3) started = true;
      if (skip < headerLength) {
        socket.off('data', watch); // not the framing we know: leave the connection alone
        return;
      }
    }
  };
  socket.on('data', watch);
}

/**
 * Stands in for pglite-socket's query queue (0.2.17), which serves connections one protocol
 * *message* at a time: another connection's Parse could land between a client's Parse and Bind,
 * replacing its unnamed statement, so concurrent clients got SQLSTATE 26000/34000 errors or
 * another query's rows. Here a connection keeps the backend for a whole exchange (until its
 * Sync, simple Query or Terminate has been served) and for as long as its transaction is open;
 * otherwise connections are served first come, first served. Same methods as the original.
 * A connection's startup `options` (`-c name=value`), which PGlite ignores, are applied to the
 * shared session for its exchanges (startup-options.ts).
 */
class ExchangeQueue {
  readonly #db: PGlite;
  #queue: Queued[] = [];
  /** The connection mid-exchange or mid-transaction: only its messages may run. */
  #owner: number | null = null;
  /** The connection whose message is running now. */
  #current: number | null = null;
  /** Connections that went away while owning the backend (or running); cleaned up by #run. */
  readonly #gone = new Set<number>();
  #running = false;
  readonly #settings: StartupSettings;

  constructor(db: PGlite) {
    this.#db = db;
    this.#settings = new StartupSettings(db);
  }

  enqueue(handlerId: number, message: Uint8Array, onData: (data: Uint8Array) => void): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ handlerId, message, onData, resolve, reject });
      void this.#run();
    });
  }

  /** The one scheduler: serves what may run now; stops when the owner's next message has not arrived. */
  async #run(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      for (;;) {
        if (this.#owner !== null && this.#gone.has(this.#owner)) {
          this.#gone.delete(this.#owner);
          this.#owner = null;
          await this.#reset();
          continue;
        }
        const at = this.#owner === null ? 0 : this.#queue.findIndex((q) => q.handlerId === this.#owner);
        if (at < 0 || at >= this.#queue.length) return;
        const begins = this.#owner === null;
        const item = this.#queue.splice(at, 1)[0]!;
        this.#current = item.handlerId;
        let bytes = 0;
        let failed: { err: unknown } | undefined;
        const onData = (data: Uint8Array) => {
          bytes += data.length;
          item.onData(data);
        };
        try {
          await this.#serve(item, begins, onData);
        } catch (err) {
          failed = { err };
        } finally {
          this.#current = null;
        }
        const type = item.message[0];
        // A startup message has no type byte (it starts with its length, so with 0).
        const exchangeDone = type === SYNC || type === QUERY || type === TERMINATE || type === PASSWORD || type === 0;
        const keep = this.#gone.has(item.handlerId) || (!failed && (!exchangeDone || this.#db.isInTransaction()));
        this.#owner = keep ? item.handlerId : null;
        if (failed) item.reject(failed.err);
        else item.resolve(bytes);
      }
    } finally {
      this.#running = false;
    }
  }

  /** Runs one message; a startup message's options are checked first, an exchange's settings applied. */
  async #serve(item: Queued, begins: boolean, onData: (data: Uint8Array) => void): Promise<void> {
    const type = item.message[0];
    if (type === 0) {
      const refused = await this.#settings.startup(item.handlerId, item.message);
      if (refused) return onData(refused);
    } else if (begins && type !== TERMINATE) {
      await this.#settings.enter(item.handlerId);
    }
    await this.#db.runExclusive(() => this.#db.execProtocolRawStream(item.message, { onRawData: onData }));
  }

  /** Ends a half-done exchange and rolls back an open transaction. */
  async #reset(): Promise<void> {
    try {
      await this.#db.runExclusive(() => this.#db.execProtocolRawStream(SYNC_MESSAGE, { onRawData: () => {} }));
      // exec() takes the query lock itself: outside runExclusive, or it would wait on itself.
      if (this.#db.isInTransaction()) await this.#db.exec('ROLLBACK');
    } catch {
      // Left as it is; the next client's own statements report the state.
    }
  }

  getQueueLength(): number {
    return this.#queue.length;
  }

  clearQueueForHandler(handlerId: number): void {
    this.#settings.forget(handlerId);
    this.#queue = this.#queue.filter((q) => {
      if (q.handlerId !== handlerId) return true;
      q.reject(new Error('Handler disconnected'));
      return false;
    });
  }

  /** Called when a connection goes away: if it held the backend, its exchange and transaction are undone. */
  async clearTransactionIfNeeded(handlerId: number): Promise<void> {
    if (this.#owner !== handlerId && this.#current !== handlerId) return;
    this.#gone.add(handlerId);
    await this.#run();
  }
}
