/**
 * `poolgate doctor [--app <module>] [--instances N]`: the environment read as the gateway reads it
 * (config.ts), then one look at the database it names, as a checklist — ✓ fine, ! worth a look,
 * ✗ will fail or is unsafe, - not checked (and why) — each line with its fix. Exit 1 when any ✗.
 * Prints host, port and database name at most: never a user, a password or a whole URL.
 *
 * The checks are pure functions of what was read (`DatabaseFacts`), so each rule is tested alone;
 * `runDoctor` gathers the facts with one short-lived connection and a TLS probe.
 *
 * Test hook: POOLGATE_DOCTOR_CLOCK_OFFSET_MS (read by doctor only) shifts the local clock it
 * compares with the server's, so a test can fake a skewed machine.
 */
import { connect as tcpConnect } from 'node:net';
import pg from 'pg';
import { ConfigError, databaseTarget, isDevelopment, parseConfig, parseEdgeConfig, type Config, type DatabaseTarget } from '../config.js';
import { checkAppName, checksumOf, MigrationError, type MigratingApp } from '../db/migrate.js';
import { shareOf } from '../db/connectors/pg-budget.js';
import { describeError, describeStartupFailure } from '../errors.js';
import { MIN_SECRET_LENGTH } from '../security/forward-signature.js';

type Env = Record<string, string | undefined>;

export type Mark = 'ok' | 'warn' | 'fail' | 'skip';

export interface Finding {
  mark: Mark;
  /** What was checked (a few words). */
  check: string;
  text: string;
  fix?: string;
}

const SYMBOL: Record<Mark, string> = { ok: '✓', warn: '!', fail: '✗', skip: '-' };

/**
 * The connection variables platforms set, in the order doctor suggests them when DATABASE_URL is
 * missing (pooled ones first: many function instances, each with a pool, are what poolers are for).
 * poolgate reads DATABASE_URL only.
 */
export const CONNECTION_VARIABLES = [
  'DATABASE_URL',
  'NETLIFY_DATABASE_URL',
  'NETLIFY_DB_URL',
  'POSTGRES_URL',
  'POSTGRES_PRISMA_URL',
  'DATABASE_PRIVATE_URL',
  'DATABASE_PUBLIC_URL',
  'SUPABASE_DB_URL',
  'DATABASE_URL_UNPOOLED',
  'NETLIFY_DATABASE_URL_UNPOOLED',
  'POSTGRES_URL_NON_POOLING',
  'POSTGRES_URL_NO_SSL',
] as const;

/** Values shipped as examples or fallbacks: never a deployment's secret. */
const KNOWN_SECRETS = new Set(['poolgate-development-only-forward-secret']);

/** Forward signatures: a timestamp up to this far ahead of the verifier's clock is accepted (security/forward-signature.ts). */
const SIGNATURE_SKEW_MS = 30_000;
/** Beyond this, a skew is worth fixing before it grows into the signature window. */
const SKEW_WARN_MS = 2_000;

/** What one connection found out about the server. */
export interface DatabaseFacts {
  maxConnections: number;
  superuserReserved: number;
  /** reserved_connections (PostgreSQL 16+; 0 before). */
  reservedConnections: number;
  /** Client backends on the server at the time (undefined where pg_stat_activity cannot be read). */
  clientBackends: number | undefined;
  /** This connection is encrypted (pg_stat_ssl), where the server can say. */
  sslInUse: boolean | undefined;
  /** Server clock minus local clock (ms), and half the round trip it was read in (its uncertainty). */
  skewMs: number;
  skewUncertaintyMs: number;
  /** Which of poolgate's tables exist. */
  tables: { migrations: boolean; idempotencyKeys: boolean; forwardNonces: boolean };
  /** poolgate_migrations rows (app, id, name, checksum), when the table exists. */
  recorded: { app: string; id: number; name: string; checksum: string | null }[];
}

// ---------------------------------------------------------------------------------------------
// The rules

