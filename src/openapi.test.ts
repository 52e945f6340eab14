/** The OpenAPI document: valid OpenAPI 3.1 (checked by a real validator), and it says what poolgate answers. */
import { Validator } from '@seriousme/openapi-schema-validator';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { openApiDocument, type JsonObject } from './openapi.js';
import { fitnessRoutes } from './fitness/routes.js';
import type { RouteSpec } from './routes/types.js';

const INFO = { title: 'Test API', version: '1.2.3' };
const run: RouteSpec['run'] = () => Promise.resolve({ status: 200, body: {} });

const note = z.object({ id: z.uuid(), text: z.string().max(500), createdAt: z.iso.datetime() });

const ROUTES: readonly RouteSpec[] = [
  {
    method: 'GET',
    path: '/api/notebooks/:notebookId/notes',
    kind: 'read',
    params: z.object({ notebookId: z.uuid() }),
    query: z.object({ limit: z.coerce.number().int().min(1).max(100).default(20), q: z.string().optional(), tag: z.string() }),
    response: { status: 200, body: z.object({ items: z.array(note), cursor: z.string().nullable() }) },
    errors: [404],
    summary: 'List notes',
    tags: ['notes'],
    run,
  },
  {
    method: 'POST',
    path: '/api/notebooks/:notebookId/notes',
    kind: 'transactional',
    body: z.strictObject({ text: z.string().min(1).max(500), when: z.date().optional() }),
    response: { status: 201, body: note, description: 'The new note.' },
    errors: [404, 409],
    run,
  },
  {
    method: 'DELETE',
    path: '/api/notes/:id',
    kind: 'transactional',
    params: z.object({ id: z.uuid() }),
    response: { status: 204 },
    errors: [404],
    run,
  },
  { method: 'GET', path: '/api/ping', kind: 'read', run },
];

async function validate(document: unknown): Promise<{ valid: boolean; errors?: unknown }> {
  const validator = new Validator();
  return validator.validate(structuredClone(document) as Record<string, unknown>);
}

const doc = openApiDocument(ROUTES, INFO, { servers: [{ url: 'https://api.example.com' }] });
const op = (path: string, method: string): any => doc.paths[path]?.[method];
// Integer-like keys come first in any JS object; sorted, '2XX' reads between '204' and '400'.
const statuses = (path: string, method: string): string[] => Object.keys(op(path, method).responses).sort();

