/**
 * Edge side of transactional routes: instead of running them here, send them, signed, to the
 * Node function that owns the pg Pool. Method, path, query, body, request id and idempotency
 * key travel; the response comes back as it was. A forward that provably never reached the Node
 * function (connection refused) answers 503 + Retry-After; one that timed out answers 504, since
 * the write may or may not have happened — it is never retried blindly here.
 */
import type { Handler } from 'hono';
import { AppError } from '../errors.js';
import { createForwardSigner, SIGNATURE_HEADER } from '../security/forward-signature.js';
import { now } from '../stats/clock.js';
import type { AppEnv, RouteSpec } from '../routes/fitness.js';
import { readBodyBytes } from '../routes/input.js';

export interface ForwardOptions {
  /** Base URL of the Node function, e.g. https://site.netlify.app/.netlify/functions/gateway */
  targetUrl: string;
  secret: string;
  timeoutMs: number;
  fetch?: typeof fetch;
}

const PASS_REQUEST_HEADERS = ['content-type', 'idempotency-key', 'accept'];
const DROP_RESPONSE_HEADERS = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'server-timing', 'x-request-id']);

export const forwardTo = (options: ForwardOptions) => {
  const sign = createForwardSigner(options.secret);
  const doFetch = options.fetch ?? ((input: RequestInfo | URL, init?: RequestInit) => fetch(input, init));
  const base = options.targetUrl.replace(/\/+$/, '');

  return (_route: RouteSpec): Handler<AppEnv> =>
    async function forward(c) {
      const metrics = c.get('metrics');
      metrics.served('forwarded');
      const url = new URL(c.req.url);
      const pathWithQuery = url.pathname + url.search;
      const body = c.req.method === 'GET' || c.req.method === 'HEAD' ? new Uint8Array() : await readBodyBytes(c.req.raw, c.get('bodyLimitBytes'));

      const headers = new Headers();
      for (const name of PASS_REQUEST_HEADERS) {
        const v = c.req.header(name);
        if (v !== undefined) headers.set(name, v);
      }
      headers.set('x-request-id', c.get('requestId'));
      headers.set(SIGNATURE_HEADER, await sign({ method: c.req.method, pathWithQuery, body }));

      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), options.timeoutMs);
      const started = now();
      let res: Response;
      try {
        res = await doFetch(base + pathWithQuery, {
          method: c.req.method,
          headers,
          body: body.byteLength ? body : undefined,
          signal: controller.signal,
          redirect: 'manual',
        });
        // Read the whole body inside the deadline, so a stalled upstream cannot hold us.
        const payload = await res.arrayBuffer();
        const out = new Headers();
        res.headers.forEach((v, k) => {
          if (!DROP_RESPONSE_HEADERS.has(k)) out.set(k, v);
        });
        const upstreamTiming = res.headers.get('server-timing');
        if (upstreamTiming) metrics.upstreamTiming = upstreamTiming.replace(/(^|,\s*)([\w-]+)/g, '$1node-$2');
        return new Response(res.status === 204 || res.status === 304 ? null : payload, { status: res.status, headers: out });
      } catch (err) {
        if (controller.signal.aborted) {
          throw new AppError(504, 'upstream_timeout', 'The transactional backend did not answer in time; the outcome is unknown. Retry with the same Idempotency-Key.', {
            cause: err,
          });
        }
        throw new AppError(503, 'upstream_unavailable', 'The transactional backend is unreachable; nothing was written. Try again shortly.', {
          retryAfterSec: 2,
          cause: err,
        });
      } finally {
        clearTimeout(timer);
        metrics.timings.push({ name: 'forward', durMs: now() - started });
      }
    };
};
