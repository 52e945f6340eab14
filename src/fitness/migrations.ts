/**
 * The reference app's schema, as ordered migrations. Applied under an advisory lock inside one
 * transaction each, so several processes starting at once cannot apply one twice.
 */
import type { Queryable } from '../db/types.js';

export interface Migration {
  id: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    id: 1,
    name: 'fitness schema',
    sql: `
      CREATE TABLE users (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        email text NOT NULL,
        name text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE UNIQUE INDEX users_email_key ON users (lower(email));
      CREATE TABLE user_preferences (
        user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
        units text NOT NULL DEFAULT 'metric' CHECK (units IN ('metric', 'imperial')),
        weekly_goal integer CHECK (weekly_goal BETWEEN 0 AND 100),
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE TABLE workouts (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        kind text NOT NULL,
        started_at timestamptz NOT NULL,
        duration_seconds integer CHECK (duration_seconds >= 0),
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX workouts_user_started ON workouts (user_id, started_at DESC, id DESC);
      CREATE TABLE workout_sets (
        workout_id uuid NOT NULL REFERENCES workouts (id) ON DELETE CASCADE,
        position integer NOT NULL,
        exercise text NOT NULL,
        reps integer NOT NULL CHECK (reps >= 0),
        weight_kg numeric(7, 2) CHECK (weight_kg >= 0),
        PRIMARY KEY (workout_id, position)
      );
    `,
  },
  {
    id: 2,
    name: 'idempotency keys',
    sql: `
      CREATE TABLE idempotency_keys (
        key text PRIMARY KEY,
        request_hash text NOT NULL,
        status integer NOT NULL,
        body text, -- the JSON exactly as first sent, so a replay is byte-identical
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL
      );
      CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
    `,
  },
  {
    id: 3,
    name: 'forward nonces',
    sql: `
      CREATE TABLE forward_nonces (
        nonce text PRIMARY KEY,
        expires_at timestamptz NOT NULL
      );
      CREATE INDEX forward_nonces_expires ON forward_nonces (expires_at);
    `,
  },
];

const LOCK_KEY = 0x706f6f6c; // 'pool'

/** Applies the migrations not applied yet; returns the ids it applied. */
export async function migrate(runTx: <T>(fn: (tx: Queryable) => Promise<T>) => Promise<T>): Promise<number[]> {
  return runTx(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
    await tx.query(
      'CREATE TABLE IF NOT EXISTS poolgate_migrations (id integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())',
    );
    const done = new Set((await tx.query<{ id: number }>('SELECT id FROM poolgate_migrations')).rows.map((r) => r.id));
    const applied: number[] = [];
    for (const m of MIGRATIONS) {
      if (done.has(m.id)) continue;
      await tx.query(m.sql);
      await tx.query('INSERT INTO poolgate_migrations (id, name) VALUES ($1, $2)', [m.id, m.name]);
      applied.push(m.id);
    }
    return applied;
  });
}
