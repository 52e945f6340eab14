/** Configuration parsing: defaults, bounds, one error naming the variable, secrets never enumerable. */
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ConfigError, describeDatabase, parseConfig, parseEdgeConfig, validateDatabaseUrl } from './config.js';

const URL_WITH_SECRET = 'postgres://alice:s3cret@db.internal:5433/fitness';

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('parseConfig', () => {
  it('has working defaults with no environment at all', () => {
    const c = parseConfig({});
    expect(c.databaseUrl).toBeUndefined();
    expect(c.port).toBe(8787);
    expect(c.host).toBe('127.0.0.1');
    expect(c.pool).toMatchObject({
      max: 20,
      min: 2,
      acquireTimeoutMs: 5000,
      queueMax: 10_000,
      statementTimeoutMs: 30_000,
      queryTimeoutMs: 31_000,
      applicationName: 'poolgate',
      preparedStatements: true,
      preparedStatementsMax: 200,
      budget: { mode: 'auto', reserve: 3, intervalMs: 1000 },
    });
    expect(c.bodyLimitBytes).toBe(64 * 1024);
    expect(c.logLevel).toBe('info');
    expect(c.logFormat).toBe('auto');
    expect(c.logSlowMs).toBe(1000);
  });

  it.each([
    ['trace', 'trace'],
    ['debug', 'debug'],
    ['info', 'info'],
    ['warn', 'warn'],
    ['WARNING', 'warn'],
    ['error', 'error'],
    [' silent ', 'silent'],
  ])('takes LOG_LEVEL=%j as %s, on Node and at the edge', (raw, level) => {
    expect(parseConfig({ LOG_LEVEL: raw }).logLevel).toBe(level);
    const edge = parseEdgeConfig({
      DATABASE_URL: 'postgres://u@h/db',
      NODE_FUNCTION_URL: 'http://127.0.0.1:1',
      POOLGATE_ENV: 'development',
      LOG_LEVEL: raw,
    });
    expect(edge.logLevel).toBe(level);
  });

  it('names every level LOG_LEVEL takes when it refuses one', () => {
    expect(configError(() => parseConfig({ LOG_LEVEL: 'loud' })).message).toBe(
      'LOG_LEVEL: must be one of trace, debug, info, warn, error, silent, got "loud"',
    );
  });

  it.each(['json', 'pretty', 'auto'] as const)('takes LOG_FORMAT=%s', (format) => {
    expect(parseConfig({ LOG_FORMAT: format.toUpperCase() }).logFormat).toBe(format);
  });

  it('reads every pool variable', () => {
    const c = parseConfig({
      DATABASE_URL: URL_WITH_SECRET,
      PORT: '0',
      POOL_MAX: '5',
      POOL_MIN: '0',
      POOL_IDLE_TIMEOUT_MS: '1000',
      POOL_CONNECTION_TIMEOUT_MS: '2000',
      POOL_ACQUIRE_TIMEOUT_MS: '300',
      POOL_QUEUE_MAX: '7',
      POOL_OVERLOAD_SHEDDING: 'on',
      STATEMENT_TIMEOUT_MS: '1000',
      QUERY_TIMEOUT_MS: '1500',
      APPLICATION_NAME: 'poolgate-test',
      BODY_LIMIT_BYTES: '512',
      PG_PREPARED_STATEMENTS: 'off',
      PG_PREPARED_STATEMENTS_MAX: '50',
      PG_PIPELINE_LANES: '2',
      PG_PIPELINE_SLOW_MS: '12',
      RESULT_MAX_ROWS: '1000',
      RESULT_MAX_BYTES: '65536',
      POOL_BUDGET: '60',
      POOL_RESERVE: '5',
      POOL_BUDGET_INTERVAL_MS: '2000',
    });
    expect(c.databaseUrl).toBe(URL_WITH_SECRET);
    expect(c.port).toBe(0);
    expect(c.pool).toEqual({
      max: 5,
      min: 0,
      idleTimeoutMs: 1000,
      connectionTimeoutMs: 2000,
      acquireTimeoutMs: 300,
      queueMax: 7,
      overloadShedding: true,
      statementTimeoutMs: 1000,
      queryTimeoutMs: 1500,
      applicationName: 'poolgate-test',
      preparedStatements: false,
      preparedStatementsMax: 50,
      pipelineLanes: 2,
      pipelineSlowReadMs: 12,
      resultMaxRows: 1000,
      resultMaxBytes: 65536,
      budget: { mode: 60, reserve: 5, intervalMs: 2000 },
    });
    expect(c.bodyLimitBytes).toBe(512);
  });

  it('reads POOL_BUDGET as auto, off or a number of connections, in any case', () => {
    expect(parseConfig({ POOL_BUDGET: ' OFF ' }).pool.budget.mode).toBe('off');
    expect(parseConfig({ POOL_BUDGET: 'Auto' }).pool.budget.mode).toBe('auto');
    expect(parseConfig({}).pool.budget.mode).toBe('auto');
    expect(parseConfig({ POOL_BUDGET: '' }).pool.budget.mode).toBe('auto');
    expect(() => parseConfig({ POOL_BUDGET: 'lots' })).toThrow(/POOL_BUDGET: must be a whole number from 1 to 100000/);
    expect(() => parseConfig({ POOL_BUDGET: '0' })).toThrow(/POOL_BUDGET/);
  });

  it('derives dependent defaults: min from max, query timeout from statement timeout; the queue bound is a fixed memory bound', () => {
    const c = parseConfig({ POOL_MAX: '1', STATEMENT_TIMEOUT_MS: '500' });
    expect(c.pool.min).toBe(1);
    expect(c.pool.queueMax).toBe(10_000);
    expect(c.pool.queryTimeoutMs).toBe(1500);
  });

  it('keeps the connection string out of keys, JSON and inspection', () => {
    const c = parseConfig({ DATABASE_URL: URL_WITH_SECRET, FORWARD_SECRET: 'x'.repeat(40) });
    expect(Object.keys(c)).not.toContain('databaseUrl');
    expect(Object.keys(c)).not.toContain('forwardSecret');
    for (const text of [JSON.stringify(c), inspect(c, { depth: 5 }), String(Object.entries(c))]) {
      expect(text).not.toContain('s3cret');
      expect(text).not.toContain('alice');
      expect(text).not.toContain('x'.repeat(40));
    }
    expect(c.forwardSecret).toBe('x'.repeat(40));
  });

  it.each([
    [{}, 4],
    [{ POOL_MAX: '10' }, 2],
    [{ POOL_MAX: '4' }, 0],
    [{ POOL_MAX: '100' }, 4],
    [{ POOL_MAX: '5', PG_PIPELINE_LANES: '0' }, 0],
  ])('pipelined read lanes by default: one per five connections, at most four (%j → %d)', (env, lanes) => {
    expect(parseConfig(env).pool.pipelineLanes).toBe(lanes);
  });

  it.each([
    ['POOL_MAX', 'abc'],
    ['POOL_MAX', '0'],
    ['POOL_MAX', '-1'],
    ['POOL_MAX', '1.5'],
    ['POOL_MAX', '1e3'],
    ['POOL_MAX', '1001'],
    ['POOL_MIN', 'x'],
    ['PORT', '65536'],
    ['POOL_ACQUIRE_TIMEOUT_MS', '0'],
    ['BODY_LIMIT_BYTES', 'lots'],
    ['SHUTDOWN_TIMEOUT_MS', '-5'],
    ['LOG_LEVEL', 'loud'],
    ['LOG_LEVEL', 'fatal'],
    ['LOG_FORMAT', 'xml'],
    ['LOG_SLOW_MS', '0'],
    ['APPLICATION_NAME', 'x'.repeat(64)],
    ['APPLICATION_NAME', 'tab\tname'],
    ['PG_PREPARED_STATEMENTS', 'yes'],
    ['PG_PREPARED_STATEMENTS_MAX', '0'],
    ['PG_PIPELINE_LANES', '-1'],
    ['PG_PIPELINE_LANES', '20'], // POOL_MAX 20: the pool keeps at least one connection
  ])('refuses %s=%j with an error naming it', (name, value) => {
    const err = configError(() => parseConfig({ [name]: value }));
    expect(err.variable).toBe(name);
    expect(err.message.startsWith(`${name}: `)).toBe(true);
    expect(err.message).not.toContain('\n');
  });

  it.each([
    ['REQUEST_TIMEOUT_MS', '-5', 'REQUEST_TIMEOUT_MS: must be a positive whole number, got "-5" (too small; allowed: 1 to 3600000)'],
    ['POOL_ACQUIRE_TIMEOUT_MS', '0', 'POOL_ACQUIRE_TIMEOUT_MS: must be a positive whole number, got "0" (too small; allowed: 1 to 600000)'],
    ['POOL_MAX', 'abc', 'POOL_MAX: must be a whole number from 1 to 1000, got "abc" (not a whole number)'],
    ['POOL_MAX', '1.5', 'POOL_MAX: must be a whole number from 1 to 1000, got "1.5" (not a whole number)'],
    ['POOL_MAX', '1001', 'POOL_MAX: must be at most 1000, got "1001" (too large; allowed: 1 to 1000)'],
    [
      'SHUTDOWN_TIMEOUT_MS',
      '-5',
      'SHUTDOWN_TIMEOUT_MS: must be zero or a positive whole number, got "-5" (too small; allowed: 0 to 600000)',
    ],
    ['IDEMPOTENCY_TTL_MS', '5', 'IDEMPOTENCY_TTL_MS: must be at least 60000, got "5" (too small; allowed: 60000 to 2592000000)'],
    ['PG_PREPARED_STATEMENTS', 'true', 'PG_PREPARED_STATEMENTS: must be on or off, got "true"'],
    ['PG_PIPELINE_LANES', '20', 'PG_PIPELINE_LANES: must be at most 19, got "20" (too large; allowed: 0 to 19)'],
  ])('says what is wrong with %s=%j: not a number, or out of range (naming the range)', (name, value, message) => {
    expect(configError(() => parseConfig({ [name]: value })).message).toBe(message);
  });

  it('refuses POOL_MIN above POOL_MAX, and a query timeout not above the statement timeout', () => {
    expect(configError(() => parseConfig({ POOL_MAX: '2', POOL_MIN: '3' })).variable).toBe('POOL_MIN');
    expect(configError(() => parseConfig({ STATEMENT_TIMEOUT_MS: '1000', QUERY_TIMEOUT_MS: '1000' })).variable).toBe('QUERY_TIMEOUT_MS');
  });

  it('reads PG_PREPARED_STATEMENTS as on or off, in any case and with blanks around it', () => {
    expect(parseConfig({ PG_PREPARED_STATEMENTS: ' OFF ' }).pool.preparedStatements).toBe(false);
    expect(parseConfig({ PG_PREPARED_STATEMENTS: 'On' }).pool.preparedStatements).toBe(true);
    expect(parseConfig({ PG_PREPARED_STATEMENTS: '' }).pool.preparedStatements).toBe(true);
  });

  it('treats empty and blank values as unset', () => {
    const c = parseConfig({ DATABASE_URL: '  ', POOL_MAX: '', PORT: ' ' });
    expect(c.databaseUrl).toBeUndefined();
    expect(c.pool.max).toBe(20);
    expect(c.port).toBe(8787);
  });

  it('takes an OPS_TOKEN of at least 24 characters, kept out of keys and JSON like the other secrets', () => {
    expect(configError(() => parseConfig({ OPS_TOKEN: 'short-token' })).variable).toBe('OPS_TOKEN');
    const c = parseConfig({ OPS_TOKEN: 't'.repeat(24) });
    expect(c.opsToken).toBe('t'.repeat(24));
    expect(Object.keys(c)).not.toContain('opsToken');
    expect(JSON.stringify(c)).not.toContain('t'.repeat(24));
    expect(parseConfig({}).opsToken).toBeUndefined();
  });

  it('accepts a short FORWARD_SECRET only in development', () => {
    expect(configError(() => parseConfig({ FORWARD_SECRET: 'short' })).variable).toBe('FORWARD_SECRET');
    expect(parseConfig({ FORWARD_SECRET: 'short', NODE_ENV: 'development' }).forwardSecret).toBe('short');
    expect(parseConfig({}).forwardSecret).toBeUndefined();
  });

  it('reads DASHBOARD as on or off, on by default only in development', () => {
    expect(parseConfig({}).dashboard).toBe(false);
    expect(parseConfig({ POOLGATE_ENV: 'development' }).dashboard).toBe(true);
    expect(parseConfig({ POOLGATE_ENV: 'development', DASHBOARD: 'off' }).dashboard).toBe(false);
    expect(parseConfig({ DASHBOARD: ' On ' }).dashboard).toBe(true);
    expect(configError(() => parseConfig({ DASHBOARD: 'yes' })).message).toBe('DASHBOARD: must be on or off, got "yes"');
  });
});