/** Which connection variables are set and which one poolgate reads; `url` is what the database checks use. */
export function connectionFindings(env: Env): { findings: Finding[]; url: string | undefined; from: string | undefined } {
  const set = CONNECTION_VARIABLES.filter((name) => env[name]?.trim());
  const check = 'connection variable';
  const databaseUrl = env.DATABASE_URL?.trim();
  if (databaseUrl) {
    const others = set.filter((n) => n !== 'DATABASE_URL');
    const same = others.filter((n) => env[n]!.trim() === databaseUrl);
    const differ = others.filter((n) => env[n]!.trim() !== databaseUrl);
    const also = [same.length ? `same value as ${same.join(', ')}` : '', differ.length ? `also set, not read: ${differ.join(', ')}` : '']
      .filter(Boolean)
      .join('; ');
    return {
      findings: [
        { mark: 'ok', check, text: `DATABASE_URL is set (${where(databaseUrl)}) and is the one poolgate reads${also ? `; ${also}` : ''}` },
      ],
      url: databaseUrl,
      from: 'DATABASE_URL',
    };
  }
  const from = set[0];
  if (from === undefined)
    return {
      findings: [
        {
          mark: isDevelopment(env) ? 'warn' : 'fail',
          check,
          text: `none of ${CONNECTION_VARIABLES.join(', ')} is set: poolgate would run on the embedded PGlite (development only)`,
          fix: 'set DATABASE_URL=postgres://user:password@host:5432/database',
        },
      ],
      url: undefined,
      from: undefined,
    };
  return {
    findings: [
      {
        mark: 'fail',
        check,
        text: `DATABASE_URL is not set, but ${set.join(', ')} ${set.length > 1 ? 'are' : 'is'}; poolgate reads DATABASE_URL only (without it: the embedded PGlite, development only); the checks below use ${from}`,
        fix: `set DATABASE_URL=$${from}`,
      },
    ],
    url: env[from]!.trim(),
    from,
  };
}

/** host:port and database, never user or password. */
function where(url: string): string {
  const t = databaseTarget(url);
  return t ? `${t.host}:${t.port}${t.database ? `, database "${t.database}"` : ''}` : 'not a URL';
}

/** The gateway's own parse of the environment (FORWARD_SECRET is judged on its own below). */
export function configFinding(env: Env): { finding: Finding; config: Config | undefined } {
  const check = 'configuration';
  try {
    const config = parseConfig({ ...env, FORWARD_SECRET: undefined });
    if (env.NODE_FUNCTION_URL?.trim()) parseEdgeConfig({ ...env, FORWARD_SECRET: 'x'.repeat(MIN_SECRET_LENGTH) });
    return {
      finding: {
        mark: 'ok',
        check,
        text: `the gateway accepts the environment (POOL_MAX ${config.pool.max}, POOL_BUDGET ${config.pool.budget.mode}, POOL_RESERVE ${config.pool.budget.reserve})`,
      },
      config,
    };
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return {
      finding: { mark: 'fail', check, text: `the gateway refuses to start: ${err.message}`, fix: `correct ${err.variable}` },
      config: undefined,
    };
  }
}

const isLocalHost = (host: string) => host === 'localhost' || host === '::1' || host === '[::1]' || /^127\./.test(host);

/** sslmode in the URL against whether the server offered TLS. */
export function tlsFinding(url: string, target: DatabaseTarget, offered: boolean | undefined, inUse: boolean | undefined): Finding {
  const check = 'TLS';
  const sslmode = new URL(url).searchParams.get('sslmode') ?? (new URL(url).searchParams.get('ssl') === 'true' ? 'require' : undefined);
  const asks = sslmode !== undefined && sslmode !== 'disable' && sslmode !== 'allow' && sslmode !== 'prefer';
  const server =
    offered === undefined ? 'the server did not answer the TLS probe' : offered ? 'the server offers TLS' : 'the server does not offer TLS';
  const used = inUse === undefined ? '' : inUse ? '; this connection was encrypted' : '; this connection was not encrypted';
  const mode = sslmode === undefined ? 'no sslmode in the URL' : `sslmode=${sslmode}`;
  if (asks && offered === false)
    return {
      mark: 'fail',
      check,
      text: `${mode} but ${server}: connecting fails`,
      fix: 'enable TLS on the server, or use the host your provider gives for TLS',
    };
  if (sslmode === 'no-verify')
    return {
      mark: 'warn',
      check,
      text: `${mode}: encrypted, but any certificate is accepted (a machine in the middle goes unnoticed); ${server}${used}`,
      fix: "use sslmode=require (poolgate then verifies the certificate), with the provider's CA if it is not a public one",
    };
  if (asks) return { mark: 'ok', check, text: `${mode}; ${server}${used}` };
  if (isLocalHost(target.host)) return { mark: 'ok', check, text: `${mode}; ${server}; a local host needs no TLS${used}` };
  return {
    mark: 'warn',
    check,
    text: `${mode}; ${server}: credentials and rows to ${target.host} travel unencrypted${used}`,
    fix:
      offered === false ? 'fine on a private network only; else use a server with TLS' : 'add ?sslmode=require (or verify-full) to the URL',
  };
}

