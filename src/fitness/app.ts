/**
 * The fitness API as a poolgate application: routes, schema, demo seed, OpenAPI info. Built on
 * the public API only (`../index.js`, what `import … from 'poolgate'` gives); the entries in
 * `entries/` hand it to each runtime.
 */
import { defineApp } from '../index.js';
import { MIGRATIONS } from './migrations.js';
import { fitnessRoutes } from './routes.js';
import { seed } from './seed.js';

export const fitness = defineApp({
  name: 'fitness',
  routes: fitnessRoutes,
  migrations: MIGRATIONS,
  seed,
  openapi: {
    title: 'poolgate fitness API',
    version: '1.0.0',
    description: 'The reference API of poolgate: users, preferences and workouts.',
  },
});

export default fitness;
