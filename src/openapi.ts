/**
 * The OpenAPI 3.1 document of a route table, built from the same declarations that serve it, so
 * the document cannot drift from what poolgate answers: each route's zod schemas (as JSON Schema
 * 2020-12, the dialect of OpenAPI 3.1) and the responses poolgate itself adds around every route
 * (400 before any database work, 413/415 for bodies, 409/422 for Idempotency-Keys, 500/503/504).
 * Plain data, built once at start-up; the same route table always gives the same JSON.
 */
import { z } from 'zod';
import type { OpenApiInfo } from './definition.js';
import type { ErrorCode } from './errors.js';
import type { RouteSpec } from './routes/types.js';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export interface OpenApiOptions {
  /** Where the API is served; omitted, clients resolve paths against the document's own URL. */
  servers?: { url: string }[];
}

export interface OpenApiDocument {
  openapi: '3.1.0';
  info: OpenApiInfo;
  servers?: { url: string }[];
  /** OpenAPI path (`/api/users/{id}`) → lower-case method → Operation Object. */
  paths: Record<string, Record<string, JsonObject>>;
  components: {
    schemas: Record<string, JsonObject>;
    responses: Record<string, JsonObject>;
    parameters: Record<string, JsonObject>;
    headers: Record<string, JsonObject>;
  };
}

type Io = 'input' | 'output';
type Schemas = Record<string, JsonObject>;

/** Every code a client can see (`client_closed` is only logged: its client is gone). */
const ERROR_CODES = [
  'validation_failed',
  'invalid_json',
  'not_found',
  'route_not_found',
  'method_not_allowed',
  'conflict',
  'idempotency_in_progress',
  'idempotency_key_reused',
  'circuit_open',
  'payload_too_large',
  'unsupported_media_type',
  'pool_exhausted',
  'overloaded',
  'database_unavailable',
  'shutting_down',
  'timeout',
  'unauthorized',
  'upstream_unavailable',
  'upstream_timeout',
  'statement_refused',
  'result_too_large',
  'invalid_consistency_token',
  'internal',
] as const satisfies readonly ErrorCode[];
// A code added to ErrorCode but not listed above fails the typecheck here, naming the code.
type Unlisted = Exclude<ErrorCode, (typeof ERROR_CODES)[number] | 'client_closed'>;
const _everyCodeListed: [Unlisted] extends [never] ? true : Unlisted = true;

interface ErrorResponse {
  name: string;
  description: string;
  retryAfter?: boolean;
}

/** The error responses by status; a declared status not listed here gets a generic one. */
const ERROR_RESPONSES: Record<number, ErrorResponse> = {
  400: {
    name: 'BadRequest',
    description:
      'Invalid params, query, body, Idempotency-Key or Poolgate-Consistency token (`validation_failed`, `invalid_json`, `invalid_consistency_token`).',
  },
  401: { name: 'Unauthorized', description: 'Not authorized (`unauthorized`).' },
  403: { name: 'Forbidden', description: 'Not allowed.' },
  404: { name: 'NotFound', description: 'Not found (`not_found`).' },
  409: {
    name: 'Conflict',
    description: 'A conflict (`conflict`), or a request with the same Idempotency-Key is still running (`idempotency_in_progress`; retry).',
    retryAfter: true,
  },
  413: { name: 'PayloadTooLarge', description: 'The request body exceeds the size limit (`payload_too_large`).' },
  415: { name: 'UnsupportedMediaType', description: 'The request body is not `application/json` (`unsupported_media_type`).' },
  422: { name: 'IdempotencyKeyReused', description: 'This Idempotency-Key was used for a different request (`idempotency_key_reused`).' },
  500: {
    name: 'InternalError',
    description:
      'Something went wrong on our side (`internal`), or the route sent a statement poolgate refuses (`statement_refused`) or whose result passed RESULT_MAX_ROWS/RESULT_MAX_BYTES (`result_too_large`).',
  },
  503: {
    name: 'Unavailable',
    description:
      'Temporarily unavailable: no connection free, overloaded, database or upstream unavailable, or shutting down. Retry after `Retry-After` seconds.',
    retryAfter: true,
  },
  504: {
    name: 'Timeout',
    description:
      'Out of time: the database work was cancelled (`timeout`), or the outcome is unknown (`upstream_timeout`; retry with the same Idempotency-Key).',
  },
};

const SUCCESS_TEXT = { 200: 'OK.', 201: 'Created.', 204: 'No content.' } as const;