/** Pooled or direct: by host name and port — heuristics, said as such. */
export function poolerFinding(url: string, target: DatabaseTarget): { finding: Finding; pooled: boolean } {
  const check = 'pooled or direct';
  const host = target.host;
  const params = new URL(url).searchParams;
  let pooled: string | undefined;
  if (/-pooler\./.test(host)) pooled = `Neon's pooled host ("-pooler" in ${host}: PgBouncer in transaction mode)`;
  else if (/pooler\.supabase\.com$/.test(host))
    pooled = `Supabase's pooler (${host}${target.port === '6543' ? ', port 6543: transaction mode' : ''})`;
  else if (params.get('pgbouncer') === 'true') pooled = 'pgbouncer=true in the URL';
  else if (target.port === '6432') pooled = 'probably PgBouncer (port 6432 is its default; a guess from the port alone)';
  if (pooled)
    return {
      finding: {
        mark: 'ok',
        check,
        text: `pooled: ${pooled}; poolgate turns named statements off by itself if the pooler refuses them`,
        fix: 'POOL_BUDGET=off is the simpler choice behind a pooler sized for the server',
      },
      pooled: true,
    };
  return {
    finding: {
      mark: 'ok',
      check,
      text: `direct (no pooler recognised in ${host}:${target.port}; doctor knows Neon "-pooler" hosts, Supabase's pooler, pgbouncer=true and port 6432 — a pooler elsewhere looks direct): every instance's connections count against max_connections`,
    },
    pooled: false,
  };
}

/** instances × POOL_MAX against what the server lets clients hold, under POOL_BUDGET. */
export function budgetFinding(
  facts: Pick<DatabaseFacts, 'maxConnections' | 'superuserReserved' | 'reservedConnections' | 'clientBackends'>,
  pool: Pick<Config['pool'], 'max' | 'budget'>,
  instances: number,
  pooled: boolean,
): Finding {
  const check = 'connections';
  const available = facts.maxConnections - facts.superuserReserved - facts.reservedConnections;
  const demand = instances * pool.max;
  const { mode, reserve } = pool.budget;
  const reserved = facts.reservedConnections ? ` − reserved_connections ${facts.reservedConnections}` : '';
  const limit = `max_connections ${facts.maxConnections} − superuser_reserved_connections ${facts.superuserReserved}${reserved} = ${available}`;
  const inUse = facts.clientBackends === undefined ? '' : `; ${facts.clientBackends} client connections open now`;
  const perInstance = Math.floor((available - reserve) / instances);
  const sum = `${instances} instance${instances === 1 ? '' : 's'} × POOL_MAX ${pool.max} = ${demand}`;
  if (pooled)
    return {
      mark: 'ok',
      check,
      text: `${sum} against the pooler's client limit (max_client_conn), not the server's ${limit}${inUse}`,
    };
  if (mode === 'off') {
    if (demand <= available) return { mark: 'ok', check, text: `${sum} ≤ ${limit} (POOL_BUDGET=off)${inUse}` };
    return {
      mark: 'fail',
      check,
      text: `${sum} > ${limit}: at peak, connects fail with 53300 (too many connections)${inUse}`,
      fix: `set POOL_MAX=${Math.max(1, perInstance)} (or fewer), or POOL_BUDGET=auto (instances share what the server allows), or raise max_connections`,
    };
  }
  if (typeof mode === 'number' && mode > available)
    return {
      mark: 'fail',
      check,
      text: `POOL_BUDGET=${mode} > ${limit}: the budget promises connections the server refuses${inUse}`,
      fix: `set POOL_BUDGET=${available} or less, or POOL_BUDGET=auto`,
    };
  // The gateway's own rule (pg-budget.ts), for `instances` fresh instances and nobody else connected.
  const planned = shareOf(
    {
      maxConnections: available,
      superuserReserved: 0,
      clients: 0,
      instances: Object.fromEntries(Array.from({ length: instances }, (_, i) => [`i${i}`, 0])),
    },
    { instanceId: 'i0', reserve, poolMax: pool.max, total: mode === 'auto' ? undefined : mode },
  );
  const budget = mode === 'auto' ? `${limit}, less POOL_RESERVE ${reserve}` : `POOL_BUDGET ${mode}`;
  if (planned.available < instances)
    return {
      mark: 'fail',
      check,
      text: `${sum}, but the budget (${budget}) leaves under one connection per instance`,
      fix: 'raise max_connections (or POOL_BUDGET), lower POOL_RESERVE, or put a pooler in front',
    };
  if (demand > planned.available)
    return {
      mark: 'warn',
      check,
      text: `${sum} > the budget (${budget}): POOL_BUDGET=${mode} shares it, about ${planned.share} per instance instead of ${pool.max}${inUse}`,
      fix: `expect the share, not POOL_MAX, under load; set POOL_MAX=${planned.share} to say so, or raise max_connections`,
    };
  return { mark: 'ok', check, text: `${sum} ≤ the budget (${budget}; POOL_BUDGET=${mode})${inUse}` };
}