describe('openApiDocument', () => {
  it('is a valid OpenAPI 3.1 document (its references resolve: the validator checks them)', async () => {
    const result = await validate(doc);
    expect(result.errors).toBeUndefined();
    expect(result.valid).toBe(true);
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.servers).toEqual([{ url: 'https://api.example.com' }]);
  });

  it('converts Hono paths and lists path parameters as required, with their schema', () => {
    expect(Object.keys(doc.paths)).toEqual(['/api/notebooks/{notebookId}/notes', '/api/notes/{id}', '/api/ping']);
    const [param] = op('/api/notebooks/{notebookId}/notes', 'get').parameters;
    expect(param).toMatchObject({ name: 'notebookId', in: 'path', required: true, schema: { type: 'string', format: 'uuid' } });
    // No params schema: still a required path parameter, a string.
    expect(op('/api/notebooks/{notebookId}/notes', 'post').parameters[0]).toEqual({
      name: 'notebookId',
      in: 'path',
      required: true,
      schema: { type: 'string' },
    });
  });

  it('lists query parameters, required unless optional or defaulted', () => {
    const query = op('/api/notebooks/{notebookId}/notes', 'get').parameters.filter((p: JsonObject) => p.in === 'query');
    expect(query.map((p: JsonObject) => [p.name, p.required])).toEqual([
      ['limit', false],
      ['q', false],
      ['tag', true],
    ]);
    expect(query[0].schema).toMatchObject({ type: 'integer', minimum: 1, maximum: 100, default: 20 });
  });

  it('describes the body and the success response, with Server-Timing', () => {
    const create = op('/api/notebooks/{notebookId}/notes', 'post');
    expect(create.requestBody.required).toBe(true);
    expect(create.requestBody.content['application/json'].schema).toMatchObject({ type: 'object', required: ['text'] });
    // Unrepresentable in JSON Schema (a Date): any value, not a crash.
    expect(create.requestBody.content['application/json'].schema.properties.when).toEqual({});
    const created = create.responses['201'];
    expect(created.description).toBe('The new note.');
    expect(created.content['application/json'].schema).toMatchObject({ type: 'object', required: ['id', 'text', 'createdAt'] });
    expect(created.headers['Server-Timing']).toEqual({ $ref: '#/components/headers/ServerTiming' });
  });

  it('answers 204 without content, and a route without a response schema with 2XX', () => {
    const deleted = op('/api/notes/{id}', 'delete').responses['204'];
    expect(deleted.content).toBeUndefined();
    expect(deleted.headers['Server-Timing']).toBeDefined();
    expect(op('/api/ping', 'get').responses['2XX'].content).toBeUndefined();
  });

  it('lists the errors poolgate adds and those the route declares', () => {
    expect(statuses('/api/ping', 'get')).toEqual(['2XX', '500', '503', '504']);
    expect(statuses('/api/notebooks/{notebookId}/notes', 'get')).toEqual(['200', '400', '404', '500', '503', '504']);
    expect(statuses('/api/notebooks/{notebookId}/notes', 'post')).toEqual([
      '201',
      '400',
      '404',
      '409',
      '413',
      '415',
      '422',
      '500',
      '503',
      '504',
    ]);
    expect(statuses('/api/notes/{id}', 'delete')).toEqual(['204', '400', '404', '409', '413', '422', '500', '503', '504']);
    expect(op('/api/ping', 'get').responses['503']).toEqual({ $ref: '#/components/responses/Unavailable' });
    expect(doc.components.responses.Unavailable?.headers).toEqual({ 'Retry-After': { $ref: '#/components/headers/RetryAfter' } });
  });

  it('describes every error with the one Error schema, its codes an enum', () => {
    for (const response of Object.values(doc.components.responses)) {
      expect(response).toMatchObject({
        description: expect.any(String),
        content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
      });
    }
    const error = doc.components.schemas.Error as any;
    expect(error.required).toEqual(['error']);
    expect(error.properties.error.required).toEqual(['code', 'message', 'requestId']);
    expect(error.properties.error.properties.code.enum).toEqual(
      expect.arrayContaining(['validation_failed', 'idempotency_key_reused', 'timeout']),
    );
    expect(error.properties.error.properties.code.enum).not.toContain('client_closed');
  });

  it('offers the Idempotency-Key header on transactional routes only', () => {
    const key = { $ref: '#/components/parameters/IdempotencyKey' };
    expect(op('/api/notebooks/{notebookId}/notes', 'post').parameters).toContainEqual(key);
    expect(op('/api/notes/{id}', 'delete').parameters).toContainEqual(key);
    expect(op('/api/notebooks/{notebookId}/notes', 'get').parameters).not.toContainEqual(key);
    expect(op('/api/ping', 'get').parameters).not.toContainEqual(key);
    expect(doc.components.parameters.IdempotencyKey).toMatchObject({ name: 'Idempotency-Key', in: 'header', required: false });
    expect(op('/api/notes/{id}', 'delete')['x-poolgate-kind']).toBe('transactional');
    expect(op('/api/ping', 'get')['x-poolgate-kind']).toBe('read');
  });

  it('offers the Poolgate-Consistency token on read routes, and returns it from transactional ones', () => {
    const token = { $ref: '#/components/parameters/ConsistencyToken' };
    expect(op('/api/ping', 'get').parameters).toEqual([token]);
    expect(op('/api/notebooks/{notebookId}/notes', 'get').parameters).toContainEqual(token);
    expect(op('/api/notebooks/{notebookId}/notes', 'post').parameters).not.toContainEqual(token);
    expect(doc.components.parameters.ConsistencyToken).toMatchObject({ name: 'Poolgate-Consistency', in: 'header', required: false });
    const created = Object.values(op('/api/notebooks/{notebookId}/notes', 'post').responses)[0] as { headers: Record<string, unknown> };
    expect(created.headers['Poolgate-Consistency']).toEqual({ $ref: '#/components/headers/ConsistencyToken' });
  });

  it('documents Cache-Status on cached routes only, and only when some route is cached', async () => {
    const fitness = openApiDocument(fitnessRoutes, INFO) as any;
    const ok = (path: string) => (fitness.paths[path].get.responses['200'] as { headers: Record<string, unknown> }).headers;
    expect(ok('/api/users/{id}')['Cache-Status']).toEqual({ $ref: '#/components/headers/CacheStatus' });
    expect(ok('/api/users/{id}/workouts')['Cache-Status']).toBeUndefined();
    expect(fitness.components.headers.CacheStatus).toMatchObject({ schema: { type: 'string' } });
    expect(doc.components.headers.CacheStatus).toBeUndefined();
    expect((await validate(fitness)).valid).toBe(true);
  });

  it('gives each operation a unique operationId derived from method and path', () => {
    const ids = Object.values(doc.paths).flatMap((item) => Object.values(item).map((o) => o.operationId));
    expect(ids).toEqual(['getApiNotebooksByNotebookIdNotes', 'postApiNotebooksByNotebookIdNotes', 'deleteApiNotesById', 'getApiPing']);
    // Two paths that read the same get a suffix, in route-table order.
    const clash = openApiDocument(
      [
        { method: 'GET', path: '/api/user-stats', kind: 'read', run },
        { method: 'GET', path: '/api/user_stats', kind: 'read', run },
      ],
      INFO,
    );
    expect(Object.values(clash.paths).map((item) => item.get?.operationId)).toEqual(['getApiUserStats', 'getApiUserStats_2']);
  });

  it('gives the same JSON for the same input', () => {
    expect(JSON.stringify(openApiDocument(ROUTES, INFO, { servers: [{ url: 'https://api.example.com' }] }))).toBe(JSON.stringify(doc));
  });

  it('refuses a route declared twice', () => {
    expect(() => openApiDocument([ROUTES[3]!, ROUTES[3]!], INFO)).toThrow('GET /api/ping is declared twice');
  });

  it('moves reused ids and recursive schemas to components, where their references resolve', async () => {
    const tag = z.object({ name: z.string() }).meta({ id: 'Tag' });
    const tree: z.ZodType = z.lazy(() => z.object({ name: z.string(), children: z.array(tree) }));
    const routes: RouteSpec[] = [
      { method: 'GET', path: '/tags', kind: 'read', response: { status: 200, body: z.array(tag) }, run },
      { method: 'GET', path: '/tags/:name', kind: 'read', response: { status: 200, body: tag }, run },
      { method: 'GET', path: '/tree', kind: 'read', response: { status: 200, body: tree }, run },
    ];
    const document = openApiDocument(routes, INFO);
    expect(Object.keys(document.components.schemas)).toEqual(['Error', 'Tag', 'GetTreeResponse']);
    expect((document.paths['/tags/{name}']?.get as any).responses['200'].content['application/json'].schema).toEqual({
      $ref: '#/components/schemas/Tag',
    });
    expect((await validate(document)).valid).toBe(true);
  });

  it('names a component after its route when its id stands for two different schemas', async () => {
    // A default makes a field optional in a request and always present in a response.
    const label = z.object({ name: z.string(), color: z.string().default('grey') }).meta({ id: 'Label' });
    const routes: RouteSpec[] = [
      { method: 'POST', path: '/labels', kind: 'transactional', body: label, response: { status: 201, body: label }, run },
    ];
    const document = openApiDocument(routes, INFO);
    expect(Object.keys(document.components.schemas)).toEqual(['Error', 'Label', 'PostLabelsResponse_Label']);
    expect(document.components.schemas.Label?.required).toEqual(['name']);
    expect(document.components.schemas.PostLabelsResponse_Label?.required).toEqual(['name', 'color']);
    expect((await validate(document)).valid).toBe(true);
  });

  it('is checked by a validator that rejects a broken document', async () => {
    const pathParamNotRequired = structuredClone(doc) as any;
    pathParamNotRequired.paths['/api/notes/{id}'].delete.parameters[0].required = false;
    expect((await validate(pathParamNotRequired)).valid).toBe(false);
    const noVersion = { ...doc, info: { title: 'Test API' } };
    expect((await validate(noVersion)).valid).toBe(false);
    const danglingSchemaRef = structuredClone(doc) as any;
    // What a zod `$defs` reference left in place would be: it points at the document's root.
    danglingSchemaRef.paths['/api/notes/{id}'].delete.parameters[0].schema = { $ref: '#/$defs/Tag' };
    expect(await validate(danglingSchemaRef)).toEqual({ valid: false, errors: "Can't resolve #/$defs/Tag" });
  });
});

describe('the fitness API document', () => {
  const fitness = openApiDocument(fitnessRoutes, { title: 'Fitness API', version: '1.0.0' });

  it('is a valid OpenAPI 3.1 document', async () => {
    const result = await validate(fitness);
    expect(result.errors).toBeUndefined();
    expect(result.valid).toBe(true);
  });

  it('has every route of the table', () => {
    for (const route of fitnessRoutes) {
      const path = route.path.replace(/:(\w+)/g, '{$1}');
      expect(fitness.paths[path]?.[route.method.toLowerCase()], `${route.method} ${route.path}`).toBeDefined();
    }
  });
});
