/**
 * The fitness API's schema, as ordered migrations: poolgate applies them (under an advisory lock,
 * after its own tables) at the gateway's start and with `poolgate migrate`.
 */
import type { Migration } from '../index.js';

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
];
