/**
 * The database side of the read cache: one row per cached table counting its committed writes.
 * Each table a cache policy names gets a deferred constraint trigger, so the bump runs at COMMIT,
 * inside the writing transaction: a reader sees the new generation exactly when it can see the
 * write (never before it, so a fill cannot store old data under the new generation), a rollback
 * bumps nothing, and a COMMIT that succeeded has bumped, whatever happens to its answer. It counts
 * every writer — poolgate's routes, migrations, psql — since it lives in the database.
 *
 * The row is locked only during COMMIT (deferred), once per transaction however many rows it
 * writes: concurrent writers of one table wait for each other's COMMIT there, not for their
 * whole transactions.
 */
import type { Queryable } from '../db/types.js';

export const GENERATIONS_TABLE = `
  CREATE TABLE IF NOT EXISTS poolgate_cache_generations (
    name text PRIMARY KEY,
    gen bigint NOT NULL,
    xid bigint
  );
  CREATE OR REPLACE FUNCTION poolgate_cache_bump() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO poolgate_cache_generations AS g (name, gen, xid) VALUES (TG_ARGV[0], 1, txid_current())
    ON CONFLICT (name) DO UPDATE SET gen = g.gen + 1, xid = EXCLUDED.xid WHERE g.xid IS DISTINCT FROM EXCLUDED.xid;
    RETURN NULL;
  END $$;
`;

const literal = (s: string) => `'${s.replaceAll("'", "''")}'`;

const ROW_TRIGGER = 'poolgate_cache';
const TRUNCATE_TRIGGER = 'poolgate_cache_truncate';

/**
 * Installs the bump triggers on each table (idempotent: a trigger already there is left alone).
 * A table that does not exist, or one named twice (`users` and `public.users`), is the policies'
 * mistake, reported with its names.
 */
export async function installTriggers(tx: Queryable, tables: readonly string[]): Promise<void> {
  const seen = new Map<number, string>();
  for (const table of tables) {
    const { rows } = await tx.query<{ oid: number | null; regclass: string | null; rows: boolean; truncate: boolean }>(
      `SELECT to_regclass($1)::oid AS oid, to_regclass($1)::text AS regclass,
        EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2) AS rows,
        EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $3) AS truncate`,
      [table, ROW_TRIGGER, TRUNCATE_TRIGGER],
    );
    const found = rows[0];
    if (!found?.oid || !found.regclass)
      throw new Error(`a cache policy names the table "${table}", which does not exist; name the tables its route reads`);
    const twin = seen.get(Number(found.oid));
    if (twin) throw new Error(`cache policies name one table as both "${twin}" and "${table}"; name it one way everywhere`);
    seen.set(Number(found.oid), table);
    if (!found.rows)
      await tx.query(
        `CREATE CONSTRAINT TRIGGER ${ROW_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON ${found.regclass}
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION poolgate_cache_bump(${literal(table)})`,
      );
    if (!found.truncate)
      await tx.query(
        `CREATE TRIGGER ${TRUNCATE_TRIGGER} AFTER TRUNCATE ON ${found.regclass}
         FOR EACH STATEMENT EXECUTE FUNCTION poolgate_cache_bump(${literal(table)})`,
      );
  }
}
