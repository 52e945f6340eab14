/**
 * The fitness API's mixed load, as requests to send: single reads (lanes), read batches
 * (GET …/summary), an interactive read (…/workouts/latest), writes and transactions (POST users and
 * workouts, PATCH preferences). Written once for the test that proves the gateway behind PgBouncer
 * (test/helpers/fitness-load.ts, poolers.test.ts) and for the bench that times it (bench/scale.ts);
 * each sends them its own way. Seven users against eight kinds of request, so every user meets
 * every kind.
 */
import { randomUUID } from 'node:crypto';

export interface FitnessCall {
  /** What the request is, for the tallies. */
  kind: string;
  method: 'GET' | 'POST' | 'PATCH';
  /** From the API's root, e.g. `/api/users/<id>`. */
  path: string;
  /** The JSON body, where there is one. */
  body?: unknown;
}

/** How many users the mix spreads its requests over by default. */
export const MIX_USERS = 7;

/** A new user (unique email): how the mix makes its users, and one of its own kinds. */
export const createUserCall = (name = 'Load'): FitnessCall => ({
  kind: 'create-user',
  method: 'POST',
  path: '/api/users',
  body: { email: `load-${randomUUID()}@example.com`, name },
});

/** A workout of `user`'s with one set: the mix's transaction of two tables. */
export const createWorkoutCall = (user: string): FitnessCall => ({
  kind: 'create-workout',
  method: 'POST',
  path: '/api/workouts',
  body: { userId: user, kind: 'run', startedAt: '2026-12-01T07:00:00.000Z', sets: [{ exercise: 'km', reps: 5 }] },
});

const KINDS: readonly ((user: string, workout: string | undefined) => FitnessCall)[] = [
  (user) => ({ kind: 'user', method: 'GET', path: `/api/users/${user}` }),
  (user) => ({ kind: 'summary', method: 'GET', path: `/api/users/${user}/summary` }),
  createWorkoutCall,
  (user) => ({ kind: 'workouts', method: 'GET', path: `/api/users/${user}/workouts?limit=5` }),
  // Until a workout was created, a random id: answered 404, which the mix counts as correct.
  (_user, workout) => ({ kind: 'workout', method: 'GET', path: `/api/workouts/${workout ?? randomUUID()}` }),
  (user) => ({ kind: 'latest', method: 'GET', path: `/api/users/${user}/workouts/latest` }),
  () => createUserCall(),
  (user) => ({ kind: 'preferences', method: 'PATCH', path: `/api/users/${user}/preferences`, body: { weeklyGoal: 3 } }),
];

/**
 * The `i`-th request of the mix: the kinds in turn, the users in turn; `workout` is the last
 * workout a `create-workout` answered with (its `id`), if any yet.
 * @example const call = fitnessCall(i, users, lastWorkout); await fetch(base + call.path, { method: call.method, … });
 */
export function fitnessCall(i: number, users: readonly string[], workout: string | undefined): FitnessCall {
  return KINDS[i % KINDS.length]!(users[i % users.length]!, workout);
}
