/** A little demo data for the embedded default, with fixed ids so the README can show them. */
import type { Queryable } from '../index.js';

export const DEMO_USER_ID = '00000000-0000-4000-8000-000000000001';
export const DEMO_WORKOUT_ID = '00000000-0000-4000-8000-0000000000a1';

/** Inserts the demo rows unless they are there already (safe on every start); says so when it did. */
export async function seed(tx: Queryable): Promise<string | undefined> {
  const u = await tx.query(
    `INSERT INTO users (id, email, name, created_at) VALUES ($1, 'demo@poolgate.dev', 'Demo Athlete', '2026-01-05T08:00:00Z')
     ON CONFLICT DO NOTHING`,
    [DEMO_USER_ID],
  );
  if (u.rowCount === 0) return undefined;
  await tx.query(`INSERT INTO user_preferences (user_id, units, weekly_goal) VALUES ($1, 'metric', 4)`, [DEMO_USER_ID]);
  await tx.query(
    `INSERT INTO workouts (id, user_id, kind, started_at, duration_seconds) VALUES
       ($2, $1, 'strength', '2026-01-06T07:30:00Z', 3600),
       (gen_random_uuid(), $1, 'run', '2026-01-07T06:45:00Z', 1800)`,
    [DEMO_USER_ID, DEMO_WORKOUT_ID],
  );
  await tx.query(
    `INSERT INTO workout_sets (workout_id, position, exercise, reps, weight_kg) VALUES
       ($1, 1, 'squat', 5, 100), ($1, 2, 'squat', 5, 100), ($1, 3, 'bench press', 8, 70)`,
    [DEMO_WORKOUT_ID],
  );
  return `seeded demo data (user ${DEMO_USER_ID})`;
}
