/**
 * Configuration from the environment, parsed and validated once at start-up.
 * A bad value stops start-up with one line naming the variable; the connection string is kept
 * non-enumerable so it never reaches logs, JSON dumps or error messages.
 */
import { SLOW_READ_MS } from './db/connectors/lane-latency.js';
import { MIN_SECRET_LENGTH } from './security/forward-signature.js';
import { AppError } from './errors.js';
import { LOG_LEVELS, parseLogLevel, type LogLevel } from './log/logger.js';

export interface PoolConfig {
  max: number;
  min: number;
  idleTimeoutMs: number;
  /** How long establishing one new connection may take. */
  connectionTimeoutMs: number;
  /** How long a request may wait for a free connection before it gets "pool exhausted". */
  acquireTimeoutMs: number;
  /**
   * A memory bound on requests waiting for a connection (beyond it they are refused at once).
   * Admission is by predicted wait (resilience/gate.ts), which sheds long before this in normal use.
   */
  queueMax: number;
  /** Also shed by the standing-queue (CoDel-style) rule under a sustained overload (resilience/gate.ts); default off. */
  overloadShedding: boolean;
  /** Server-side `statement_timeout`. */
  statementTimeoutMs: number;
  /** Client-side timeout, a little longer than the statement timeout. */
  queryTimeoutMs: number;
  applicationName: string;
  /**
   * Statements with parameters run as named prepared statements, parsed and planned once per
   * connection (PG_PREPARED_STATEMENTS=on|off). On behind a pooler too: the first name it refuses
   * switches them off for that connection string (db/connectors/source-support.ts).
   */
  preparedStatements: boolean;
  /** Named statements one connection keeps at most; further ones run unnamed. */
  preparedStatementsMax: number;
  /**
   * How many of the `max` connections are pipelined lanes for reads (PG_PIPELINE_LANES; 0 = none):
   * concurrent requests' read statements written back to back on them, the rest on the pool.
   */
  pipelineLanes: number;
  /**
   * A read whose recent time (per statement text) is above this goes to the pool, not a lane
   * (PG_PIPELINE_SLOW_MS), so it never stalls the reads written behind it.
   */
  pipelineSlowReadMs: number;
  /** A statement's result is refused past this many rows (RESULT_MAX_ROWS) or bytes (RESULT_MAX_BYTES): rows beyond are not kept. */
  resultMaxRows: number;
  resultMaxBytes: number;
  /**
   * One connection budget for every instance on the server (POOL_BUDGET=auto|off|<n>: the server's
   * max_connections less superuser_reserved_connections, none, or n connections for all
   * instances), less POOL_RESERVE for operators and migrations; looked at every
   * POOL_BUDGET_INTERVAL_MS while connections are held (db/connectors/pg-budget.ts).
   */
  budget: BudgetConfig;
}

export interface BudgetConfig {
  mode: 'auto' | 'off' | number;
  reserve: number;
  intervalMs: number;
  /** Tests pin it; otherwise new per process. */
  instanceId?: string;
}

/** Lanes by default: one per five connections, at most four; none below five connections. */
/** POOL_QUEUE_MAX's default: a few MB of waiting requests, far above what predicted-wait admission lets queue. */
const QUEUE_MAX_DEFAULT = 10_000;

export const defaultPipelineLanes = (max: number): number => Math.min(4, Math.floor(max / 5));

/** Named statements per connection by default: more than an application's fixed statements, few enough to cost little memory. */
export const PREPARED_STATEMENTS_MAX = 200;

/** A statement's result by default: at most this many rows and bytes (RESULT_MAX_ROWS, RESULT_MAX_BYTES). */
export const RESULT_MAX_ROWS = 500_000;
export const RESULT_MAX_BYTES = 64 * 1024 * 1024;

/** Read replicas (DATABASE_REPLICA_URLS): which reads may go there, how often each is looked at. */
export interface ReplicaConfig {
  /** A replica further behind than this serves no read (REPLICA_MAX_LAG_MS). */
  maxLagMs: number;
  /** How often each replica's replay position and lag are read (REPLICA_CHECK_INTERVAL_MS). */
  checkIntervalMs: number;
  /** Transactional responses also set the consistency token as a cookie (CONSISTENCY_COOKIE=on). */
  cookie: boolean;
}