describe('DATABASE_URL validation', () => {
  it.each([
    ['postgres://alice:s3cret@', 'not a valid URL'],
    ['postgres://alice:s3cret@ garbage/db', 'not a valid URL'],
    ['not a url s3cret', 'not a valid URL'],
    ['mysql://alice:s3cret@host/db', 'must start with postgres://'],
    ['https://alice:s3cret@host/db', 'must start with postgres://'],
  ])('refuses %j naming DATABASE_URL and never echoing it', (raw, why) => {
    const err = configError(() => parseConfig({ DATABASE_URL: raw }));
    expect(err.variable).toBe('DATABASE_URL');
    expect(err.message).toContain(why);
    expect(err.message).not.toContain('s3cret');
    expect(err.message).not.toContain('alice');
  });

  it('accepts postgres:// and postgresql:// URLs as given', () => {
    expect(validateDatabaseUrl('X', URL_WITH_SECRET)).toBe(URL_WITH_SECRET);
    expect(validateDatabaseUrl('X', 'postgresql://h/db')).toBe('postgresql://h/db');
  });

  it('describeDatabase names only the database, never user, password or host', () => {
    expect(describeDatabase(URL_WITH_SECRET)).toBe('postgres database "fitness"');
    expect(describeDatabase(undefined)).toBe('embedded PGlite');
    expect(describeDatabase('postgres://u:p@h')).toBe('postgres database "(default)"');
    expect(describeDatabase('::: s3cret')).toBe('postgres database');
  });
});