const ref = (section: string, name: string): JsonObject => ({ $ref: `#/components/${section}/${name}` });

function errorSchema(): JsonObject {
  const text = (description: string): JsonObject => ({ type: 'string', description });
  const field = { type: 'object', required: ['path', 'message'], properties: { path: { type: 'string' }, message: { type: 'string' } } };
  return {
    type: 'object',
    required: ['error'],
    properties: {
      error: {
        type: 'object',
        required: ['code', 'message', 'requestId'],
        properties: {
          code: { type: 'string', enum: [...ERROR_CODES], description: 'Stable: branch on it, not on the message.' },
          message: text('A sentence for people.'),
          requestId: text('The X-Request-Id of the request, as in the server logs.'),
          fields: { type: 'array', items: field, description: 'With `validation_failed`: which inputs were refused, and why.' },
        },
      },
    },
  };
}

function headerComponents(transactional: boolean, cached: boolean): Schemas {
  const header = (description: string, schema: JsonObject): JsonObject => ({ description, schema });
  return {
    ServerTiming: header('Where the time went: `acquire` (waiting for a connection), `db` (statements), `total`.', { type: 'string' }),
    RequestId: header("The request's id, as in the server logs (the client's own X-Request-Id when it sent a valid one).", {
      type: 'string',
    }),
    RetryAfter: header('Seconds to wait before trying again.', { type: 'integer', minimum: 0 }),
    ...(cached && {
      CacheStatus: header(
        'What the read cache did (RFC 9211): `poolgate; hit; ttl=42`, `poolgate; fwd=miss; fwd-status=200; stored`, `poolgate; fwd=stale; …` (an entry a write outdated), `poolgate; fwd=bypass` (credentials the route does not vary by).',
        { type: 'string' },
      ),
    }),
    ...(transactional && {
      IdempotentReplayed: header('`true` when this is the stored response to an earlier request with the same Idempotency-Key.', {
        type: 'string',
        enum: ['true'],
      }),
      ConsistencyToken: header(
        "Where there are read replicas or cached routes: the primary's WAL position after this write (`lsn=16/B374D848`). Send it back on reads as Poolgate-Consistency to read this write, from a replica or the cache.",
        { type: 'string' },
      ),
    }),
  };
}

function idempotencyKeyParameter(): JsonObject {
  return {
    name: 'Idempotency-Key',
    in: 'header',
    required: false,
    description:
      'Makes a retry safe: a request with the same key and the same content gets the stored response without being applied again. Scoped to the route; 1 to 255 visible ASCII characters.',
    schema: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[!-~]+$' },
  };
}

/** The consistency token a read carries (db/consistency.ts): served only where the write it names is seen. */
function consistencyParameter(): JsonObject {
  return {
    name: 'Poolgate-Consistency',
    in: 'header',
    required: false,
    description:
      'Read-your-writes: the value a transactional response returned in its Poolgate-Consistency header, sent back unchanged. The read is served only by a server that has that write (a replica that replayed past it, or the primary). Malformed: 400 `invalid_consistency_token`.',
    schema: { type: 'string', maxLength: 512 },
  };
}

function errorResponseComponent(status: number): [string, JsonObject] {
  const known = ERROR_RESPONSES[status] ?? { name: `Error${status}`, description: `Error (HTTP ${status}).` };
  const response: JsonObject = {
    description: known.description,
    ...(known.retryAfter && { headers: { 'Retry-After': ref('headers', 'RetryAfter') } }),
    content: { 'application/json': { schema: ref('schemas', 'Error') } },
  };
  return [known.name, response];
}

const errorResponseName = (status: number): string => ERROR_RESPONSES[status]?.name ?? `Error${status}`;

/** The error statuses of a route: those poolgate adds around it, and those it declares. */
function errorStatuses(route: RouteSpec): number[] {
  const transactional = route.kind === 'transactional';
  const statuses = new Set([...(route.errors ?? []), 500, 503, 504]);
  // An invalid Idempotency-Key is a 400 too; any method but GET has its body read (size-capped).
  if (route.params || route.query || route.body || transactional) statuses.add(400);
  if (route.method !== 'GET') statuses.add(413);
  if (route.body) statuses.add(415);
  if (transactional) [409, 422].forEach((status) => statuses.add(status));
  return [...statuses].sort((a, b) => a - b);
}

/** How a conversion's local definitions (`#/$defs/…`, and `#`: the root itself) are named in components.schemas. */
type Naming = (ref: string) => string;