/** The read cache for routes that declare a policy (cache/): CACHE=on|off and its bounds. */
export interface CacheConfig {
  enabled: boolean;
  /** The longest a committed write may go unseen by readers without its token (CACHE_MAX_STALENESS_MS). */
  maxStalenessMs: number;
  /** The in-process store's bounds (CACHE_MAX_ENTRIES, CACHE_MAX_BYTES). */
  maxEntries: number;
  maxBytes: number;
}

export const cacheConfig = (env: Env): CacheConfig => ({
  enabled: onOff(env, 'CACHE', true),
  maxStalenessMs: int(env, 'CACHE_MAX_STALENESS_MS', 1_000, 20, 600_000),
  maxEntries: int(env, 'CACHE_MAX_ENTRIES', 10_000, 1, 10_000_000),
  maxBytes: int(env, 'CACHE_MAX_BYTES', 32 * 1024 * 1024, 1024, 16 * 1024 * 1024 * 1024),
});

export interface Config {
  /** postgres:// URL, or undefined to run on the embedded database. Non-enumerable. */
  readonly databaseUrl: string | undefined;
  /** The read replicas' postgres:// URLs (DATABASE_REPLICA_URLS, comma-separated); none: every read on the primary. Non-enumerable. */
  readonly replicaUrls: readonly string[];
  replicas: ReplicaConfig;
  cache: CacheConfig;
  port: number;
  host: string;
  pool: PoolConfig;
  /** Largest request body accepted, in bytes. */
  bodyLimitBytes: number;
  /** How long graceful shutdown waits for in-flight requests. */
  shutdownTimeoutMs: number;
  /** How long an Idempotency-Key's stored response is kept. */
  idempotencyTtlMs: number;
  /** How often the Node gateway deletes expired Idempotency-Key records. */
  idempotencyPurgeIntervalMs: number;
  /** Every request's deadline: waits and statements are cut short (and cancelled) to meet it. */
  requestTimeoutMs: number;
  /** Folder of the embedded database's data files. */
  embeddedDataDir: string;
  /** LOG_LEVEL: trace, debug, info (default), warn, error or silent. */
  logLevel: LogLevel;
  /** LOG_FORMAT: json, pretty, or auto (the default: pretty on a terminal, JSON otherwise). */
  logFormat: LogFormat;
  /** LOG_SLOW_MS: a request at least this slow is logged at info (default 1000). */
  logSlowMs: number;
  /** When set, API routes only accept requests signed by the edge with this secret. Non-enumerable. */
  readonly forwardSecret: string | undefined;
  /** Bearer token for /stats, /metrics and readiness details (OPS_TOKEN). Non-enumerable. */
  readonly opsToken: string | undefined;
  /** POOLGATE_ENV=development: relaxed secret checks, ops endpoints open. */
  development: boolean;
  /** The live dashboard at /dashboard (DASHBOARD=on|off; on by default in development). */
  dashboard: boolean;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
  }
}

/**
 * Builds a runtime entry's app on first use and keeps it. When it cannot be built, each request
 * gets a 500 naming the variable to fix (logged too) and the next request tries again: never a
 * stack, never the value of a secret.
 * @example const appFor = buildOnce((env: Env) => createEdgeApp(parseEdgeConfig(env), deps));
 */
export function buildOnce<A, E>(build: (env: E) => A): (env: E, request: Request) => A | Response {
  let built: A | undefined;
  return (env, request) => {
    try {
      return (built ??= build(env));
    } catch (err) {
      const message = err instanceof ConfigError ? `poolgate is misconfigured: ${err.message}` : 'poolgate failed to start.';
      console.error(message);
      return new AppError(500, 'internal', message).toResponse(request.headers.get('x-request-id') ?? 'unknown');
    }
  };
}

