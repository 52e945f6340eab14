/**
 * Shared set-up of the edge runtime tests (workerd, Deno): a database of the suite's own (or one
 * it is given, e.g. on a private primary with standbys), the Node gateway (signed forwards only,
 * unique application_name, ephemeral port), the local Neon proxy in front of that database and its
 * replicas, and the edge bundle built into a temporary folder (so suites running side by side, or
 * `npm start`, never overwrite each other's dist/). The runtime itself (miniflare, a Deno process)
 * is the suite's to start and stop, before `stop()`.
 */
import { freePort } from './wait.js';
import type { Summary, Workout } from '../../src/fitness/repo.js';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildNetlifyEdge, buildWorker } from '../../src/local/build.js';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { fitness } from '../../src/fitness/app.js';
import { startGateway, type Gateway } from '../../src/runtime/node.js';
import { createTestDatabase, type TestDatabase } from './db.js';

export type EdgeBundle = 'worker' | 'netlify-edge';

export interface EdgeStack {
  db: TestDatabase;
  gateway: Gateway;
  proxy: NeonProxy;
  /** The Node gateway's base URL (NODE_FUNCTION_URL for the edge). */
  nodeUrl: string;
  /** The Neon proxy's base URL (NEON_PROXY_URL for the edge). */
  proxyUrl: string;
  /** The shared HMAC secret of edge and gateway (≥ 32 characters). */
  forwardSecret: string;
  /** application_name of the gateway's connections. */
  applicationName: string;
  /** The built edge bundle (an ES module). */
  bundlePath: string;
  /** The edge's OPS_TOKEN (its /stats, /metrics and readiness details need it outside development). */
  opsToken: string;
  /** What the edge runtime needs: DATABASE_URL, NEON_PROXY_URL, NODE_FUNCTION_URL, FORWARD_SECRET, OPS_TOKEN (and DATABASE_REPLICA_URLS, given replicas). */
  edgeEnv: Record<string, string>;
  /** Gateway and proxy log lines. */
  logs: string[];
  /** Stops the gateway and the proxy, drops the database (unless it was given), removes the bundle. Idempotent. */
  stop(): Promise<void>;
}

export interface EdgeStackOptions {
  /** The name prefix of the database made for the stack (default `poolgate_edge`). */
  prefix?: string;
  /** A database the caller made (and drops itself); default: a new one from createTestDatabase, dropped by stop(). */
  database?: TestDatabase;
  /**
   * Read replicas of that database (streaming standbys): DATABASE_REPLICA_URLS for the gateway
   * (so its transactional answers carry consistency tokens) and the edge (so its reads use them),
   * and targets the proxy may reach.
   */
  replicaUrls?: string[];
  /** More of the gateway's env (e.g. REPLICA_CHECK_INTERVAL_MS, CONSISTENCY_COOKIE). */
  gatewayEnv?: Record<string, string>;
}

const EDGE_OPS_TOKEN = 'edge-ops-token-0123456789-abcdef';

/**
 * @example
 * const stack = await startEdgeStack('worker');
 * const mf = new Miniflare({ workers: [workerdWorker('edge', stack.bundlePath, stack.edgeEnv)] });
 * … await mf.dispose(); await stack.stop();
 */
