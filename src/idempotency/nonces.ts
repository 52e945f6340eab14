/**
 * Replay protection for signed forwards that holds across instances and restarts: a forward's
 * nonce is recorded in the same transaction as the route's work, under a primary key. A replay
 * (to this instance, another, or after a restart) finds it and is refused before any work; a
 * concurrent twin waits on the first's row and is refused once it commits. Nothing is kept in
 * memory, so no flood can fill a store and lock legitimate writes out. Records are kept only as
 * long as their signature could be accepted, then purged.
 */
import type { Queryable } from '../db/types.js';
import { AppError } from '../errors.js';

export interface ForwardNonce {
  nonce: string;
  /** Ms since the epoch after which the signature would be refused as stale anyway. */
  acceptableUntilMs: number;
}

/** Records `forward.nonce` in `tx`'s transaction; a nonce recorded before answers 401, as any bad signature does. */
export async function claimNonce(tx: Queryable, forward: ForwardNonce): Promise<void> {
  const { rowCount } = await tx.query(
    `INSERT INTO poolgate_forward_nonces (nonce, expires_at) VALUES ($1, to_timestamp($2::double precision / 1000))
     ON CONFLICT (nonce) DO NOTHING`,
    [forward.nonce, forward.acceptableUntilMs],
  );
  if (rowCount !== 1) throw new AppError(401, 'unauthorized', 'This endpoint only accepts requests signed by the poolgate edge.');
}