type Env = Record<string, string | undefined>;

/** What a value below `min` should have been, in words a reader checks at a glance. */
const atLeast = (min: number) =>
  min === 1 ? 'a positive whole number' : min === 0 ? 'zero or a positive whole number' : `at least ${min}`;

/** A whole number in [min, max]; the error says whether the value is no number or out of range, and the range. */
function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const range = `${min} to ${max}`;
  // A sign is accepted so that "-5" reads as too small rather than as no number at all.
  if (!/^[-+]?\d+$/.test(raw.trim()))
    throw new ConfigError(name, `must be a whole number from ${range}, got "${raw}" (not a whole number)`);
  const value = Number(raw);
  if (value < min) throw new ConfigError(name, `must be ${atLeast(min)}, got "${raw}" (too small; allowed: ${range})`);
  if (value > max) throw new ConfigError(name, `must be at most ${max}, got "${raw}" (too large; allowed: ${range})`);
  return value;
}

/** "on" or "off", in any case; the error names both. */
function budgetMode(env: Env): BudgetConfig['mode'] {
  const raw = env.POOL_BUDGET?.trim().toLowerCase();
  if (raw === undefined || raw === '') return 'auto';
  if (raw === 'off') return 'off';
  if (raw === 'auto') return 'auto';
  return int(env, 'POOL_BUDGET', 0, 1, 100_000);
}

function onOff(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const value = raw.trim().toLowerCase();
  if (value !== 'on' && value !== 'off') throw new ConfigError(name, `must be on or off, got "${raw}"`);
  return value === 'on';
}

/** Checks a postgres URL without ever echoing it (it may hold a password). */
export function validateDatabaseUrl(name: string, raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(name, 'is not a valid URL (expected postgres://user:password@host:port/database)');
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
    throw new ConfigError(name, `must start with postgres:// or postgresql://, got "${url.protocol}//…"`);
  }
  if (!url.hostname) throw new ConfigError(name, 'has no host');
  return raw;
}

/** DATABASE_REPLICA_URLS: comma-separated postgres URLs, each checked without being echoed. */
export function replicaUrls(env: Env): string[] {
  const raw = env.DATABASE_REPLICA_URLS?.trim();
  if (!raw) return [];
  return raw.split(',').map((u, i) => validateDatabaseUrl(`DATABASE_REPLICA_URLS (entry ${i + 1})`, u.trim()));
}

export const replicaConfig = (env: Env): ReplicaConfig => ({
  maxLagMs: int(env, 'REPLICA_MAX_LAG_MS', 5_000, 0, 86_400_000),
  checkIntervalMs: int(env, 'REPLICA_CHECK_INTERVAL_MS', 500, 50, 60_000),
  cookie: onOff(env, 'CONSISTENCY_COOKIE', false),
});

/**
 * Parses the environment. Throws ConfigError naming the first bad variable.
 * @example const config = parseConfig(process.env);
 */