/** poolgate's tables, and the app's migrations against poolgate_migrations. */
export async function migrationFindings(
  facts: Pick<DatabaseFacts, 'tables' | 'recorded'>,
  app: MigratingApp | undefined,
  appModule: string | undefined,
): Promise<Finding[]> {
  const check = 'migrations';
  const command = `poolgate migrate${appModule ? ` --app ${appModule}` : ' --app <module>'}`;
  const missing = Object.entries({
    poolgate_migrations: facts.tables.migrations,
    poolgate_idempotency_keys: facts.tables.idempotencyKeys,
    poolgate_forward_nonces: facts.tables.forwardNonces,
  })
    .filter(([, present]) => !present)
    .map(([name]) => name);
  const findings: Finding[] = [];
  if (missing.length)
    findings.push({
      mark: 'fail',
      check,
      text: `poolgate's tables are missing (${missing.join(', ')}): this database was never migrated`,
      fix: `run ${command} (the Node gateway also migrates at start; a Netlify function does not)`,
    });
  else findings.push({ mark: 'ok', check, text: `poolgate's tables are present; ${facts.recorded.length} migration rows recorded` });
  if (!app) {
    findings.push({
      mark: 'skip',
      check,
      text: "the app's migrations not compared (no --app)",
      fix: 'pass --app <module> to compare them',
    });
    return findings;
  }
  let name: string | undefined;
  try {
    name = checkAppName(app.name, (app.migrations ?? []).length > 0);
  } catch (err) {
    if (!(err instanceof MigrationError)) throw err;
    return [...findings, { mark: 'fail', check, text: err.message }];
  }
  const steps = [...(app.migrations ?? [])].sort((a, b) => a.id - b.id);
  if (name === undefined || steps.length === 0) return [...findings, { mark: 'ok', check, text: 'the app has no migrations' }];
  const own = new Map(facts.recorded.filter((r) => r.app === name).map((r) => [r.id, r]));
  const legacy = new Map(facts.recorded.filter((r) => r.app === '').map((r) => [r.id, r]));
  const pending: number[] = [];
  const edited: number[] = [];
  for (const step of steps) {
    const row = own.get(step.id) ?? (legacy.get(step.id)?.name === step.name ? legacy.get(step.id) : undefined);
    if (!row) pending.push(step.id);
    else if (row.checksum !== null && row.checksum !== (await checksumOf(step.sql))) edited.push(step.id);
  }
  if (pending.length)
    findings.push({
      mark: 'fail',
      check,
      text: `app "${name}": migration${pending.length > 1 ? 's' : ''} ${pending.join(', ')} not applied (of ${steps.length})`,
      fix: `run ${command}`,
    });
  else findings.push({ mark: 'ok', check, text: `app "${name}": all ${steps.length} migrations applied` });
  if (edited.length)
    findings.push({
      mark: 'warn',
      check,
      text: `app "${name}": migration${edited.length > 1 ? 's' : ''} ${edited.join(', ')} edited after being applied (not run again)`,
      fix: 'restore the applied text and put the change in a new migration',
    });
  return findings;
}

