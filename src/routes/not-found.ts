/**
 * The answer to a request no route matched, in the API's error shape: 404 `route_not_found`, or
 * 405 `method_not_allowed` with `Allow` when the path is served with other methods. It reads the
 * routes of the Hono app it is installed on when a request misses (so routes added later count,
 * mounted parts and the application's own alike) and matches them with Hono's own path syntax.
 * Entries for every method (`app.use`, `app.all`) are skipped: a handler there would have answered.
 */
import type { Env, NotFoundHandler } from 'hono';
import { TrieRouter } from 'hono/router/trie-router';
import { AppError } from '../errors.js';
import { requestIdOf } from '../middleware/conn-stats.js';

/** A Hono app, as far as this needs one: its routes (`app.routes`). */
interface RoutedApp {
  readonly routes: readonly { method: string; path: string }[];
}

/** The methods `app` serves on a concrete path (HEAD wherever GET is), in the order they were added. */
function methodsOn(app: RoutedApp): (path: string) => string[] {
  const router = new TrieRouter<string>();
  let added = 0;
  return (path) => {
    for (const route of app.routes.slice(added)) if (route.method !== 'ALL') router.add('ALL', route.path, route.method);
    added = app.routes.length;
    const methods = new Set(router.match('GET', path)[0].map(([method]) => method));
    if (methods.has('GET')) methods.add('HEAD');
    return [...methods];
  };
}

/**
 * poolgate's 404/405 for your own Hono app (the default app installs it itself).
 * @example
 * const app = new Hono();
 * app.route('/', pg.routes(routes));
 * app.notFound(routeNotFound(app)); // POST /api/notes/1 → 405 + Allow: GET, HEAD; GET /nothing → 404 route_not_found
 */
export function routeNotFound<E extends Env = Env>(app: RoutedApp): NotFoundHandler<E> {
  const allowedOn = methodsOn(app);
  return (c) => {
    // Outside poolgate's parts no middleware gave this request an id: give it one here.
    const known = requestIdOf(c);
    const requestId = known === 'unknown' ? crypto.randomUUID() : known;
    const allow = allowedOn(c.req.path);
    const res = (
      allow.length === 0
        ? // The path is not echoed: an answer should not carry whatever a prober put in the URL.
          new AppError(404, 'route_not_found', `No route for ${c.req.method} at this path.`)
        : new AppError(405, 'method_not_allowed', `${c.req.method} is not allowed here; use ${allow.join(', ')}.`)
    ).toResponse(requestId);
    if (allow.length > 0) res.headers.set('allow', allow.join(', '));
    if (known === 'unknown') res.headers.set('x-request-id', requestId);
    return res;
  };
}