export function parseConfig(env: Env): Config {
  const rawUrl = env.DATABASE_URL?.trim() || undefined;
  const databaseUrl = rawUrl === undefined ? undefined : validateDatabaseUrl('DATABASE_URL', rawUrl);

  const max = int(env, 'POOL_MAX', 20, 1, 1000);
  const min = int(env, 'POOL_MIN', Math.min(2, max), 0, 1000);
  if (min > max) throw new ConfigError('POOL_MIN', `must not exceed POOL_MAX (${max}), got ${min}`);
  const pipelineLanes = int(env, 'PG_PIPELINE_LANES', defaultPipelineLanes(max), 0, Math.max(0, max - 1));
  const statementTimeoutMs = int(env, 'STATEMENT_TIMEOUT_MS', 30_000, 1, 3_600_000);
  const applicationName = env.APPLICATION_NAME?.trim() || 'poolgate';
  if (!/^[\x20-\x7e]{1,63}$/.test(applicationName)) {
    throw new ConfigError('APPLICATION_NAME', 'must be 1 to 63 printable ASCII characters');
  }
  const { logLevel, logFormat, logSlowMs } = logConfig(env);

  const replicas = replicaUrls(env);
  if (replicas.length > 0 && databaseUrl === undefined)
    throw new ConfigError('DATABASE_REPLICA_URLS', 'needs DATABASE_URL (the primary); the embedded database has no replicas');
  const config: Config = {
    databaseUrl: undefined,
    replicaUrls: [],
    replicas: replicaConfig(env),
    cache: cacheConfig(env),
    forwardSecret: undefined,
    opsToken: undefined,
    development: isDevelopment(env),
    dashboard: onOff(env, 'DASHBOARD', isDevelopment(env)),
    port: int(env, 'PORT', 8787, 0, 65535),
    host: env.HOST?.trim() || '127.0.0.1',
    pool: {
      max,
      min,
      idleTimeoutMs: int(env, 'POOL_IDLE_TIMEOUT_MS', 30_000, 0, 86_400_000),
      connectionTimeoutMs: int(env, 'POOL_CONNECTION_TIMEOUT_MS', 5_000, 1, 600_000),
      acquireTimeoutMs: int(env, 'POOL_ACQUIRE_TIMEOUT_MS', 5_000, 1, 600_000),
      queueMax: int(env, 'POOL_QUEUE_MAX', QUEUE_MAX_DEFAULT, 0, 1_000_000),
      overloadShedding: onOff(env, 'POOL_OVERLOAD_SHEDDING', false),
      statementTimeoutMs,
      queryTimeoutMs: int(env, 'QUERY_TIMEOUT_MS', statementTimeoutMs + 1_000, 1, 3_700_000),
      applicationName,
      preparedStatements: onOff(env, 'PG_PREPARED_STATEMENTS', true),
      preparedStatementsMax: int(env, 'PG_PREPARED_STATEMENTS_MAX', PREPARED_STATEMENTS_MAX, 1, 10_000),
      pipelineLanes,
      pipelineSlowReadMs: int(env, 'PG_PIPELINE_SLOW_MS', SLOW_READ_MS, 1, 3_600_000),
      ...resultLimits(env),
      budget: {
        mode: budgetMode(env),
        reserve: int(env, 'POOL_RESERVE', 3, 0, 10_000),
        intervalMs: int(env, 'POOL_BUDGET_INTERVAL_MS', 1_000, 100, 600_000),
      },
    },
    bodyLimitBytes: int(env, 'BODY_LIMIT_BYTES', 64 * 1024, 1, 64 * 1024 * 1024),
    shutdownTimeoutMs: int(env, 'SHUTDOWN_TIMEOUT_MS', 10_000, 0, 600_000),
    idempotencyTtlMs: int(env, 'IDEMPOTENCY_TTL_MS', 86_400_000, 60_000, 30 * 86_400_000),
    idempotencyPurgeIntervalMs: int(env, 'IDEMPOTENCY_PURGE_INTERVAL_MS', 600_000, 1_000, 86_400_000),
    requestTimeoutMs: int(env, 'REQUEST_TIMEOUT_MS', 15_000, 1, 3_600_000),
    embeddedDataDir: env.EMBEDDED_DATA_DIR?.trim() || '.data/pglite',
    logLevel,
    logFormat,
    logSlowMs,
  };
  // A connect must not outlive the request that waits for it.
  config.pool.connectionTimeoutMs = Math.min(config.pool.connectionTimeoutMs, config.requestTimeoutMs);
  if (config.pool.queryTimeoutMs <= statementTimeoutMs) {
    throw new ConfigError('QUERY_TIMEOUT_MS', `must be longer than STATEMENT_TIMEOUT_MS (${statementTimeoutMs})`);
  }
  Object.defineProperty(config, 'databaseUrl', { value: databaseUrl, enumerable: false, writable: false });
  Object.defineProperty(config, 'replicaUrls', { value: replicas, enumerable: false, writable: false });
  Object.defineProperty(config, 'forwardSecret', { value: secret(env, isDevelopment(env), false), enumerable: false, writable: false });
  Object.defineProperty(config, 'opsToken', { value: opsToken(env), enumerable: false, writable: false });
  return config;
}

