/**
 * The consistency token: what a client carries from a write to its next reads so that they see
 * that write (read-your-writes) wherever they are served. A transactional response carries the
 * primary's WAL position read after its COMMIT (`Poolgate-Consistency: lsn=16/B374D848`, and the
 * same in a cookie where configured); a read carrying it is served only by a replica that has
 * replayed that far, or by the primary.
 *
 * The text is `key=value` pairs joined by `;` so it can carry more later (the edge cache's
 * generations): unknown keys are kept out and ignored, a known key with a bad value is refused.
 * Nothing in it is secret, and it need not be signed: a client that forges a position far ahead
 * only sends its own reads to the primary.
 */
import { AppError } from '../errors.js';
import type { QueryResult } from './types.js';

export const CONSISTENCY_HEADER = 'poolgate-consistency';
export const CONSISTENCY_COOKIE = 'poolgate_consistency';

/** A token's longest accepted text: a few positions and generations, never a body. */
const TOKEN_MAX = 512;
const LSN = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

export interface ConsistencyToken {
  /** The primary's WAL position (`pg_lsn` text, upper case): a reader needs a server that has replayed at least this far. */
  lsn: string;
}

/** A `pg_lsn` as a number, for comparing; undefined when it is no LSN. */
export function lsnValue(text: string): bigint | undefined {
  const m = LSN.exec(text.trim());
  if (!m) return undefined;
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** The LSN in PostgreSQL's own spelling (upper-case hex, no leading zeros), so equal positions read equal. */
const normalLsn = (value: bigint): string =>
  `${(value >> 32n).toString(16).toUpperCase()}/${(value & 0xffffffffn).toString(16).toUpperCase()}`;

/** Whether a server at `replayed` has what a token at `needed` asks for. */
export function hasReplayed(replayed: string | undefined, needed: string): boolean {
  if (replayed === undefined) return false;
  const have = lsnValue(replayed);
  const need = lsnValue(needed);
  return have !== undefined && need !== undefined && have >= need;
}

/** The later of two positions (either may be absent). */
export function laterLsn(a: string | undefined, b: string | undefined): string | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return (lsnValue(a) ?? 0n) >= (lsnValue(b) ?? 0n) ? a : b;
}

export function formatToken(token: ConsistencyToken): string {
  return `lsn=${token.lsn}`;
}

/**
 * The token a client sent, or undefined when it sent none; a malformed one is the caller's
 * mistake and answers 400 `invalid_consistency_token` (a read must not quietly lose the guarantee).
 * @example parseToken('lsn=0/3000060') // { lsn: '0/3000060' }
 */
export function parseToken(raw: string | undefined): ConsistencyToken | undefined {
  if (raw === undefined || raw.trim() === '') return undefined;
  if (raw.length > TOKEN_MAX) throw invalidToken(`is longer than ${TOKEN_MAX} characters`);
  let lsn: string | undefined;
  for (const part of raw.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) throw invalidToken('is not key=value pairs');
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key !== 'lsn') continue; // a later version's field: ignored here
    const n = lsnValue(value);
    if (n === undefined) throw invalidToken('has an lsn that is not a WAL position (like 16/B374D848)');
    lsn = normalLsn(n);
  }
  if (lsn === undefined) throw invalidToken('has no lsn');
  return { lsn };
}

/** The token in a `Cookie` header, if it holds one. */
export function tokenFromCookie(cookie: string | undefined): string | undefined {
  if (!cookie) return undefined;
  for (const pair of cookie.split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim() === CONSISTENCY_COOKIE) return decodeURIComponent(pair.slice(eq + 1).trim());
  }
  return undefined;
}

/** The cookie a transactional response sets (CONSISTENCY_COOKIE=on): short-lived, since replicas catch up in seconds. */
export function tokenCookie(token: ConsistencyToken, maxAgeSec = 300): string {
  return `${CONSISTENCY_COOKIE}=${encodeURIComponent(formatToken(token))}; Path=/; Max-Age=${maxAgeSec}; HttpOnly; SameSite=Lax`;
}

const invalidToken = (why: string) =>
  new AppError(
    400,
    'invalid_consistency_token',
    `The ${CONSISTENCY_HEADER} token ${why}; send back the value a write returned, unchanged.`,
  );

/**
 * The primary's WAL position now: after a statement has finished, at or past everything it wrote.
 * The CASE keeps it from failing on a standby, which has no insert position.
 */
export const POSITION_SQL = 'SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END AS lsn';

/**
 * COMMIT and, in the same write and answer, the position after it: a simple Query of two
 * statements, so a COMMIT that fails skips the second, and the second cannot fail after a COMMIT
 * that succeeded (POSITION_SQL; a server without the function is found first, by the replicas' monitor).
 */
export const COMMIT_WITH_POSITION = `COMMIT; ${POSITION_SQL}`;

/** The position a POSITION_SQL (or COMMIT_WITH_POSITION) answered, if any. */
export const positionOf = (result: QueryResult): string | undefined => {
  const lsn = result.rows[0]?.lsn;
  return typeof lsn === 'string' ? lsn : undefined;
};
