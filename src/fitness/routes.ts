/**
 * The fitness API's route table, on poolgate's public API only: every route says once whether it
 * is a `read` or a `transactional` route, with its input and response schemas. The Node gateway
 * runs all of them on the pg Pool; the edge runs the reads on Neon and forwards the transactional
 * ones, signed, to the Node function.
 */
import { route, type RouteSpec } from '../index.js';
import * as repo from './repo.js';
import * as schema from './schema.js';

const tags = ['fitness'];

export const fitnessRoutes: readonly RouteSpec[] = [
  route({
    method: 'POST',
    path: '/api/users',
    kind: 'transactional',
    summary: 'Create a user (and their preferences).',
    tags,
    body: schema.createUserInput,
    response: { status: 201, body: schema.user },
    errors: [409],
    handler: async ({ db, body }) => ({ status: 201, body: await repo.createUser(db, body) }),
  }),
  route({
    method: 'GET',
    path: '/api/users/:id',
    kind: 'read',
    summary: 'A user with their preferences.',
    tags,
    params: schema.idParams,
    cache: { ttlSeconds: 60, staleWhileRevalidateSeconds: 30, tables: ['users', 'user_preferences'] },
    response: { status: 200, body: schema.user },
    errors: [404],
    handler: async ({ db, params }) => ({ status: 200, body: await repo.getUser(db, params.id) }),
  }),
  route({
    method: 'PATCH',
    path: '/api/users/:id/preferences',
    kind: 'transactional',
    summary: "Change a user's units or weekly goal.",
    tags,
    params: schema.idParams,
    body: schema.patchPreferencesInput,
    response: { status: 200, body: schema.user },
    errors: [404],
    handler: async ({ db, params, body }) => ({ status: 200, body: await repo.patchPreferences(db, params.id, body) }),
  }),
  route({
    method: 'GET',
    path: '/api/users/:id/workouts',
    kind: 'read',
    summary: "A page of a user's workouts, newest first.",
    tags,
    params: schema.idParams,
    query: schema.listQuery,
    response: { status: 200, body: schema.workoutPage },
    errors: [404],
    handler: async ({ db, params, query }) => ({ status: 200, body: await repo.listWorkouts(db, params.id, query.limit, query.cursor) }),
  }),
  route({
    method: 'GET',
    path: '/api/users/:id/summary',
    kind: 'read',
    summary: "Totals over a user's workouts (one snapshot, one round trip).",
    tags,
    params: schema.idParams,
    cache: { ttlSeconds: 60, staleWhileRevalidateSeconds: 30, tables: ['users', 'workouts', 'workout_sets'] },
    response: { status: 200, body: schema.summary },
    errors: [404],
    handler: async ({ db, params }) => ({ status: 200, body: await repo.summary(db, params.id) }),
  }),
  route({
    method: 'GET',
    path: '/api/users/:id/workouts/latest',
    kind: 'read',
    summary: "A user's latest workout with its sets (an interactive read: at the edge, a WebSocket session).",
    tags,
    params: schema.idParams,
    response: { status: 200, body: schema.workout },
    errors: [404],
    handler: async ({ db, params }) => ({ status: 200, body: await repo.latestWorkout(db, params.id) }),
  }),
  route({
    method: 'POST',
    path: '/api/workouts',
    kind: 'transactional',
    summary: 'Record a workout with its sets.',
    tags,
    body: schema.createWorkoutInput,
    response: { status: 201, body: schema.workout },
    errors: [404],
    handler: async ({ db, body }) => ({ status: 201, body: await repo.createWorkout(db, body) }),
  }),
  route({
    method: 'GET',
    path: '/api/workouts/:id',
    kind: 'read',
    summary: 'A workout with its sets.',
    tags,
    params: schema.idParams,
    response: { status: 200, body: schema.workout },
    errors: [404],
    handler: async ({ db, params }) => ({ status: 200, body: await repo.getWorkout(db, params.id) }),
  }),
  route({
    method: 'DELETE',
    path: '/api/workouts/:id',
    kind: 'transactional',
    summary: 'Delete a workout.',
    tags,
    params: schema.idParams,
    response: { status: 204 },
    errors: [404],
    handler: async ({ db, params }) => {
      await repo.deleteWorkout(db, params.id);
      return { status: 204 };
    },
  }),
];