export const isDevelopment = (env: Env) => (env.POOLGATE_ENV ?? env.NODE_ENV ?? '').trim() === 'development';

/** FORWARD_SECRET, checked for length; required unless `optional`, and only ever short in development. */
function secret(env: Env, development: boolean, required: boolean): string | undefined {
  const value = env.FORWARD_SECRET?.trim() || undefined;
  if (value === undefined) {
    if (required && !development)
      throw new ConfigError(
        'FORWARD_SECRET',
        'is required (a random string of at least 32 characters shared by the edge and the Node function)',
      );
    return undefined;
  }
  if (value.length < MIN_SECRET_LENGTH && !development) {
    throw new ConfigError('FORWARD_SECRET', `must be at least ${MIN_SECRET_LENGTH} characters long`);
  }
  return value;
}

/** RESULT_MAX_ROWS and RESULT_MAX_BYTES, the same on Node and at the edge. */
const resultLimits = (env: Env) => ({
  resultMaxRows: int(env, 'RESULT_MAX_ROWS', RESULT_MAX_ROWS, 1, 100_000_000),
  resultMaxBytes: int(env, 'RESULT_MAX_BYTES', RESULT_MAX_BYTES, 1, 4 * 1024 * 1024 * 1024),
});

export type LogFormat = 'json' | 'pretty' | 'auto';

/** LOG_LEVEL, LOG_FORMAT and LOG_SLOW_MS, the same on Node and at the edge. */
export function logConfig(env: Env): { logLevel: LogLevel; logFormat: LogFormat; logSlowMs: number } {
  const rawLevel = env.LOG_LEVEL?.trim() || 'info';
  const logLevel = parseLogLevel(rawLevel);
  if (!logLevel) throw new ConfigError('LOG_LEVEL', `must be one of ${LOG_LEVELS.join(', ')}, got "${rawLevel}"`);
  const logFormat = (env.LOG_FORMAT?.trim().toLowerCase() || 'auto') as LogFormat;
  if (!['json', 'pretty', 'auto'].includes(logFormat))
    throw new ConfigError('LOG_FORMAT', `must be json, pretty or auto, got "${env.LOG_FORMAT?.trim()}"`);
  return { logLevel, logFormat, logSlowMs: int(env, 'LOG_SLOW_MS', 1000, 1, 3_600_000) };
}

/** Configuration of the edge app (workerd, Netlify Edge), read from that runtime's env. */
export interface EdgeConfig {
  /** The Neon (or local proxy's) database URL. Non-enumerable. */
  readonly databaseUrl: string;
  /** Base URL of the Node function that runs transactional routes. */
  nodeFunctionUrl: string;
  /** Shared HMAC secret for forwards. Non-enumerable. */
  readonly forwardSecret: string;
  /** Bearer token for /stats, /metrics and readiness details (OPS_TOKEN). Non-enumerable. */
  readonly opsToken: string | undefined;
  /** Local development only: a Neon-compatible proxy to send the driver to. */
  neonProxyUrl: string | undefined;
  forwardTimeoutMs: number;
  queryTimeoutMs: number;
  requestTimeoutMs: number;
  bodyLimitBytes: number;
  /** RESULT_MAX_ROWS / RESULT_MAX_BYTES, as on Node (Neon HTTP: see src/db/connectors/neon.ts). */
  resultMaxRows: number;
  resultMaxBytes: number;
  development: boolean;
  /** The read replicas' URLs (DATABASE_REPLICA_URLS) for the edge's reads. Non-enumerable. */
  readonly replicaUrls: readonly string[];
  replicas: ReplicaConfig;
  cache: CacheConfig;
  /** The live dashboard at /dashboard (DASHBOARD=on|off; on by default in development). */
  dashboard: boolean;
  /** As on Node: LOG_LEVEL, LOG_SLOW_MS (the edge always writes JSON). */
  logLevel: LogLevel;
  logSlowMs: number;
}

