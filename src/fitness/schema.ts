/**
 * Request shapes of the fitness API. Objects are strict (unknown keys are refused, so a typo
 * never silently drops data) and every string, array and number has a bound.
 */
import { z } from 'zod';

const text = (max: number) => z.string().trim().min(1).max(max);
const int = (min: number, max: number) => z.number().int().min(min).max(max);

export const uuid = z.uuid({ message: 'must be a UUID' });

/**
 * A whole number in a query string: decimal digits only, then bounded. z.coerce.number() alone
 * would take `0x10`, `1e1`, ` 5` or `` as 16, 10, 5 or 0 (Number() reads them so).
 */
const queryInt = (min: number, max: number, fallback: number) =>
  z
    .string()
    .regex(/^\d{1,9}$/, { message: 'must be a whole number in decimal digits' })
    .default(String(fallback))
    .pipe(z.coerce.number<string>().int().min(min).max(max))
    // The OpenAPI document shows the input (a string of digits): the bounds go in its description.
    .meta({ description: `A whole number from ${min} to ${max}, in decimal digits (default ${fallback}).` });

export const preferencesInput = z.strictObject({
  units: z.enum(['metric', 'imperial']),
  weeklyGoal: int(0, 100).nullable().optional(),
});

export const createUserInput = z.strictObject({
  email: z.email({ message: 'must be an email address' }).max(254),
  name: text(200),
  preferences: preferencesInput.optional(),
});

export const patchPreferencesInput = z
  .strictObject({
    units: z.enum(['metric', 'imperial']).optional(),
    weeklyGoal: int(0, 100).nullable().optional(),
  })
  .refine((v) => v.units !== undefined || v.weeklyGoal !== undefined, { message: 'give units or weeklyGoal' });

export const workoutSetInput = z.strictObject({
  exercise: text(100),
  reps: int(0, 10_000),
  weightKg: z.number().min(0).max(10_000).optional(),
});

export const createWorkoutInput = z.strictObject({
  userId: uuid,
  kind: text(50),
  startedAt: z.iso.datetime({ offset: true, message: 'must be an ISO 8601 date-time' }),
  durationSeconds: int(0, 7 * 24 * 3600).optional(),
  sets: z.array(workoutSetInput).max(200),
});

export const listQuery = z.strictObject({
  limit: queryInt(1, 100, 20),
  cursor: z.string().max(200).optional(),
});

export type CreateUserInput = z.infer<typeof createUserInput>;
export type PatchPreferencesInput = z.infer<typeof patchPreferencesInput>;
export type CreateWorkoutInput = z.infer<typeof createWorkoutInput>;

export const idParams = z.strictObject({ id: uuid });

// Response shapes, for the OpenAPI document (the repo builds these objects).
const dateTime = z.iso.datetime({ offset: true });

export const user = z.object({
  id: uuid,
  email: z.string(),
  name: z.string(),
  preferences: z.object({ units: z.enum(['metric', 'imperial']), weeklyGoal: z.number().int().nullable() }),
  createdAt: dateTime,
});

const workoutFields = {
  id: uuid,
  userId: uuid,
  kind: z.string(),
  startedAt: dateTime,
  durationSeconds: z.number().int().nullable(),
  createdAt: dateTime,
};

export const workout = z.object({
  ...workoutFields,
  sets: z.array(z.object({ exercise: z.string(), reps: z.number().int(), weightKg: z.number().nullable() })),
});

export const workoutPage = z.object({
  items: z.array(z.object({ ...workoutFields, setCount: z.number().int() })),
  nextCursor: z.string().nullable().describe('Pass as `cursor` for the next page; null on the last page.'),
});

export const summary = z.object({
  userId: uuid,
  workouts: z.number().int(),
  sets: z.number().int(),
  reps: z.number().int(),
  volumeKg: z.number(),
  durationSeconds: z.number().int(),
  firstWorkoutAt: dateTime.nullable(),
  lastWorkoutAt: dateTime.nullable(),
  byKind: z.array(z.object({ kind: z.string(), workouts: z.number().int() })),
});
