/**
 * The fitness app's SQL. Every function takes the request's `Db`, so the same code runs on the
 * pg Pool (Node) and on Neon (edge). Parameterised SQL only; rows are mapped to the API's JSON
 * shapes here and nowhere else.
 */
import { AppError, notFound, type Db, type Queryable } from '../index.js';
import type { CreateUserInput, CreateWorkoutInput, PatchPreferencesInput } from './schema.js';

export interface Preferences {
  units: 'metric' | 'imperial';
  weeklyGoal: number | null;
}
export interface User {
  id: string;
  email: string;
  name: string;
  preferences: Preferences;
  createdAt: string;
}
export interface WorkoutSet {
  exercise: string;
  reps: number;
  weightKg: number | null;
}
export interface Workout {
  id: string;
  userId: string;
  kind: string;
  startedAt: string;
  durationSeconds: number | null;
  createdAt: string;
  sets: WorkoutSet[];
}

const iso = (v: unknown): string => (v instanceof Date ? v : new Date(String(v))).toISOString();
const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

const USER_SQL = `
  SELECT u.id, u.email, u.name, u.created_at, p.units, p.weekly_goal
  FROM users u LEFT JOIN user_preferences p ON p.user_id = u.id
  WHERE u.id = $1`;

type UserRow = { id: string; email: string; name: string; created_at: unknown; units: string | null; weekly_goal: number | null };
const toUser = (r: UserRow): User => ({
  id: r.id,
  email: r.email,
  name: r.name,
  preferences: { units: (r.units ?? 'metric') as Preferences['units'], weeklyGoal: r.weekly_goal ?? null },
  createdAt: iso(r.created_at),
});

export async function createUser(db: Db, input: CreateUserInput): Promise<User> {
  return db.transaction(async (tx) => {
    const u = await tx.query<UserRow>(
      'INSERT INTO users (email, name) VALUES ($1, $2) RETURNING id, email, name, created_at, NULL::text AS units, NULL::int AS weekly_goal',
      [input.email, input.name],
    );
    const user = u.rows[0]!;
    const p = await tx.query<{ units: string; weekly_goal: number | null }>(
      'INSERT INTO user_preferences (user_id, units, weekly_goal) VALUES ($1, $2, $3) RETURNING units, weekly_goal',
      [user.id, input.preferences?.units ?? 'metric', input.preferences?.weeklyGoal ?? null],
    );
    return toUser({ ...user, ...p.rows[0]! });
  });
}

export async function getUser(db: Db, id: string): Promise<User> {
  const { rows } = await db.query<UserRow>(USER_SQL, [id]);
  if (!rows[0]) throw notFound('User', id);
  return toUser(rows[0]);
}

export async function patchPreferences(db: Db, id: string, input: PatchPreferencesInput): Promise<User> {
  return db.transaction(async (tx) => {
    const exists = await tx.query('SELECT 1 FROM users WHERE id = $1 FOR UPDATE', [id]);
    if (exists.rowCount === 0) throw notFound('User', id);
    await tx.query(
      `INSERT INTO user_preferences (user_id, units, weekly_goal) VALUES ($1, COALESCE($2, 'metric'), $4)
       ON CONFLICT (user_id) DO UPDATE SET
         units = COALESCE($2, user_preferences.units),
         weekly_goal = CASE WHEN $3 THEN $4 ELSE user_preferences.weekly_goal END,
         updated_at = now()`,
      [id, input.units ?? null, input.weeklyGoal !== undefined, input.weeklyGoal ?? null],
    );
    const { rows } = await tx.query<UserRow>(USER_SQL, [id]);
    return toUser(rows[0]!);
  });
}

type WorkoutRow = { id: string; user_id: string; kind: string; started_at: unknown; duration_seconds: number | null; created_at: unknown };
type SetRow = { exercise: string; reps: number; weight_kg: unknown };
const toWorkout = (w: WorkoutRow, sets: SetRow[]): Workout => ({
  id: w.id,
  userId: w.user_id,
  kind: w.kind,
  startedAt: iso(w.started_at),
  durationSeconds: w.duration_seconds,
  createdAt: iso(w.created_at),
  sets: sets.map((s) => ({ exercise: s.exercise, reps: s.reps, weightKg: num(s.weight_kg) })),
});