describe('parseEdgeConfig', () => {
  const edge = { DATABASE_URL: URL_WITH_SECRET, NODE_FUNCTION_URL: 'https://node.example/fn', FORWARD_SECRET: 'f'.repeat(32) };

  it('reads a complete edge environment and hides its secrets', () => {
    const c = parseEdgeConfig(edge);
    expect(c.databaseUrl).toBe(URL_WITH_SECRET);
    expect(c.forwardSecret).toBe('f'.repeat(32));
    expect(JSON.stringify(c)).not.toContain('s3cret');
    expect(JSON.stringify(c)).not.toContain('f'.repeat(32));
  });

  it('reads DASHBOARD as Node does', () => {
    expect(parseEdgeConfig(edge).dashboard).toBe(false);
    expect(parseEdgeConfig({ ...edge, POOLGATE_ENV: 'development' }).dashboard).toBe(true);
    expect(parseEdgeConfig({ ...edge, DASHBOARD: 'on' }).dashboard).toBe(true);
  });

  it('reads the result bound as Node does', () => {
    expect(parseEdgeConfig({ ...edge, RESULT_MAX_ROWS: '10', RESULT_MAX_BYTES: '2048' })).toMatchObject({
      resultMaxRows: 10,
      resultMaxBytes: 2048,
    });
    expect(configError(() => parseEdgeConfig({ ...edge, RESULT_MAX_ROWS: '0' })).variable).toBe('RESULT_MAX_ROWS');
  });

  it.each([
    ['DATABASE_URL', { ...edge, DATABASE_URL: undefined }],
    ['NODE_FUNCTION_URL', { ...edge, NODE_FUNCTION_URL: undefined }],
    ['NODE_FUNCTION_URL', { ...edge, NODE_FUNCTION_URL: 'ftp://x' }],
    ['FORWARD_SECRET', { ...edge, FORWARD_SECRET: undefined }],
    ['NEON_PROXY_URL', { ...edge, NEON_PROXY_URL: 'nope' }],
  ])('refuses a missing or bad %s', (name, env) => {
    expect(configError(() => parseEdgeConfig(env)).variable).toBe(name);
  });

  it('uses a development-only forward secret in development', () => {
    const c = parseEdgeConfig({ ...edge, FORWARD_SECRET: undefined, POOLGATE_ENV: 'development' });
    expect(c.development).toBe(true);
    expect(c.forwardSecret.length).toBeGreaterThanOrEqual(32);
  });
});
