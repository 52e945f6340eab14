/**
 * Driver failures classified once, where they enter (the connectors): a server error keeps its
 * SQLSTATE and a socket error its system code (ECONNREFUSED, ECONNRESET, EPIPE, ETIMEDOUT …), which
 * the core reads as they are. A plain Error with neither (pg's "Connection terminated", "timeout
 * expired", "Query read timeout"; Neon HTTP's transport errors) is named by where it happened:
 * while connecting, it failed to connect; on a statement, the connection is gone if the client
 * says so, and otherwise the driver gave up waiting (its read timeout).
 */
import { markFailure } from '../../errors.js';

/** The parts of a pg-compatible client that say whether its connection is gone. */
interface ClientState {
  _ended?: boolean;
  _queryable?: boolean;
  connection?: { stream?: { destroyed?: boolean } };
}

const hasCode = (err: Error) => {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && code !== '';
};

/**
 * A driver's own Error: not a server error (those carry a SQLSTATE), not a TypeError or other
 * misuse. Neon HTTP's NeonDbError without a SQLSTATE: no SQL answer came (a fetch that failed, or
 * the endpoint refused or could not reach the database); the driver keeps the HTTP status only in
 * its message, so every such one counts as a connection failure.
 */
const isDriversOwn = (err: unknown): err is Error =>
  err instanceof Error && !hasCode(err) && (err.constructor === Error || err.name === 'NeonDbError');

function gone(client: ClientState | undefined): boolean {
  if (client === undefined) return true;
  return client._ended === true || client._queryable === false || client.connection?.stream?.destroyed === true;
}

/**
 * `err`, marked with its failure kind where it has no code. `client`: the connection a statement
 * ran on (none for a round trip without one, Neon HTTP: its transport failed).
 */
export function classified(err: unknown, where: 'connect' | 'statement', client?: unknown): unknown {
  if (!isDriversOwn(err)) return err;
  if (where === 'connect') return markFailure(err, 'connect_failed');
  return markFailure(err, gone(client as ClientState | undefined) ? 'connection_lost' : 'read_timeout');
}

/**
 * A named prepared statement the server refused before it ran: its Bind named a statement this
 * backend does not have (26000), or its Parse one it has already (42P05). Nothing of it ran. What a
 * pooler answers when it hands one client connection's statements to different servers (PgBouncer
 * in transaction mode without protocol-level prepared statements).
 */
export function isNamedStatementRefused(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return code === '26000' || code === '42P05';
}

/**
 * A connect refused for breaking the protocol (08P01): what PgBouncer answers a startup parameter
 * it neither tracks nor was told to ignore ("unsupported startup parameter: statement_timeout").
 */
export function isStartupRefused(err: unknown): boolean {
  return (err as { code?: unknown } | undefined)?.code === '08P01';
}
