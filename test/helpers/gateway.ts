/**
 * A real Node gateway for integration tests: its own database (real PostgreSQL on
 * TEST_DATABASE_URL, else embedded PGlite), `startGateway` on an ephemeral port with a unique
 * application_name, log lines kept in memory, and one `stop()` that closes the gateway then drops
 * the database. `json()` is a fetch that parses the body and remembers every response text, so a
 * suite can assert at the end that no response ever leaked internals.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { PoolgateApp } from '../../src/definition.js';
import { fitness } from '../../src/fitness/app.js';
import { startGateway, type Gateway } from '../../src/runtime/node.js';
import { createTestDatabase, type TestDatabase } from './db.js';

export interface TestGateway {
  url: string;
  db: TestDatabase;
  gateway: Gateway;
  /** The application_name the gateway's connections carry (unique per gateway). */
  applicationName: string;
  /** Lines the gateway logged: one JSON object each (see src/log/logger.ts). */
  logs: string[];
  /** Closes the gateway (if not closed yet), then drops the database unless it was passed in. */
  stop(): Promise<void>;
}

export interface TestGatewayOptions {
  /** Reuse a database (it is then not dropped by `stop()`). */
  db?: TestDatabase;
  /** The application to serve (default: the fitness example), e.g. with test-only routes added. */
  app?: PoolgateApp;
}

export const uniqueName = (prefix = 'poolgate-test') => `${prefix}-${process.pid}-${randomBytes(4).toString('hex')}`;

/**
 * @example
 * const t = await startTestGateway({ POOL_MAX: '1' });
 * const res = await json(`${t.url}/health`);
 * await t.stop();
 */
export async function startTestGateway(overrides: Record<string, string> = {}, options: TestGatewayOptions = {}): Promise<TestGateway> {
  const db = options.db ?? (await createTestDatabase());
  const logs: string[] = [];
  const applicationName = overrides.APPLICATION_NAME ?? uniqueName();
  let gateway: Gateway;
  try {
    gateway = await startGateway(
      options.app ?? fitness,
      {
        DATABASE_URL: db.url,
        PORT: '0',
        HOST: '127.0.0.1',
        // Lines go to `logs`, never to the terminal: info and above, as JSON (what production writes).
        LOG_LEVEL: 'info',
        LOG_FORMAT: 'json',
        POOL_MAX: '5',
        POOL_MIN: '1',
        SHUTDOWN_TIMEOUT_MS: '5000',
        // The suite's files share one server but are no one deployment: a gateway must not size its
        // pool by other files' connections (a share that shrank mid-test reopened a connection in
        // stats.test). The budget's own tests turn it on (connection-budget.test.ts).
        POOL_BUDGET: 'off',
        // The suites read the fitness routes to test the database path under them: GET /api/users/:id
        // must reach the database every time. The read cache's own suites turn it on (read-cache.test.ts).
        CACHE: 'off',
        ...overrides,
        APPLICATION_NAME: applicationName,
      },
      { log: (line) => logs.push(line) },
    );
  } catch (err) {
    if (!options.db) await db.drop();
    throw err;
  }
  let stopping: Promise<void> | undefined;
  return {
    url: gateway.url,
    db,
    gateway,
    applicationName,
    logs,
    stop() {
      stopping ??= (async () => {
        try {
          await gateway.close();
        } finally {
          if (!options.db) await db.drop();
        }
      })();
      return stopping;
    },
  };
}

export interface JsonResponse<T = any> {
  status: number;
  headers: Headers;
  /** Parsed JSON, or undefined when the body was empty or not JSON. */
  body: T;
  text: string;
}

/** Every response text (headers and body) `json()` has seen in this test file. */
export const seenResponses: string[] = [];

/** fetch + read the whole body + JSON.parse when it is JSON. */
export async function json<T = any>(url: string, init: RequestInit & { json?: unknown } = {}): Promise<JsonResponse<T>> {
  const { json: payload, ...rest } = init;
  const headers = new Headers(rest.headers);
  if (payload !== undefined && !headers.has('content-type')) headers.set('content-type', 'application/json');
  const res = await fetch(url, { ...rest, headers, ...(payload !== undefined ? { body: JSON.stringify(payload) } : {}) });
  const text = await res.text();
  let body: any;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  seenResponses.push(`${[...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${text}`);
  return { status: res.status, headers: res.headers, body, text };
}

/** What must never appear in a response: stack frames, the connection string, the DB host, user or password. */
export function leaksIn(text: string, db: TestDatabase): string[] {
  const url = new URL(db.url);
  const found: string[] = [];
  if (/\n\s*at .+:\d+:\d+/.test(text) || /\bat (?:async )?\S+ \(.+:\d+:\d+\)/.test(text)) found.push('stack trace');
  if (text.includes(db.url)) found.push('connection string');
  if (/postgres(?:ql)?:\/\//i.test(text)) found.push('postgres:// URL');
  if (text.includes(`${url.hostname}:${url.port}`)) found.push('database host:port');
  // The user as drivers and URLs print it (a bare word like "postgres" is too common to flag).
  const user = decodeURIComponent(url.username);
  if (user && [`${user}@`, `user "${user}"`, `role "${user}"`, `user=${user}`].some((form) => text.includes(form)))
    found.push('database user');
  if (url.password && text.includes(decodeURIComponent(url.password))) found.push('database password');
  return found;
}

/** A dedicated admin connection, for holding locks and transactions across statements. */
export async function adminClient(db: TestDatabase): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: db.url, application_name: 'poolgate-test-locker' });
  client.on('error', () => {});
  await client.connect();
  return client;
}

/** Backends of `applicationName` on the test database (real PostgreSQL only). */
export async function backendsOf(
  db: TestDatabase,
  applicationName: string,
): Promise<{ pid: number; state: string | null; wait_event_type: string | null }[]> {
  const { rows } = await db.admin(
    "SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE split_part(application_name, ' [pg:', 1) = $1 AND datname = current_database()",
    [applicationName],
  );
  return rows;
}

export { waitFor } from './wait.js';

/**
 * Collects uncaught exceptions and unhandled rejections while a suite runs (a dropped connection
 * must never surface as one). Call `start()` in beforeAll and `stop()` in afterAll; assert on `errors`.
 */
export function catchUnhandled(): { errors: unknown[]; start(): void; stop(): void } {
  const errors: unknown[] = [];
  const record = (err: unknown) => errors.push(err);
  return {
    errors,
    start() {
      process.on('uncaughtException', record);
      process.on('unhandledRejection', record);
    },
    stop() {
      process.off('uncaughtException', record);
      process.off('unhandledRejection', record);
    },
  };
}
