/**
 * Idempotency keys for transactional routes. The key, a hash of the request and the stored
 * response are written in the same transaction as the route's rows, so "the write happened"
 * and "the key is recorded" are one fact: a client that lost the answer (timeout, reset after
 * COMMIT) re-sends with the same key and gets the stored response without writing again.
 *
 *   same key, same request, first one finished  → stored response, `Idempotent-Replayed: true`
 *   same key, first one still running           → 409 idempotency_in_progress (retry later)
 *   same key, different request                 → 422 idempotency_key_reused
 */
import type { Db } from '../db/types.js';
import { bindToTransaction } from '../db/tx-db.js';
import { AppError } from '../errors.js';
import type { RouteResult } from '../routes/types.js';

export const IDEMPOTENCY_HEADER = 'idempotency-key';
export const REPLAYED_HEADER = 'idempotent-replayed';

const KEY = /^[\x21-\x7e]{1,255}$/;

export function checkKey(key: string): string {
  if (!KEY.test(key)) {
    throw new AppError(400, 'validation_failed', 'Idempotency-Key must be 1 to 255 visible ASCII characters.', {
      fields: [{ path: 'Idempotency-Key', message: 'invalid' }],
    });
  }
  return key;
}

/** SHA-256 over method, path+query and body: what "the same request" means. */
export async function requestHash(method: string, pathWithQuery: string, body: Uint8Array): Promise<string> {
  const head = new TextEncoder().encode(`${method.toUpperCase()} ${pathWithQuery}\n`);
  const all = new Uint8Array(head.byteLength + body.byteLength);
  all.set(head);
  all.set(body, head.byteLength);
  const digest = await crypto.subtle.digest('SHA-256', all);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

export interface IdempotentOptions {
  key: string;
  hash: string;
  ttlMs: number;
}

export interface IdempotentResult extends RouteResult {
  replayed: boolean;
}

export async function runIdempotent(db: Db, opts: IdempotentOptions, run: (db: Db) => Promise<RouteResult>): Promise<IdempotentResult> {
  return db.transaction(async (tx) => {
    // Held until COMMIT/ROLLBACK: a concurrent twin sees it taken and is told to come back.
    const lock = await tx.query<{ ok: boolean }>('SELECT pg_try_advisory_xact_lock(hashtextextended($1, 7)) AS ok', [opts.key]);
    if (!lock.rows[0]?.ok) {
      throw new AppError(409, 'idempotency_in_progress', 'A request with this Idempotency-Key is still running; retry shortly.', {
        retryAfterSec: 1,
      });
    }
    const prev = await tx.query<{ request_hash: string; status: number; body: string | null }>(
      'SELECT request_hash, status, body FROM poolgate_idempotency_keys WHERE key = $1 AND expires_at > now()',
      [opts.key],
    );
    const stored = prev.rows[0];
    if (stored) {
      if (stored.request_hash !== opts.hash) {
        throw new AppError(422, 'idempotency_key_reused', 'This Idempotency-Key was used for a different request.');
      }
      return {
        status: stored.status as RouteResult['status'],
        body: stored.body === null ? undefined : (JSON.parse(stored.body) as unknown),
        replayed: true,
      };
    }
    await tx.query('DELETE FROM poolgate_idempotency_keys WHERE key = $1', [opts.key]); // an expired record, if any
    const result = await run(bindToTransaction(tx, db.kind));
    await tx.query(
      `INSERT INTO poolgate_idempotency_keys (key, request_hash, status, body, expires_at)
       VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')`,
      [opts.key, opts.hash, result.status, result.body === undefined ? null : JSON.stringify(result.body), opts.ttlMs],
    );
    return { ...result, replayed: false };
  });
}

/** Deletes expired idempotency records and forward nonces; cheap to call now and then. */
export async function purgeExpiredKeys(db: Db): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `WITH keys AS (DELETE FROM poolgate_idempotency_keys WHERE expires_at <= now() RETURNING 1),
          nonces AS (DELETE FROM poolgate_forward_nonces WHERE expires_at <= now() RETURNING 1)
     SELECT (SELECT count(*) FROM keys)::int + (SELECT count(*) FROM nonces)::int AS n`,
  );
  return rows[0]?.n ?? 0;
}