const namingFor =
  (context: string, useIds: boolean): Naming =>
  (pointer) => {
    if (pointer === '#') return context;
    const key = pointer.slice('#/$defs/'.length);
    const name = key.replace(/^__/, '').replace(/[^\w.-]/g, '_');
    // `__schema0` is zod's name for a cycle without an id: only the route can name it.
    return useIds && !key.startsWith('__') ? name : `${context}_${name}`;
  };

/** Walks a JSON value, pointing each reference to a local definition at its component. */
function rewriteRefs(value: JsonValue, local: Map<string, JsonObject>, name: Naming): JsonValue {
  if (Array.isArray(value)) return value.map((item) => rewriteRefs(item, local, name));
  if (value === null || typeof value !== 'object') return value;
  const entries = Object.entries(value).map(([key, item]) =>
    key === '$ref' && typeof item === 'string' && local.has(item)
      ? [key, `#/components/schemas/${name(item)}`]
      : [key, rewriteRefs(item, local, name)],
  );
  return Object.fromEntries(entries) as JsonObject;
}

const hasRef = (value: JsonValue, target: string): boolean =>
  Array.isArray(value)
    ? value.some((item) => hasRef(item, target))
    : value !== null &&
      typeof value === 'object' &&
      Object.entries(value).some(([k, v]) => (k === '$ref' && v === target) || hasRef(v, target));

/**
 * Moves a conversion's local definitions to components.schemas, under their own ids (zod's
 * `.meta({ id })`) when each is new there or the same schema again, else all named after `context`
 * (a default, say, makes an id's request and response schemas differ).
 */
function placeDefinitions(local: Map<string, JsonObject>, context: string, schemas: Schemas): Naming {
  const byId = namingFor(context, true);
  const fits = [...local].every(([pointer, def]) => {
    const existing = schemas[byId(pointer)];
    return existing === undefined || JSON.stringify(existing) === JSON.stringify(rewriteRefs(def, local, byId));
  });
  const name = fits ? byId : namingFor(context, false);
  for (const [pointer, def] of local) schemas[name(pointer)] = rewriteRefs(def, local, name) as JsonObject;
  return name;
}

/**
 * A zod schema as JSON Schema 2020-12 inside this document. Its `$defs` (reused ids, cycles) move
 * to components.schemas: left in place, a `#/$defs/…` or `#` reference would point at the document's root.
 */
function jsonSchema(schema: z.ZodType, io: Io, context: string, schemas: Schemas): JsonObject {
  const converted = z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as JsonObject;
  const { $schema: _dialect, $defs = {}, ...root } = converted;
  const local = new Map(Object.entries($defs as Schemas).map(([key, def]) => [`#/$defs/${key}`, def]));
  if (hasRef(root, '#')) local.set('#', root);
  if (local.size === 0) return root;
  const name = placeDefinitions(local, context, schemas);
  return local.has('#') ? ref('schemas', context) : (rewriteRefs(root, local, name) as JsonObject);
}

/** An object schema's properties and required names (none when it is not a plain object). */
function objectParts(schema: z.ZodType, context: string, schemas: Schemas): { properties: Schemas; required: string[] } {
  let json = jsonSchema(schema, 'input', context, schemas);
  if (typeof json.$ref === 'string') json = schemas[json.$ref.slice('#/components/schemas/'.length)] ?? {};
  const properties = (json.properties ?? {}) as Schemas;
  const required = Array.isArray(json.required) ? json.required.filter((name) => typeof name === 'string') : [];
  return { properties, required };
}

/** Hono's `/users/:id` (or `:id{[0-9]+}`) as OpenAPI's `/users/{id}`. */
const openApiPath = (path: string): string => path.replace(/:(\w+)(\{[^}]*\})?/g, '{$1}');
const pathParamNames = (path: string): string[] => [...path.matchAll(/:(\w+)/g)].map((m) => m[1] ?? '');

const pascal = (text: string): string =>
  text
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((word) => word.charAt(0).toUpperCase() + word.slice(1))
    .join('');

/** `GET /api/users/:id/workouts` → `getApiUsersByIdWorkouts`; `_2`, `_3`… on a clash. */
function operationId(route: RouteSpec, taken: Set<string>): string {
  const words = route.path.split('/').map((segment) => (segment.startsWith(':') ? `By${pascal(segment.slice(1))}` : pascal(segment)));
  const base = route.method.toLowerCase() + words.join('');
  let id = base;
  for (let n = 2; taken.has(id); n++) id = `${base}_${n}`;
  taken.add(id);
  return id;
}

