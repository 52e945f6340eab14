/**
 * The fitness API's OpenAPI document, served by the real Node gateway: it validates against the
 * OpenAPI 3.1 schema, lists exactly the declared routes, and says the truth — every route is
 * called for real, and each answer's status is documented for its operation and its body is
 * exactly what the documented schema describes (no undocumented fields).
 */
import { Validator } from '@seriousme/openapi-schema-validator';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fitnessRoutes } from '../../src/fitness/routes.js';
import type { RouteSpec } from '../../src/index.js';
import { json, startTestGateway, type TestGateway } from '../helpers/gateway.js';

let t: TestGateway;
let doc: { paths: Record<string, Record<string, { responses: Record<string, unknown> }>>; components: any };

beforeAll(async () => {
  t = await startTestGateway();
  const res = await json(`${t.url}/openapi.json`);
  expect(res.status).toBe(200);
  doc = res.body;
}, 60_000);
afterAll(() => t?.stop());

const routeOf = (method: string, path: string): RouteSpec => fitnessRoutes.find((r) => r.method === method && r.path === path)!;
const openApiPath = (path: string) => path.replace(/:(\w+)/g, '{$1}');

/** The answer is documented for its operation, and its body is exactly the documented schema's. */
function expectDocumented(method: string, path: string, res: { status: number; body: unknown }): void {
  const operation = doc.paths[openApiPath(path)]?.[method.toLowerCase()];
  expect(operation, `${method} ${path} in the document`).toBeDefined();
  expect(Object.keys(operation!.responses), `${method} ${path} documents ${res.status}`).toContain(String(res.status));
  const schema = routeOf(method, path).response?.body;
  if (res.status < 300 && schema) expect(schema.parse(res.body)).toEqual(res.body);
}

describe('GET /openapi.json on the Node gateway', () => {
  it('is a valid OpenAPI 3.1 document', async () => {
    const result = await new Validator().validate(structuredClone(doc));
    expect(result.errors).toBeUndefined();
    expect(result.valid).toBe(true);
  });

  it('lists exactly the declared routes', () => {
    const documented = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`));
    expect(documented.sort()).toEqual(fitnessRoutes.map((r) => `${r.method} ${openApiPath(r.path)}`).sort());
  });

  it('documents a query integer as the digits it takes, with its bounds (limit=0x10 is refused)', () => {
    const params = Object.values(doc.paths)
      .flatMap((ops) => Object.values(ops) as { parameters?: { name: string; in: string; schema: Record<string, unknown> }[] }[])
      .flatMap((op) => op.parameters ?? [])
      .filter((p) => p.in === 'query' && p.name === 'limit');
    expect(params.length).toBeGreaterThan(0);
    for (const p of params) {
      expect(p.schema).toMatchObject({ type: 'string', pattern: '^\\d{1,9}$', default: '20' });
      expect(p.schema.description).toBe('A whole number from 1 to 100, in decimal digits (default 20).');
    }
  });

  it('describes what every route really answers', async () => {
    const call = async (method: RouteSpec['method'], path: string, url: string, body?: unknown) => {
      const res = await json(`${t.url}${url}`, { method, ...(body === undefined ? {} : { json: body }) });
      expectDocumented(method, path, res);
      return res;
    };
    const user = await call('POST', '/api/users', '/api/users', {
      email: 'openapi@example.com',
      name: 'Open Api',
      preferences: { units: 'imperial' },
    });
    expect(user.status).toBe(201);
    const id = user.body.id as string;
    expect((await call('GET', '/api/users/:id', `/api/users/${id}`)).status).toBe(200);
    expect((await call('PATCH', '/api/users/:id/preferences', `/api/users/${id}/preferences`, { weeklyGoal: 3 })).status).toBe(200);
    const workout = await call('POST', '/api/workouts', '/api/workouts', {
      userId: id,
      kind: 'run',
      startedAt: '2026-11-29T07:00:00Z',
      sets: [{ exercise: 'stride', reps: 10, weightKg: 0 }],
    });
    expect(workout.status).toBe(201);
    expect((await call('GET', '/api/workouts/:id', `/api/workouts/${workout.body.id}`)).status).toBe(200);
    expect((await call('GET', '/api/users/:id/workouts', `/api/users/${id}/workouts?limit=5`)).status).toBe(200);
    expect((await call('GET', '/api/users/:id/summary', `/api/users/${id}/summary`)).status).toBe(200);
    expect((await call('GET', '/api/users/:id/workouts/latest', `/api/users/${id}/workouts/latest`)).status).toBe(200);
    expect((await call('DELETE', '/api/workouts/:id', `/api/workouts/${workout.body.id}`)).status).toBe(204);
    // Errors: documented statuses, and the documented error codes.
    const codes: string[] = doc.components.schemas.Error.properties.error.properties.code.enum;
    for (const res of [
      await call('GET', '/api/users/:id', '/api/users/00000000-0000-4000-8000-00000000dead'),
      await call('GET', '/api/users/:id', '/api/users/not-a-uuid'),
      await call('GET', '/api/users/:id/workouts', `/api/users/${id}/workouts?limit=0`),
      await call('POST', '/api/users', '/api/users', { email: 'openapi@example.com', name: 'Twice' }),
    ]) {
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(codes).toContain(res.body.error.code);
    }
  });
});
