/**
 * A one-table app for the read cache's race tests: `GET /items/:id` (cached on `items` for 300 s)
 * awaits `afterRead()` between its query and its answer, so a test can hold a load right there;
 * `PUT /items/:id` writes in a transaction; `POST /items/:id/fail-after-commit` writes, commits,
 * then fails. Rows 1 ('old') and 2 ('other') to begin with.
 */
import { z } from 'zod';
import { defineApp, route } from '../../src/index.js';

const byId = z.object({ id: z.coerce.number().int() });
const value = z.object({ v: z.string() });

export const itemsApp = (name: string, afterRead: () => Promise<void>) =>
  defineApp({
    name,
    migrations: [
      {
        id: 1,
        name: 'items',
        sql: `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL); INSERT INTO items VALUES (1, 'old'), (2, 'other')`,
      },
    ],
    routes: [
      route({
        method: 'GET',
        path: '/items/:id',
        kind: 'read',
        params: byId,
        cache: { ttlSeconds: 300, tables: ['items'] },
        handler: async ({ db, params }) => {
          const { rows } = await db.query<{ v: string }>('SELECT v FROM items WHERE id = $1', [params.id]);
          await afterRead();
          return { status: 200, body: { v: rows[0]?.v } };
        },
      }),
      route({
        method: 'PUT',
        path: '/items/:id',
        kind: 'transactional',
        params: byId,
        body: value,
        handler: async ({ db, params, body }) => {
          await db.transaction((tx) => tx.query('UPDATE items SET v = $2 WHERE id = $1', [params.id, body.v]));
          return { status: 200, body: { ok: true } };
        },
      }),
      route({
        method: 'POST',
        path: '/items/:id/fail-after-commit',
        kind: 'transactional',
        params: byId,
        body: value,
        handler: async ({ db, params, body }) => {
          await db.transaction((tx) => tx.query('UPDATE items SET v = $2 WHERE id = $1', [params.id, body.v]));
          throw new Error('the route fails after its COMMIT');
        },
      }),
    ],
  });
