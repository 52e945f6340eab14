/**
 * The fitness app plus two read routes of the bench's own, whose cost is on the database: one that
 * waits on the server (`SELECT pg_sleep`), as a slow report query would, for bench/mixed.ts and
 * bench/overload.ts (the same route as test/node/mixed-latency.test.ts); and one that spends the
 * server's CPU, an aggregate over a table of a few hundred thousand rows, for bench/replicas.ts
 * (a bench that serves it creates the table first: AGGREGATE_TABLE_SQL). Bench only; the gateway
 * child loads it through TargetConfig.appModule.
 */
import { z } from 'zod';
import { fitness } from '../src/fitness/app.js';
import { defineApp, route } from '../src/index.js';

export const SLOW_PATH = '/api/bench/slow';
export const AGGREGATE_PATH = '/api/bench/aggregate';

/**
 * The aggregate's table: `rows` integers in 1,000 values, written once (a standby gets it by
 * replication) and vacuumed, as a table that has been there a while is: its pages all-visible,
 * whatever autovacuum has done by the time the bench reads it.
 */
export const AGGREGATE_TABLE_SQL = (rows: number): string[] => [
  'CREATE TABLE bench_rows (id int NOT NULL, v int NOT NULL)',
  `INSERT INTO bench_rows SELECT g, (g::bigint * 7919 % 1000)::int FROM generate_series(1, ${Math.trunc(rows)}) AS g`,
  'VACUUM (ANALYZE) bench_rows',
];

/** What the aggregate route runs ($1: the least `v` counted): every row of bench_rows read. */
export const AGGREGATE_SQL = 'SELECT count(*)::int AS rows, coalesce(avg(v), 0)::float8 AS mean FROM bench_rows WHERE v >= $1';

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

const aggregateRead = route({
  method: 'GET',
  path: AGGREGATE_PATH,
  kind: 'read',
  summary: 'A read that spends the server’s CPU: every row of bench_rows counted (bench only).',
  query: z.object({ min: z.coerce.number().int().min(0).max(999).default(0) }),
  response: { status: 200, body: z.object({ rows: z.number(), mean: z.number() }) },
  handler: async ({ db, query }) => {
    const { rows } = await db.query<{ rows: number; mean: number }>(AGGREGATE_SQL, [query.min]);
    return { status: 200, body: rows[0]! };
  },
});

export const app = defineApp({ ...fitness, routes: [...fitness.routes, slowRead, aggregateRead] });