/** The local clock against the server's: forward signatures tolerate 30 s between the edge's and the Node side's. */
export function skewFinding(skewMs: number, uncertaintyMs: number): Finding {
  const check = 'clock skew';
  const abs = Math.abs(skewMs);
  const said = `this machine's clock is ${formatMs(abs)} ${skewMs > 0 ? 'behind' : 'ahead of'} the database server's (±${formatMs(uncertaintyMs)})`;
  const why = 'forward signatures are accepted up to 30 s ahead of the verifier (and 60 s + 30 s behind)';
  if (abs - uncertaintyMs > SIGNATURE_SKEW_MS)
    return {
      mark: 'fail',
      check,
      text: `${said}; ${why}, so forwards between machines this far apart are refused`,
      fix: 'synchronise the clock (NTP: systemd-timesyncd, chrony) on this machine',
    };
  if (abs - uncertaintyMs > SKEW_WARN_MS)
    return { mark: 'warn', check, text: `${said}; ${why}`, fix: 'synchronise the clock (NTP) before the drift grows' };
  return { mark: 'ok', check, text: `${said}; run doctor where the edge's and the Node function's clocks live to compare them too` };
}

const formatMs = (ms: number) => (ms >= 1_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);

/** FORWARD_SECRET's strength, and NODE_FUNCTION_URL for the edge. */
export function secretFindings(env: Env): Finding[] {
  const findings: Finding[] = [];
  const secret = env.FORWARD_SECRET?.trim();
  const edge = env.NODE_FUNCTION_URL?.trim();
  const development = isDevelopment(env);
  const generate = `set FORWARD_SECRET to ${MIN_SECRET_LENGTH}+ random characters (openssl rand -base64 32), the same on the edge and the Node side`;
  const check = 'forward secret';
  if (!secret)
    findings.push(
      edge
        ? { mark: 'fail', check, text: 'FORWARD_SECRET is not set: the edge refuses to start without it', fix: generate }
        : {
            mark: 'warn',
            check,
            text: 'FORWARD_SECRET is not set: the Node gateway serves unsigned requests on its API routes (fine for a private gateway or development only)',
            fix: generate,
          },
    );
  else if (KNOWN_SECRETS.has(secret))
    findings.push({ mark: 'fail', check, text: 'FORWARD_SECRET is a value published in poolgate itself', fix: generate });
  else if (secret.length < MIN_SECRET_LENGTH)
    findings.push({
      mark: development ? 'warn' : 'fail',
      check,
      text: `FORWARD_SECRET is ${secret.length} characters, under ${MIN_SECRET_LENGTH}${development ? ' (allowed in development only)' : ': the gateway and the edge refuse to start'}`,
      fix: generate,
    });
  else if (new Set(secret).size < 10)
    findings.push({
      mark: 'fail',
      check,
      text: `FORWARD_SECRET has only ${new Set(secret).size} distinct characters: not random`,
      fix: generate,
    });
  else findings.push({ mark: 'ok', check, text: `FORWARD_SECRET is ${secret.length} characters and no known default` });

  const edgeCheck = 'edge → Node';
  if (!edge)
    findings.push({
      mark: 'warn',
      check: edgeCheck,
      text: 'NODE_FUNCTION_URL is not set: the edge needs it (where transactional routes are forwarded); ignore this on the Node side',
      fix: "set NODE_FUNCTION_URL in the edge's environment, e.g. https://<site>/.netlify/functions/gateway",
    });
  else {
    let url: URL | undefined;
    try {
      url = new URL(edge);
    } catch {
      url = undefined;
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:'))
      findings.push({
        mark: 'fail',
        check: edgeCheck,
        text: 'NODE_FUNCTION_URL is not an http:// or https:// URL',
        fix: 'set it to the Node function’s URL',
      });
    else if (url.protocol === 'http:' && !isLocalHost(url.hostname))
      findings.push({
        mark: 'warn',
        check: edgeCheck,
        text: `NODE_FUNCTION_URL is plain http to ${url.hostname}: forwards are signed but their bodies travel unencrypted`,
        fix: 'use https://',
      });
    else findings.push({ mark: 'ok', check: edgeCheck, text: `NODE_FUNCTION_URL set (${url.protocol}//${url.host})` });
  }
  return findings;
}

// ---------------------------------------------------------------------------------------------
// Gathering the facts

/** Sends PostgreSQL's SSLRequest: 'S' the server offers TLS, 'N' it does not; undefined when it did not answer in time. */
export function serverOffersTls(host: string, port: number, timeoutMs: number): Promise<boolean | undefined> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host, port });
    const done = (answer: boolean | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    socket.once('error', () => done(undefined));
    socket.once('connect', () => {
      const request = Buffer.alloc(8);
      request.writeInt32BE(8, 0);
      request.writeInt32BE(80877103, 4);
      socket.write(request);
    });
    socket.once('data', (data: Buffer) => done(data[0] === 0x53 ? true : data[0] === 0x4e ? false : undefined));
  });
}

