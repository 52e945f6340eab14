/**
 * The fitness app plus one read route that waits on the server (`SELECT pg_sleep`), for
 * bench/mixed.ts: waiting, not CPU, as a slow report query would. Bench only; the gateway child
 * loads it through TargetConfig.appModule. The same route as test/node/mixed-latency.test.ts.
 */
import { z } from 'zod';
import { fitness } from '../src/fitness/app.js';
import { defineApp, route } from '../src/index.js';

export const SLOW_PATH = '/api/bench/slow';

const slowRead = route({
  method: 'GET',
  path: SLOW_PATH,
  kind: 'read',
  summary: 'A read that waits on the server (bench only).',
  query: z.object({ ms: z.coerce.number().int().min(0).max(1_000) }),
  response: { status: 200, body: z.object({ ok: z.boolean() }) },
  handler: async ({ db, query }) => {
    await db.query('SELECT pg_sleep($1::float8 / 1000)', [query.ms]);
    return { status: 200, body: { ok: true } };
  },
});

export const app = defineApp({ ...fitness, routes: [...fitness.routes, slowRead] });