function parameters(route: RouteSpec, context: string, schemas: Schemas): JsonObject[] {
  const path = route.params ? objectParts(route.params, `${context}Params`, schemas).properties : {};
  const query = route.query ? objectParts(route.query, `${context}Query`, schemas) : { properties: {}, required: [] };
  return [
    ...pathParamNames(route.path).map((name) => ({ name, in: 'path', required: true, schema: path[name] ?? { type: 'string' } })),
    ...Object.entries(query.properties).map(([name, schema]) => ({ name, in: 'query', required: query.required.includes(name), schema })),
    ...(route.kind === 'transactional' ? [ref('parameters', 'IdempotencyKey')] : [ref('parameters', 'ConsistencyToken')]),
  ];
}

function successResponse(route: RouteSpec, context: string, schemas: Schemas): [string, JsonObject] {
  const headers: JsonObject = {
    'Server-Timing': ref('headers', 'ServerTiming'),
    'X-Request-Id': ref('headers', 'RequestId'),
    ...(route.cache && { 'Cache-Status': ref('headers', 'CacheStatus') }),
    ...(route.kind === 'transactional' && {
      'Idempotent-Replayed': ref('headers', 'IdempotentReplayed'),
      'Poolgate-Consistency': ref('headers', 'ConsistencyToken'),
    }),
  };
  const declared = route.response;
  if (!declared) return ['2XX', { description: 'Success (the route declares no response).', headers }];
  const description = declared.description ?? SUCCESS_TEXT[declared.status];
  if (declared.status === 204) return ['204', { description, headers }];
  const schema = declared.body ? jsonSchema(declared.body, 'output', `${context}Response`, schemas) : {};
  return [String(declared.status), { description, headers, content: { 'application/json': { schema } } }];
}

function operation(route: RouteSpec, id: string, schemas: Schemas): JsonObject {
  const context = pascal(id);
  const params = parameters(route, context, schemas);
  const errors = errorStatuses(route).map((status): [string, JsonObject] => [String(status), ref('responses', errorResponseName(status))]);
  return {
    operationId: id,
    ...(route.summary !== undefined && { summary: route.summary }),
    ...(route.tags && { tags: [...route.tags] }),
    ...(params.length > 0 && { parameters: params }),
    ...(route.body && {
      requestBody: {
        required: true,
        content: { 'application/json': { schema: jsonSchema(route.body, 'input', `${context}Body`, schemas) } },
      },
    }),
    responses: Object.fromEntries([successResponse(route, context, schemas), ...errors]),
    'x-poolgate-kind': route.kind,
  };
}

/**
 * The OpenAPI 3.1 document of `routes`: paths, parameters, bodies and responses from each route's
 * declaration, the errors poolgate adds around it, and one `Error` schema for all of them.
 * Deterministic: the same routes, info and options give the same JSON. Throws when two routes
 * declare the same method and path.
 * @example
 * const doc = openApiDocument(routes, { title: 'Notes API', version: '1.0.0' }, { servers: [{ url: 'https://api.example.com' }] });
 * app.get('/openapi.json', (c) => c.json(doc));
 */
export function openApiDocument(routes: readonly RouteSpec[], info: OpenApiInfo, options: OpenApiOptions = {}): OpenApiDocument {
  const schemas: Schemas = { Error: errorSchema() };
  const paths: OpenApiDocument['paths'] = {};
  const taken = new Set<string>();
  for (const route of routes) {
    const item = (paths[openApiPath(route.path)] ??= {});
    const method = route.method.toLowerCase();
    if (item[method]) throw new Error(`${route.method} ${route.path} is declared twice in the route table; Hono serves only the first.`);
    item[method] = operation(route, operationId(route, taken), schemas);
  }
  const transactional = routes.some((route) => route.kind === 'transactional');
  const statuses = [...new Set(routes.flatMap(errorStatuses))].sort((a, b) => a - b);
  return {
    openapi: '3.1.0',
    info: { title: info.title, version: info.version, ...(info.description !== undefined && { description: info.description }) },
    ...(options.servers && { servers: options.servers.map(({ url }) => ({ url })) }),
    paths,
    components: {
      schemas,
      responses: Object.fromEntries(statuses.map(errorResponseComponent)),
      parameters: {
        ...(transactional && { IdempotencyKey: idempotencyKeyParameter() }),
        ...(routes.some((route) => route.kind === 'read') && { ConsistencyToken: consistencyParameter() }),
      },
      headers: headerComponents(
        transactional,
        routes.some((route) => route.cache),
      ),
    },
  };
}
