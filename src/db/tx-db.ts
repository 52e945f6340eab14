/**
 * A Db bound to a transaction that is already open: `transaction(fn)` runs `fn` inside it
 * (flattened, no savepoint) and reads run on the same connection. Lets code written against
 * `Db` join an outer transaction — the idempotency record is written that way, in the same
 * transaction as the route's own rows.
 */
import type { ClientKind, Db, QueryResult, Queryable, Statement } from './types.js';

export function bindToTransaction(tx: Queryable, kind: ClientKind): Db {
  return {
    kind,
    query: (text, params) => tx.query(text, params),
    async readBatch(statements: readonly Statement[]) {
      const results: QueryResult[] = [];
      for (const s of statements) results.push(await tx.query(s.text, s.params));
      return results;
    },
    transaction: (fn) => fn(tx),
  };
}