/** One connection (short timeouts): the server's limits, its clock, this connection's TLS, poolgate's tables. */
export async function readDatabaseFacts(url: string, timeoutMs: number, clockOffsetMs: number): Promise<DatabaseFacts> {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
    application_name: 'poolgate-doctor',
  });
  client.on('error', () => {});
  await client.connect();
  try {
    const t0 = Date.now();
    const clock = await client.query<{ ms: number }>('SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS ms');
    const t1 = Date.now();
    const localMs = (t0 + t1) / 2 + clockOffsetMs;
    const settings = await client.query<{ name: string; setting: string }>(
      "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections')",
    );
    const setting = (name: string) => Number(settings.rows.find((r) => r.name === name)?.setting ?? 0);
    const optional = async <T>(sql: string, pick: (rows: Record<string, unknown>[]) => T): Promise<T | undefined> =>
      client.query<Record<string, unknown>>(sql).then(
        (r) => pick(r.rows),
        () => undefined,
      );
    const clientBackends = await optional("SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'client backend'", (rows) =>
      Number(rows[0]?.n),
    );
    const sslInUse = await optional('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()', (rows) =>
      rows[0] === undefined ? undefined : rows[0].ssl === true,
    );
    const tables = (
      await client.query<{ migrations: boolean; keys: boolean; nonces: boolean }>(
        `SELECT to_regclass('poolgate_migrations') IS NOT NULL AS migrations,
           to_regclass('poolgate_idempotency_keys') IS NOT NULL AS keys,
           to_regclass('poolgate_forward_nonces') IS NOT NULL AS nonces`,
      )
    ).rows[0]!;
    const recorded = tables.migrations
      ? (await client.query<DatabaseFacts['recorded'][number]>('SELECT app, id, name, checksum FROM poolgate_migrations ORDER BY app, id'))
          .rows
      : [];
    return {
      maxConnections: setting('max_connections'),
      superuserReserved: setting('superuser_reserved_connections'),
      reservedConnections: setting('reserved_connections'),
      clientBackends,
      sslInUse,
      skewMs: clock.rows[0]!.ms - localMs,
      skewUncertaintyMs: (t1 - t0) / 2,
      tables: { migrations: tables.migrations, idempotencyKeys: tables.keys, forwardNonces: tables.nonces },
      recorded,
    };
  } finally {
    await client.end().catch(() => {});
  }
}

export interface DoctorOptions {
  env: Env;
  /** How many gateway instances will run with this environment (--instances; default 1). */
  instances: number;
  /** The app (--app), to compare its migrations. */
  app?: MigratingApp | undefined;
  /** How --app was given, for the fix lines. */
  appModule?: string | undefined;
  /** How long connecting and each statement may take; default 5 s. */
  timeoutMs?: number;
}

