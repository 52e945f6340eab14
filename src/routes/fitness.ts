/**
 * The fitness API's route table: every route says once whether it is a `read` or a
 * `transactional` route. The Node gateway runs all of them on the pg Pool; the edge runs the
 * reads on Neon and forwards the transactional ones, signed, to the Node function.
 */
import type { Context } from 'hono';
import * as repo from '../fitness/repo.js';
import { createUserInput, createWorkoutInput, listQuery, patchPreferencesInput, uuid } from '../fitness/schema.js';
import type { ConnStatsVariables } from '../middleware/conn-stats.js';
import { invalid, jsonBody, parseWith } from './input.js';

export type RouteKind = 'read' | 'transactional';

export interface AppEnv {
  Variables: ConnStatsVariables & { bodyLimitBytes: number };
}

export interface RouteSpec {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  path: string;
  kind: RouteKind;
  handler: (c: Context<AppEnv>) => Promise<Response>;
}

const idParam = (c: Context<AppEnv>, name = 'id'): string => {
  const value = c.req.param(name) ?? '';
  if (!uuid.safeParse(value).success) throw invalid([{ path: name, message: 'must be a UUID' }]);
  return value;
};

const body = <S extends Parameters<typeof parseWith>[0]>(c: Context<AppEnv>, schema: S) => jsonBody(c, schema, c.get('bodyLimitBytes'));

export const fitnessRoutes: readonly RouteSpec[] = [
  {
    method: 'POST',
    path: '/api/users',
    kind: 'transactional',
    handler: async (c) => c.json(await repo.createUser(c.get('db'), await body(c, createUserInput)), 201),
  },
  {
    method: 'GET',
    path: '/api/users/:id',
    kind: 'read',
    handler: async (c) => c.json(await repo.getUser(c.get('db'), idParam(c))),
  },
  {
    method: 'PATCH',
    path: '/api/users/:id/preferences',
    kind: 'transactional',
    handler: async (c) => {
      const id = idParam(c);
      return c.json(await repo.patchPreferences(c.get('db'), id, await body(c, patchPreferencesInput)));
    },
  },
  {
    method: 'GET',
    path: '/api/users/:id/workouts',
    kind: 'read',
    handler: async (c) => {
      const id = idParam(c);
      const q = parseWith(listQuery, c.req.query());
      return c.json(await repo.listWorkouts(c.get('db'), id, q.limit, q.cursor));
    },
  },
  {
    method: 'GET',
    path: '/api/users/:id/summary',
    kind: 'read',
    handler: async (c) => c.json(await repo.summary(c.get('db'), idParam(c))),
  },
  {
    method: 'POST',
    path: '/api/workouts',
    kind: 'transactional',
    handler: async (c) => c.json(await repo.createWorkout(c.get('db'), await body(c, createWorkoutInput)), 201),
  },
  {
    method: 'GET',
    path: '/api/workouts/:id',
    kind: 'read',
    handler: async (c) => c.json(await repo.getWorkout(c.get('db'), idParam(c))),
  },
  {
    method: 'DELETE',
    path: '/api/workouts/:id',
    kind: 'transactional',
    handler: async (c) => {
      await repo.deleteWorkout(c.get('db'), idParam(c));
      return c.body(null, 204);
    },
  },
];
