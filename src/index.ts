/**
 * poolgate's public API (`import … from 'poolgate'`): declare routes and an application, and
 * the types their handlers see. Runtime entries are subpath exports: `poolgate/node`,
 * `poolgate/workerd`, `poolgate/netlify-edge`, `poolgate/netlify-function`; the guide's plain
 * functions are `poolgate/functions` (Node) and `poolgate/edge` (workerd, Deno). Nothing else
 * in the package is public.
 */
export { route, type RouteDeclaration, type RouteRequest } from './routes/route.js';
export type { AppEnv as PoolgateEnv, RouteKind, RouteMethod, RouteResponse, RouteResult, RouteSpec } from './routes/types.js';
export { defineApp, type FetchApp, type Migration, type OpenApiInfo, type Poolgate, type PoolgateApp } from './definition.js';
export type { ClientKind, Db, Queryable, QueryResult, Row, Statement, TxOptions } from './db/types.js';
export { AppError, notFound, type ErrorCode, type FieldError } from './errors.js';
export { openApiDocument } from './openapi.js';
export { routeNotFound } from './routes/not-found.js';
export type { CachePolicy } from './cache/policy.js';
