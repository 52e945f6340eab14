/**
 * Embedded PostgreSQL for local development and tests: PGlite (Postgres compiled to WASM)
 * served over TCP by pglite-socket, so the real `pg` driver (and the local Neon proxy) talk to
 * it exactly as they would to a server. Node-only; nothing in the core imports this.
 *
 * PGlite has a single backend: pglite-socket multiplexes every connection onto it and queues
 * statements, so concurrency works but nothing runs in parallel.
 */
import { mkdir } from 'node:fs/promises';
import { PGlite } from '@electric-sql/pglite';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';

export interface EmbeddedPostgresOptions {
  /** Folder for the data files; omit for an in-memory database that vanishes on stop. */
  dataDir?: string;
  /** TCP port; 0 picks a free one. */
  port?: number;
  host?: string;
  /** Connections pglite-socket accepts at once (they share one backend). */
  maxConnections?: number;
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
  if (options.dataDir) await mkdir(options.dataDir, { recursive: true });
  const db = options.dataDir ? await PGlite.create(options.dataDir) : await PGlite.create();
  const server = new PGLiteSocketServer({
    db,
    host,
    port: options.port ?? 0,
    maxConnections: options.maxConnections ?? 64,
  });
  try {
    await server.start();
  } catch (err) {
    await db.close().catch(() => {});
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
      })();
      return stopping;
    },
  };
}

function actualPort(server: PGLiteSocketServer, requested: number): number {
  // getServerConn() reports "host:port" of the bound socket.
  const conn = server.getServerConn();
  const port = Number(conn.slice(conn.lastIndexOf(':') + 1));
  return Number.isInteger(port) && port > 0 ? port : requested;
}
