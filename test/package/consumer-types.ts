/**
 * The consumer-side type tests, written into the scratch project as `public-types.ts` and
 * compiled there with the scratch's strict tsconfig against the installed package. It imports
 * every subpath export, uses the public types as a consumer would, and marks what must NOT compile
 * with `@ts-expect-error`: when a public type loosens, tsc reports the directive as unused (TS2578).
 * Kept as a string so the repository's own type-check and lint never see `import … from 'poolgate'`.
 */
export const PUBLIC_TYPES_TS = `// The public types as a consumer meets them. Each \`@ts-expect-error\` must meet an error: if a
// type loosens, tsc reports the directive as unused (TS2578) and the package test fails.
import { z } from 'zod';
import { AppError, defineApp, notFound, openApiDocument, route, type Db, type PoolgateApp, type QueryResult, type RouteSpec } from 'poolgate';
import { runGateway, startGateway } from 'poolgate/node';
import { createWorker } from 'poolgate/workerd';
import { createEdgeFunction } from 'poolgate/netlify-edge';
import { createNodeFunction } from 'poolgate/netlify-function';
import { createNodeClient, executeQuery, executeTransaction, getStats, healthCheck, sql, type HealthReport } from 'poolgate/functions';
import { createEdgeClient } from 'poolgate/edge';
// @ts-expect-error only the package's exports are reachable: its modules are private
import { parseConfig } from 'poolgate/dist/lib/config.js';

export const typed: RouteSpec = route({
  method: 'GET',
  path: '/things/:id',
  kind: 'read',
  params: z.object({ id: z.coerce.number().int() }),
  query: z.object({ q: z.string().optional() }),
  handler: async ({ db, params, query, body }) => {
    const id: number = params.id;
    const q: string | undefined = query.q;
    const database: Db = db;
    const result: QueryResult<{ n: number }> = await database.query<{ n: number }>('SELECT $1::int AS n', [id]);
    // @ts-expect-error no such path parameter
    void params.nope;
    // @ts-expect-error a coerced number is not a string
    const idText: string = params.id;
    // @ts-expect-error no query parameter of that name
    void query.nope;
    // @ts-expect-error no body schema: the body is undefined
    void body.text;
    // @ts-expect-error rows are typed by the query's type argument
    void result.rows[0]?.missing;
    if (!result.rows[0]) throw notFound('Thing', String(id));
    return { status: 200, body: { id, q, n: result.rows[0].n, idText } };
  },
});

export const created = route({
  method: 'POST',
  path: '/things',
  kind: 'transactional',
  body: z.object({ name: z.string() }),
  handler: async ({ db, body }) => {
    const name: string = body.name;
    // @ts-expect-error the body has only the schema's fields
    void body.other;
    await db.transaction(async (tx) => tx.query('INSERT INTO things (name) VALUES ($1)', [name]), { isolation: 'serializable' });
    // @ts-expect-error isolation levels are PostgreSQL's
    await db.transaction(async (tx) => tx.query('SELECT 1'), { isolation: 'snapshot' });
    if (!name) throw new AppError(409, 'conflict', 'That thing exists.');
    return { status: 201, body: { name } };
  },
});

route({
  method: 'GET',
  path: '/x',
  // @ts-expect-error a route is \`read\` or \`transactional\`, nothing else
  kind: 'write',
  handler: async () => ({ status: 200 }),
});

route({
  // @ts-expect-error not a method routes are declared with
  method: 'FETCH',
  path: '/x',
  kind: 'read',
  handler: async () => ({ status: 200 }),
});

route({
  method: 'GET',
  path: '/x',
  kind: 'read',
  // @ts-expect-error a route answers 200, 201 or 204
  handler: async () => ({ status: 302 }),
});

// @ts-expect-error a route needs a handler
route({ method: 'GET', path: '/x', kind: 'read' });

export const app: PoolgateApp = defineApp({
  name: 'things',
  routes: [typed, created],
  migrations: [{ id: 1, name: 'things', sql: 'CREATE TABLE things (name text)' }],
  openapi: { title: 'Things', version: '1.0.0' },
});

defineApp({
  name: 'things',
  routes: [typed],
  // @ts-expect-error a migration's id is a number
  migrations: [{ id: '1', name: 'things', sql: '' }],
});

// @ts-expect-error an app with migrations has a name (they are recorded under it)
defineApp({ routes: [typed], migrations: [{ id: 1, name: 'things', sql: 'CREATE TABLE things (name text)' }] });

// An app without migrations needs no name.
defineApp({ routes: [typed] });

// @ts-expect-error an app has routes
defineApp({ migrations: [] });

export const document: object = openApiDocument([typed, created], { title: 'Things', version: '1.0.0' });
export const worker: { fetch: (request: Request, env: Record<string, string | undefined>, ctx: never) => unknown } = createWorker(app);
export const edgeFunction: (request: Request) => Response | Promise<Response> = createEdgeFunction(app);
export const nodeFunction: (request: Request) => Promise<Response> = createNodeFunction(app);
export const serve: (app: PoolgateApp) => Promise<void> = runGateway;
export const embed = startGateway;
// @ts-expect-error the worker is built from a poolgate app
createWorker({ fetch: () => new Response() });

export async function plainFunctions(): Promise<void> {
  const count = await executeQuery<{ n: number }>('SELECT count(*)::int AS n FROM things', [], 'read');
  const n: number | undefined = count.rows[0]?.n;
  await executeQuery('DELETE FROM things', [], { kind: 'write', timeoutMs: 1_000 });
  // @ts-expect-error the guide's 'query' kind is called 'read' here
  await executeQuery('SELECT 1', [], 'query');
  const inserted: number = await executeTransaction(async (tx) => {
    await tx.query('INSERT INTO things (name) VALUES ($1)', [String(n)]);
    return (await tx.sql<{ one: number }>\`SELECT 1 AS one\`).length;
  });
  // @ts-expect-error a transaction offers query and sql, not commit
  await executeTransaction(async (tx) => tx.commit());
  const rows: { name: string }[] = await sql.read<{ name: string }>\`SELECT name FROM things WHERE name = \${String(inserted)}\`;
  const health: HealthReport = await healthCheck();
  const healthy: boolean = health.healthy;
  const routes: unknown[] = getStats().routes;
  const client = createNodeClient({ connectionString: 'postgres://localhost/things' });
  await client.close();
  const edge = createEdgeClient({ connectionString: 'postgres://localhost/things' });
  const edgeRows: QueryResult = await edge.executeQuery('SELECT 1', [], 'read');
  // @ts-expect-error the edge client needs a connection string
  createEdgeClient({});
  void [rows, healthy, routes, edgeRows, parseConfig];
}
`;