/**
 * Every check, in order; the database's only when there is a URL and it answers.
 * @example const findings = await runDoctor({ env: process.env, instances: 4 }); process.exitCode = exitCodeOf(findings);
 */
export async function runDoctor({ env, instances, app, appModule, timeoutMs = 5_000 }: DoctorOptions): Promise<Finding[]> {
  const connection = connectionFindings(env);
  // The configuration as it will be once DATABASE_URL is set as the line above says.
  const { finding: configured, config } = configFinding(connection.url ? { ...env, DATABASE_URL: connection.url } : env);
  const findings: Finding[] = [...connection.findings, configured];
  const afterConnect = ['TLS', 'pooled or direct', 'connections', 'migrations', 'clock skew'];
  const skip = (checks: string[], why: string) =>
    findings.push(...checks.map((check) => ({ mark: 'skip' as const, check, text: `not checked (${why})` })));
  const url = connection.url;
  const target = databaseTarget(url);
  if (!url || !target) {
    skip(['reachability', ...afterConnect], url ? `${connection.from} is not a URL` : 'no database URL');
    return [...findings, ...secretFindings(env)];
  }
  const clockOffsetMs = Number(env.POOLGATE_DOCTOR_CLOCK_OFFSET_MS ?? 0) || 0;
  let facts: DatabaseFacts;
  try {
    facts = await readDatabaseFacts(url, timeoutMs, clockOffsetMs);
  } catch (err) {
    const line = describeStartupFailure(err, target) ?? `cannot use the database at ${target.host}:${target.port} (${describeError(err)})`;
    findings.push({
      mark: 'fail',
      check: 'reachability',
      text: line,
      fix: `check ${connection.from}, the host's firewall and that PostgreSQL runs`,
    });
    // A URL that asks for TLS from a server without it fails to connect: say that, not only "cannot connect".
    const tls = tlsFinding(url, target, await serverOffersTls(target.host, Number(target.port), timeoutMs), undefined);
    if (tls.mark === 'fail') findings.push(tls);
    skip(
      afterConnect.filter((check) => check !== 'TLS' || tls.mark !== 'fail'),
      'the database did not answer',
    );
    return [...findings, ...secretFindings(env)];
  }
  findings.push({ mark: 'ok', check: 'reachability', text: `connected to ${where(url)} within ${timeoutMs} ms` });
  const offered = await serverOffersTls(target.host, Number(target.port), timeoutMs);
  findings.push(tlsFinding(url, target, offered, facts.sslInUse));
  const pooler = poolerFinding(url, target);
  findings.push(pooler.finding);
  findings.push(
    config
      ? budgetFinding(facts, config.pool, instances, pooler.pooled)
      : { mark: 'skip', check: 'connections', text: 'not checked (the configuration is invalid, see above)' },
  );
  findings.push(...(await migrationFindings(facts, app, appModule)));
  findings.push(skewFinding(facts.skewMs, facts.skewUncertaintyMs));
  return [...findings, ...secretFindings(env)];
}

export const exitCodeOf = (findings: readonly Finding[]) => (findings.some((f) => f.mark === 'fail') ? 1 : 0);

/** The checklist: one line per finding (`✗ check: what — fix: how`), then a summary line. */
export function formatFindings(findings: readonly Finding[], instances: number): string {
  const lines = [`poolgate doctor: the environment as the gateway reads it, for ${instances} instance${instances === 1 ? '' : 's'}`];
  for (const f of findings) lines.push(`${SYMBOL[f.mark]} ${f.check}: ${f.text}${f.fix ? ` — fix: ${f.fix}` : ''}`);
  const fails = findings.filter((f) => f.mark === 'fail').length;
  const warns = findings.filter((f) => f.mark === 'warn').length;
  lines.push(
    fails
      ? `${fails} problem${fails === 1 ? '' : 's'} (✗) and ${warns} warning${warns === 1 ? '' : 's'} (!)`
      : `no problems; ${warns} warning${warns === 1 ? '' : 's'} (!)`,
  );
  return `${lines.join('\n')}\n`;
}
