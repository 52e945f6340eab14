/**
 * Which Postgres servers the proxy may reach, and how to read the connection string the Neon
 * driver sends. The allow-list is by `host:port` only — the unit Neon's own proxy routes by (an
 * endpoint) — because the WebSocket path sees nothing but an address: the database and the
 * credentials travel inside the Postgres stream, and the server checks them, not us.
 */

export interface Target {
  /** Lower-case host name or IP, without IPv6 brackets. */
  host: string;
  port: number;
}

/** What the HTTP path needs to open a pg connection; the password stays out of `describe`. */
export interface ConnectionInfo extends Target {
  user: string;
  database: string;
  password: string | undefined;
  applicationName: string | undefined;
  /** The libpq `options` startup parameter (e.g. `-c search_path=app`), passed through. */
  options: string | undefined;
}

export class TargetError extends Error {
  override name = 'TargetError';
}

const DEFAULT_PG_PORT = 5432;

/** Reads the allow-list; throws TargetError naming the bad entry by position, never by value. */
export function parseAllowedTargets(databaseUrls: string[]): Target[] {
  if (databaseUrls.length === 0) throw new TargetError('at least one database URL is required');
  return databaseUrls.map((raw, i) => {
    try {
      return parseConnectionString(raw);
    } catch (err) {
      throw new TargetError(`database URL #${i + 1} is invalid: ${(err as Error).message}`);
    }
  });
}

/** Names of this machine's loopback interface: any one of them allows the others. */
const LOOPBACK = new Set(['localhost', '127.0.0.1', '::1']);

export function isAllowed(allowed: Target[], target: Target): boolean {
  const host = sameHost(target.host);
  return allowed.some((a) => sameHost(a.host) === host && a.port === target.port);
}

function sameHost(host: string): string {
  const normal = normalizeHost(host);
  return LOOPBACK.has(normal) ? 'loopback' : normal;
}

/**
 * Parses a `postgres://user:password@host:port/database?…` URL. Query parameters other than
 * `application_name` and `options` (sslmode, channel_binding, …) are ignored: this proxy speaks
 * plain TCP to a local or trusted server. Neon's routing hints in `options` (`endpoint=ep-…`,
 * `project=…`, for clients without SNI) are Neon's, not Postgres's: they are stripped, so a
 * Neon connection string works unchanged.
 */
export function parseConnectionString(raw: string): ConnectionInfo {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new TargetError('not a valid URL');
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') throw new TargetError('the scheme must be postgres: or postgresql:');
  if (!url.hostname) throw new TargetError('the host is missing');
  const port = url.port ? Number(url.port) : DEFAULT_PG_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new TargetError('the port is invalid');
  return {
    host: normalizeHost(url.hostname),
    port,
    user: decodeURIComponent(url.username),
    password: url.password ? decodeURIComponent(url.password) : undefined,
    database: decodeURIComponent(url.pathname.replace(/^\//, '')),
    applicationName: url.searchParams.get('application_name') ?? undefined,
    options: withoutNeonHints(url.searchParams.get('options')),
  };
}

/** `options` without Neon's routing hints; undefined when nothing else is left. */
export function withoutNeonHints(options: string | null): string | undefined {
  if (options === null) return undefined;
  const kept = options
    .split(/\s+/)
    .filter((token) => token && !/^(endpoint|project)=/.test(token))
    .join(' ');
  return kept || undefined;
}

/** Parses the `?address=host:port` the driver appends to a string `wsProxy` (IPv6 as `[::1]:5432`). */
export function parseAddress(address: string): Target | undefined {
  const colon = address.lastIndexOf(':');
  if (colon <= 0) return undefined;
  const port = Number(address.slice(colon + 1));
  const host = normalizeHost(address.slice(0, colon));
  if (!host || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { host, port };
}

/** `host:port` for log lines and error messages (no credentials to hide). */
export function describeTarget(target: Target): string {
  return target.host.includes(':') ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`;
}

function normalizeHost(host: string): string {
  return host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
}