export async function createWorkout(db: Db, input: CreateWorkoutInput): Promise<Workout> {
  return db.transaction((tx) => insertWorkout(tx, input));
}

async function insertWorkout(tx: Queryable, input: CreateWorkoutInput): Promise<Workout> {
  const w = await tx.query<WorkoutRow>(
    `INSERT INTO workouts (user_id, kind, started_at, duration_seconds) VALUES ($1, $2, $3, $4)
     RETURNING id, user_id, kind, started_at, duration_seconds, created_at`,
    [input.userId, input.kind, input.startedAt, input.durationSeconds ?? null],
  );
  const workout = w.rows[0]!;
  let sets: SetRow[] = [];
  if (input.sets.length > 0) {
    // One statement for all sets: arrays in, ordinality gives each set its position.
    const s = await tx.query<SetRow>(
      `INSERT INTO workout_sets (workout_id, position, exercise, reps, weight_kg)
       SELECT $1, t.ord, t.exercise, t.reps, t.weight_kg
       FROM unnest($2::text[], $3::int[], $4::numeric[]) WITH ORDINALITY AS t(exercise, reps, weight_kg, ord)
       RETURNING exercise, reps, weight_kg`,
      [workout.id, input.sets.map((x) => x.exercise), input.sets.map((x) => x.reps), input.sets.map((x) => x.weightKg ?? null)],
    );
    sets = s.rows;
  }
  return toWorkout(workout, sets);
}

const WORKOUT_SQL = 'SELECT id, user_id, kind, started_at, duration_seconds, created_at FROM workouts WHERE id = $1';
const SETS_SQL = 'SELECT exercise, reps, weight_kg FROM workout_sets WHERE workout_id = $1 ORDER BY position';

export async function getWorkout(db: Db, id: string): Promise<Workout> {
  const [w, s] = await db.readBatch([
    { text: WORKOUT_SQL, params: [id] },
    { text: SETS_SQL, params: [id] },
  ]);
  const row = w!.rows[0] as WorkoutRow | undefined;
  if (!row) throw notFound('Workout', id);
  return toWorkout(row, s!.rows as SetRow[]);
}

/**
 * An interactive read: the second statement needs the first one's answer, both in one snapshot —
 * at the edge a WebSocket session of this request, on Node a pooled session.
 */
export async function latestWorkout(db: Db, userId: string): Promise<Workout> {
  return db.transaction(
    async (tx) => {
      const w = await tx.query<WorkoutRow>(
        'SELECT id, user_id, kind, started_at, duration_seconds, created_at FROM workouts WHERE user_id = $1 ORDER BY started_at DESC, id DESC LIMIT 1',
        [userId],
      );
      const row = w.rows[0];
      if (!row) {
        const u = await tx.query('SELECT 1 FROM users WHERE id = $1', [userId]);
        throw u.rowCount === 0 ? notFound('User', userId) : notFound('Workout of user', userId);
      }
      const s = await tx.query<SetRow>(SETS_SQL, [row.id]);
      return toWorkout(row, s.rows);
    },
    { readOnly: true, isolation: 'repeatable read' },
  );
}

export async function deleteWorkout(db: Db, id: string): Promise<void> {
  const { rowCount } = await db.transaction((tx) => tx.query('DELETE FROM workouts WHERE id = $1', [id]));
  if (rowCount === 0) throw notFound('Workout', id);
}

export interface WorkoutListItem extends Omit<Workout, 'sets'> {
  setCount: number;
}

