/**
 * The edge stack (edge.ts) on a private primary with two streaming standbys (private-replicas.ts),
 * for the edge's read-replica suites (workerd, Deno): the Node gateway and the edge both get
 * DATABASE_REPLICA_URLS, so the gateway's transactional answers carry consistency tokens and the
 * edge's reads go to the standbys; the local Neon proxy may reach all three servers.
 */
import { randomUUID } from 'node:crypto';
import { CONSISTENCY_HEADER } from '../../src/db/consistency.js';
import { startEdgeStack, type EdgeBundle, type EdgeStack } from './edge.js';
import { json } from './gateway.js';
import { privateTestDatabase } from './private-postgres.js';
import { startReplicaSet, type ReplicaSet, type Standby } from './private-replicas.js';

export { CONSISTENCY_HEADER };

const DB = 'poolgate_edge_replicas';
/** How often gateway and edge look at the standbys: often, so a test waits little for a look. */
export const CHECK_INTERVAL_MS = 100;

export interface ReplicatedEdgeStack extends EdgeStack {
  set: ReplicaSet;
  standbys: Standby[];
  /** The primary's WAL insert position now. */
  primaryLsn(): Promise<string>;
  /** Resolves once both standbys have replayed everything the primary has written so far. */
  caughtUp(): Promise<void>;
}

/**
 * @example
 * const stack = await startReplicatedEdgeStack('worker');
 * const mf = new Miniflare({ workers: [workerdWorker('edge', stack.bundlePath, stack.edgeEnv)] });
 * … await mf.dispose(); await stack.stop();
 */
export async function startReplicatedEdgeStack(bundle: EdgeBundle, gatewayEnv: Record<string, string> = {}): Promise<ReplicatedEdgeStack> {
  const set = await startReplicaSet({ standbys: 2 });
  let stack: EdgeStack | undefined;
  const database = await privateTestDatabase(set.primary, DB).catch(async (err: unknown) => {
    await set.destroy();
    throw err;
  });
  const stopAll = async () => {
    await stack?.stop();
    await database.drop();
    await set.destroy();
  };
  try {
    stack = await startEdgeStack(bundle, {
      database,
      replicaUrls: set.standbys.map((s) => s.url(DB)),
      gatewayEnv: { REPLICA_CHECK_INTERVAL_MS: String(CHECK_INTERVAL_MS), ...gatewayEnv },
    });
    const primaryLsn = async () => String((await database.admin('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]?.lsn);
    const caughtUp = async () => {
      const lsn = await primaryLsn();
      await Promise.all(set.standbys.map((s) => s.caughtUpTo(lsn)));
    };
    await caughtUp(); // the schema, migrated by the gateway at start
    let stopping: Promise<void> | undefined;
    return {
      ...stack,
      edgeEnv: { ...stack.edgeEnv, REPLICA_CHECK_INTERVAL_MS: String(CHECK_INTERVAL_MS) },
      set,
      standbys: set.standbys,
      primaryLsn,
      caughtUp,
      stop: () => (stopping ??= stopAll()),
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** Which server a response's reads came from, as its Server-Timing says (`db;…;desc="neon-http 1q replica-1"`). */
export const servedBy = (headers: Headers): string | undefined =>
  /(?:^|,\s*)db;[^,]*desc="[^"]* (primary|replica-\d)"/.exec(headers.get('server-timing') ?? '')?.[1];

/** One request to the edge, bounded so a hang fails the test; the body read (and parsed when JSON). */
export const ask = (url: string, init: { method?: string; headers?: Record<string, string>; json?: unknown } = {}) =>
  json(url, { ...init, signal: AbortSignal.timeout(20_000) });

/** POST /api/users through the edge (forwarded to the gateway): the new user's id and the answer. */
export async function createUser(edge: string, headers: Record<string, string> = {}) {
  const res = await ask(`${edge}/api/users`, {
    method: 'POST',
    headers,
    json: { email: `er-${randomUUID()}@example.com`, name: 'edge-replica' },
  });
  if (res.status !== 201) throw new Error(`POST /api/users through the edge answered ${res.status}: ${res.text}`);
  return { id: res.body.id as string, res };
}

/** Adds one to `counts[key]`. */
export const tally = (counts: Record<string, number>, key: string | undefined) => {
  const k = key ?? '?';
  counts[k] = (counts[k] ?? 0) + 1;
};

/** How many of `counts` were served by a replica. */
export const onReplicas = (counts: Record<string, number>) => (counts['replica-1'] ?? 0) + (counts['replica-2'] ?? 0);

/**
 * A read that starts a look at the standbys, then time for it to answer: looks come only with
 * reads, so after a pause the next read would be served on what was seen before it.
 */
export async function lookAgain(edge: string): Promise<void> {
  const read = await ask(`${edge}/api/users/00000000-0000-4000-8000-000000000000`);
  if (read.status !== 404) throw new Error(`a read of no user answered ${read.status}: ${read.text}`);
  await sleep(3 * CHECK_INTERVAL_MS);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