export function parseEdgeConfig(env: Env): EdgeConfig {
  const development = isDevelopment(env);
  const rawUrl = env.DATABASE_URL?.trim();
  if (!rawUrl) throw new ConfigError('DATABASE_URL', 'is required at the edge (the Neon connection string)');
  const databaseUrl = validateDatabaseUrl('DATABASE_URL', rawUrl);
  const nodeFunctionUrl = env.NODE_FUNCTION_URL?.trim();
  if (!nodeFunctionUrl) throw new ConfigError('NODE_FUNCTION_URL', 'is required (where transactional routes are forwarded)');
  const httpUrl = (name: string, raw: string) => {
    try {
      const u = new URL(raw);
      if (u.protocol === 'http:' || u.protocol === 'https:') return raw;
    } catch {
      // Not a URL at all: reported below, like any other scheme.
    }
    throw new ConfigError(name, 'must be an http:// or https:// URL');
  };
  httpUrl('NODE_FUNCTION_URL', nodeFunctionUrl);
  const neonProxyUrl = env.NEON_PROXY_URL?.trim() || undefined;
  if (neonProxyUrl) httpUrl('NEON_PROXY_URL', neonProxyUrl);
  const forwardSecret = secret(env, development, true) ?? 'poolgate-development-only-forward-secret';
  const log = logConfig(env);
  const config: EdgeConfig = {
    databaseUrl: '',
    nodeFunctionUrl,
    forwardSecret: '',
    opsToken: undefined,
    neonProxyUrl,
    forwardTimeoutMs: int(env, 'FORWARD_TIMEOUT_MS', 10_000, 1, 120_000),
    queryTimeoutMs: int(env, 'QUERY_TIMEOUT_MS', 10_000, 1, 120_000),
    requestTimeoutMs: int(env, 'REQUEST_TIMEOUT_MS', 15_000, 1, 120_000),
    bodyLimitBytes: int(env, 'BODY_LIMIT_BYTES', 64 * 1024, 1, 64 * 1024 * 1024),
    ...resultLimits(env),
    development,
    dashboard: onOff(env, 'DASHBOARD', development),
    replicaUrls: [],
    replicas: replicaConfig(env),
    cache: cacheConfig(env),
    logLevel: log.logLevel,
    logSlowMs: log.logSlowMs,
  };
  Object.defineProperty(config, 'databaseUrl', { value: databaseUrl, enumerable: false, writable: false });
  Object.defineProperty(config, 'replicaUrls', { value: replicaUrls(env), enumerable: false, writable: false });
  Object.defineProperty(config, 'forwardSecret', { value: forwardSecret, enumerable: false, writable: false });
  Object.defineProperty(config, 'opsToken', { value: opsToken(env), enumerable: false, writable: false });
  return config;
}

/** OPS_TOKEN: who may read /stats, /metrics and readiness details; long enough not to be guessed. */
function opsToken(env: Env): string | undefined {
  const token = env.OPS_TOKEN?.trim();
  if (!token) return undefined;
  if (token.length < 24) throw new ConfigError('OPS_TOKEN', 'must be at least 24 characters (e.g. openssl rand -base64 24)');
  return token;
}

/** What is safe to print about where the database is: never user, password or host. */
export function describeDatabase(url: string | undefined): string {
  if (!url) return 'embedded PGlite';
  try {
    const u = new URL(url);
    return `postgres database "${decodeURIComponent(u.pathname.slice(1)) || '(default)'}"`;
  } catch {
    return 'postgres database';
  }
}

/** Where a postgres URL points, as start-up messages may print it: host, port, database — never user or password. */
export interface DatabaseTarget {
  host: string;
  port: string;
  /** Undefined when the URL names none (the server then takes the user's name). */
  database: string | undefined;
}

export function databaseTarget(url: string | undefined): DatabaseTarget | undefined {
  if (!url) return undefined;
  try {
    const u = new URL(url);
    return { host: u.hostname, port: u.port || '5432', database: decodeURIComponent(u.pathname.slice(1)) || undefined };
  } catch {
    return undefined;
  }
}