/** Keyset cursor: the (started_at, id) of the last item, opaque to clients. */
export function encodeCursor(startedAt: string, id: string): string {
  return btoa(`${startedAt}|${id}`).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function decodeCursor(cursor: string): { startedAt: string; id: string } {
  const bad = () =>
    new AppError(400, 'validation_failed', 'The cursor is not valid; use nextCursor from a previous page.', {
      fields: [{ path: 'cursor', message: 'invalid cursor' }],
    });
  let raw: string;
  try {
    raw = atob(cursor.replace(/-/g, '+').replace(/_/g, '/'));
  } catch {
    throw bad();
  }
  const m = /^(\d{4}-\d{2}-\d{2}T[\d:.]+Z)\|([0-9a-f-]{36})$/i.exec(raw);
  if (!m || Number.isNaN(Date.parse(m[1]!))) throw bad();
  return { startedAt: m[1]!, id: m[2]! };
}

export async function listWorkouts(
  db: Db,
  userId: string,
  limit: number,
  cursor: string | undefined,
): Promise<{ items: WorkoutListItem[]; nextCursor: string | null }> {
  const after = cursor ? decodeCursor(cursor) : undefined;
  const [u, page] = await db.readBatch([
    { text: 'SELECT 1 FROM users WHERE id = $1', params: [userId] },
    {
      text: `SELECT w.id, w.user_id, w.kind, w.started_at, w.duration_seconds, w.created_at,
               (SELECT count(*)::int FROM workout_sets s WHERE s.workout_id = w.id) AS set_count,
               -- The cursor needs started_at to the microsecond: a millisecond ISO string would skip
               -- rows that start later within the same millisecond.
               to_char(w.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_at
             FROM workouts w
             WHERE w.user_id = $1 AND ($2::timestamptz IS NULL OR (w.started_at, w.id) < ($2::timestamptz, $3::uuid))
             ORDER BY w.started_at DESC, w.id DESC
             LIMIT $4`,
      params: [userId, after?.startedAt ?? null, after?.id ?? null, limit + 1],
    },
  ]);
  if (u!.rows.length === 0) throw notFound('User', userId);
  const rows = page!.rows as (WorkoutRow & { set_count: number; cursor_at: string })[];
  const items = rows.slice(0, limit).map((r) => {
    const { sets: _sets, ...rest } = toWorkout(r, []);
    return { ...rest, setCount: r.set_count };
  });
  const last = rows[limit - 1];
  return { items, nextCursor: rows.length > limit && last ? encodeCursor(last.cursor_at, last.id) : null };
}

export interface Summary {
  userId: string;
  workouts: number;
  sets: number;
  reps: number;
  volumeKg: number;
  durationSeconds: number;
  firstWorkoutAt: string | null;
  lastWorkoutAt: string | null;
  byKind: { kind: string; workouts: number }[];
}

/**
 * One snapshot, one round trip at the edge (a Neon HTTP read batch; on Node a REPEATABLE READ
 * READ ONLY session): the user check and the aggregates go together, and a missing user's zero
 * aggregates are simply not answered. It was an interactive session before, where the check
 * decided whether the aggregates ran: at the edge that cost a WebSocket connect and a round trip
 * per statement (8 trips, 242 ms at 15 ms one way), to save work only for unknown users.
 */
export async function summary(db: Db, userId: string): Promise<Summary> {
  const [u, agg, kinds] = await db.readBatch([
    { text: 'SELECT 1 FROM users WHERE id = $1', params: [userId] },
    { text: SUMMARY_SQL, params: [userId] },
    {
      text: 'SELECT kind, count(*)::int AS workouts FROM workouts WHERE user_id = $1 GROUP BY kind ORDER BY workouts DESC, kind',
      params: [userId],
    },
  ]);
  if (u!.rows.length === 0) throw notFound('User', userId);
  const a = agg!.rows[0] as SummaryRow;
  return {
    userId,
    workouts: a.workouts,
    sets: a.sets,
    reps: Number(a.reps),
    volumeKg: Number(a.volume),
    durationSeconds: Number(a.duration),
    firstWorkoutAt: a.first_at ? iso(a.first_at) : null,
    lastWorkoutAt: a.last_at ? iso(a.last_at) : null,
    byKind: kinds!.rows as Summary['byKind'],
  };
}

type SummaryRow = {
  workouts: number;
  duration: string | number;
  first_at: unknown;
  last_at: unknown;
  sets: number;
  reps: string | number;
  volume: string | number;
};

const SUMMARY_SQL = `SELECT
   (SELECT count(*)::int FROM workouts WHERE user_id = $1) AS workouts,
   (SELECT coalesce(sum(duration_seconds), 0)::bigint FROM workouts WHERE user_id = $1) AS duration,
   (SELECT min(started_at) FROM workouts WHERE user_id = $1) AS first_at,
   (SELECT max(started_at) FROM workouts WHERE user_id = $1) AS last_at,
   count(s.*)::int AS sets,
   coalesce(sum(s.reps), 0)::bigint AS reps,
   coalesce(sum(s.reps * s.weight_kg), 0)::numeric AS volume
 FROM workouts w JOIN workout_sets s ON s.workout_id = w.id
 WHERE w.user_id = $1`;