export async function startEdgeStack(bundle: EdgeBundle, options: EdgeStackOptions = {}): Promise<EdgeStack> {
  const { prefix = 'poolgate_edge', replicaUrls = [], gatewayEnv = {} } = options;
  const replicaEnv: Record<string, string> = replicaUrls.length ? { DATABASE_REPLICA_URLS: replicaUrls.join(',') } : {};
  const stops: (() => Promise<unknown>)[] = [];
  const stopAll = async () => {
    for (const stop of stops.splice(0).reverse()) await stop().catch(() => {});
  };
  const logs: string[] = [];
  try {
    const dir = await mkdtemp(join(tmpdir(), 'poolgate-edge-'));
    stops.push(() => rm(dir, { recursive: true, force: true }));
    // Building first lets esbuild run while nothing else competes for the two cores.
    const bundlePath = bundle === 'worker' ? await buildWorker(join(dir, 'worker.js')) : await buildNetlifyEdge(join(dir, 'poolgate.js'));

    const db = options.database ?? (await createTestDatabase(prefix));
    if (!options.database) stops.push(() => db.drop());

    const forwardSecret = randomBytes(32).toString('base64url');
    const applicationName = `poolgate-edge-${process.pid}-${randomBytes(4).toString('hex')}`;
    const gateway = await startGateway(
      fitness,
      {
        DATABASE_URL: db.url,
        PORT: '0',
        HOST: '127.0.0.1',
        POOL_MAX: '5',
        POOL_MIN: '1',
        SHUTDOWN_TIMEOUT_MS: '5000',
        LOG_FORMAT: 'json',
        FORWARD_SECRET: forwardSecret,
        APPLICATION_NAME: applicationName,
        ...replicaEnv,
        ...gatewayEnv,
      },
      { log: (line) => logs.push(line) },
    );
    stops.push(() => gateway.close());

    const proxy = await startNeonProxy({
      databaseUrls: [db.url, ...replicaUrls],
      port: 0,
      host: '127.0.0.1',
      log: (line) => logs.push(line),
    });
    stops.push(() => proxy.close());

    let stopping: Promise<void> | undefined;
    return {
      db,
      gateway,
      proxy,
      nodeUrl: gateway.url,
      proxyUrl: proxy.url,
      forwardSecret,
      applicationName,
      bundlePath,
      opsToken: EDGE_OPS_TOKEN,
      edgeEnv: {
        DATABASE_URL: db.url,
        NEON_PROXY_URL: proxy.url,
        NODE_FUNCTION_URL: gateway.url,
        FORWARD_SECRET: forwardSecret,
        OPS_TOKEN: EDGE_OPS_TOKEN,
        // The edge suites test the database path under the fitness reads; the cache's own suites turn it on.
        CACHE: 'off',
        ...replicaEnv,
      },
      logs,
      stop: () => (stopping ??= stopAll()),
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** `http://127.0.0.1:<port>` of a port that was free a moment ago and has nothing listening. */
export const closedPortUrl = async (): Promise<string> => `http://127.0.0.1:${await freePort()}`;

/** Rows of `table` in the suite's database, read with pg (not through any app path). */
export async function countRows(
  db: TestDatabase,
  table: 'users' | 'workouts' | 'workout_sets' | 'poolgate_idempotency_keys',
  where = '',
): Promise<number> {
  const { rows } = await db.admin(`SELECT count(*)::int AS n FROM ${table} ${where}`);
  return rows[0].n as number;
}

/** A user with preferences, three workouts and four sets, inserted with pg; the figures the API must report. */
export interface Athlete {
  userId: string;
  email: string;
  strengthWorkoutId: string;
  expectedUser: { id: string; email: string; name: string; preferences: { units: 'imperial'; weeklyGoal: number }; createdAt: string };
  /** The figures GET /api/users/:id/summary must report (the repo's own Summary shape). */
  expectedSummary: Summary;
  /** What GET /api/users/:id/workouts/latest must answer (but createdAt, set by the database). */
  expectedLatest: Omit<Workout, 'createdAt'>;
}

export async function insertAthlete(db: TestDatabase): Promise<Athlete> {
  const userId = randomUUID();
  const email = `edge-${randomBytes(4).toString('hex')}@example.com`;
  const [w1, w2, w3] = [randomUUID(), randomUUID(), randomUUID()];
  await db.admin(`INSERT INTO users (id, email, name, created_at) VALUES ($1, $2, 'Edge Athlete', '2026-03-01T08:00:00Z')`, [
    userId,
    email,
  ]);
  await db.admin(`INSERT INTO user_preferences (user_id, units, weekly_goal) VALUES ($1, 'imperial', 5)`, [userId]);
  await db.admin(
    `INSERT INTO workouts (id, user_id, kind, started_at, duration_seconds) VALUES
       ($2, $1, 'strength', '2026-03-02T07:00:00Z', 3600),
       ($3, $1, 'run', '2026-03-04T06:30:00Z', 1800),
       ($4, $1, 'strength', '2026-03-05T07:00:00Z', NULL)`,
    [userId, w1, w2, w3],
  );
  await db.admin(
    `INSERT INTO workout_sets (workout_id, position, exercise, reps, weight_kg) VALUES
       ($1, 1, 'squat', 5, 100), ($1, 2, 'squat', 5, 102.5), ($1, 3, 'bench press', 8, 60), ($2, 1, 'deadlift', 3, 140)`,
    [w1, w3],
  );
  return {
    userId,
    email,
    strengthWorkoutId: w1,
    expectedUser: {
      id: userId,
      email,
      name: 'Edge Athlete',
      preferences: { units: 'imperial', weeklyGoal: 5 },
      createdAt: '2026-03-01T08:00:00.000Z',
    },
    expectedLatest: {
      id: w3,
      userId,
      kind: 'strength',
      startedAt: '2026-03-05T07:00:00.000Z',
      durationSeconds: null,
      sets: [{ exercise: 'deadlift', reps: 3, weightKg: 140 }],
    },
    expectedSummary: {
      userId,
      workouts: 3,
      sets: 4,
      reps: 5 + 5 + 8 + 3,
      volumeKg: 5 * 100 + 5 * 102.5 + 8 * 60 + 3 * 140,
      durationSeconds: 3600 + 1800,
      firstWorkoutAt: '2026-03-02T07:00:00.000Z',
      lastWorkoutAt: '2026-03-05T07:00:00.000Z',
      byKind: [
        { kind: 'strength', workouts: 2 },
        { kind: 'run', workouts: 1 },
      ],
    },
  };
}

/** The `desc` of the `db` entry of a Server-Timing header, e.g. "neon-http 1q". */
export function dbDescOf(serverTiming: string | null): string | undefined {
  return /(?:^|,\s*)db;[^,]*desc="([^"]*)"/.exec(serverTiming ?? '')?.[1];
}

/** A valid POST /api/workouts body for `userId`, with two sets. */
export const workoutBody = (userId: string, kind = 'edge-run') => ({
  userId,
  kind,
  startedAt: '2026-03-10T06:00:00Z',
  durationSeconds: 1500,
  sets: [
    { exercise: 'sprint', reps: 4 },
    { exercise: 'lunge', reps: 12, weightKg: 20 },
  ],
});
