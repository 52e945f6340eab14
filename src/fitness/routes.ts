/**
 * The fitness API's route table: every route says once whether it is a `read` or a
 * `transactional` route. The Node gateway runs all of them on the pg Pool; the edge runs the
 * reads on Neon and forwards the transactional ones, signed, to the Node function.
 */
import type { Context } from 'hono';
import * as repo from '../fitness/repo.js';
import { createUserInput, createWorkoutInput, listQuery, patchPreferencesInput, uuid } from '../fitness/schema.js';
import { invalid, parseWith } from './input.js';
import { withBody, type AppEnv, type RouteSpec } from './types.js';

const idParam = (c: Context<AppEnv>, name = 'id'): string => {
  const value = c.req.param(name) ?? '';
  if (!uuid.safeParse(value).success) throw invalid([{ path: name, message: 'must be a UUID' }]);
  return value;
};

export const fitnessRoutes: readonly RouteSpec[] = [
  {
    method: 'POST',
    path: '/api/users',
    kind: 'transactional',
    ...withBody(createUserInput, async (_c, db, input) => ({ status: 201, body: await repo.createUser(db, input) })),
  },
  {
    method: 'GET',
    path: '/api/users/:id',
    kind: 'read',
    run: async (c, db) => ({ status: 200, body: await repo.getUser(db, idParam(c)) }),
  },
  {
    method: 'PATCH',
    path: '/api/users/:id/preferences',
    kind: 'transactional',
    ...withBody(patchPreferencesInput, async (c, db, input) => ({ status: 200, body: await repo.patchPreferences(db, idParam(c), input) })),
  },
  {
    method: 'GET',
    path: '/api/users/:id/workouts',
    kind: 'read',
    run: async (c, db) => {
      const id = idParam(c);
      const q = parseWith(listQuery, c.req.query());
      return { status: 200, body: await repo.listWorkouts(db, id, q.limit, q.cursor) };
    },
  },
  {
    method: 'GET',
    path: '/api/users/:id/summary',
    kind: 'read',
    run: async (c, db) => ({ status: 200, body: await repo.summary(db, idParam(c)) }),
  },
  {
    method: 'POST',
    path: '/api/workouts',
    kind: 'transactional',
    ...withBody(createWorkoutInput, async (_c, db, input) => ({ status: 201, body: await repo.createWorkout(db, input) })),
  },
  {
    method: 'GET',
    path: '/api/workouts/:id',
    kind: 'read',
    run: async (c, db) => ({ status: 200, body: await repo.getWorkout(db, idParam(c)) }),
  },
  {
    method: 'DELETE',
    path: '/api/workouts/:id',
    kind: 'transactional',
    run: async (c, db) => {
      await repo.deleteWorkout(db, idParam(c));
      return { status: 204 };
    },
  },
];
