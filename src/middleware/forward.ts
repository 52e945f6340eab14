/**
 * Edge side of transactional routes: instead of running them here, send them, signed, to the
 * Node function that owns the pg Pool. Method, path, query, body, request id and idempotency
 * key travel; the response comes back as it was. A forward that provably never reached the Node
 * function (connection refused) answers 503 + Retry-After; one that timed out answers 504, since
 * the write may or may not have happened — it is never retried blindly here.
 *
 * A traced request's forward is a CLIENT span, its W3C trace context (`traceparent`, `tracestate`)
 * written into the forward's headers, so the Node function's spans join the same trace. The
 * signature does not cover those headers, by design: they choose only which trace the Node side's
 * spans are filed under, never what it does, and a hop in between (a proxy, a platform's tracing)
 * may rewrite them; anyone able to alter them in flight can alter no signed part of the request.
 */
import type { Context, Handler } from 'hono';
import { AppError } from '../errors.js';
import { createBreaker, type Breaker, type BreakerOptions } from '../resilience/breaker.js';
import { cutShort, withAbort, type Deadline, type FireReason } from '../db/core/deadline.js';
import { RetryBudget, withRetry } from '../resilience/retry.js';
import { createForwardSigner, SIGNATURE_HEADER } from '../security/forward-signature.js';
import { now } from '../stats/clock.js';
import { endForwardSpan, startForwardSpan } from '../stats/otel.js';
import type { AppEnv, RouteSpec } from '../routes/types.js';
import { takeBody } from '../routes/input.js';

export interface ForwardOptions {
  /** Base URL of the Node function, e.g. https://site.netlify.app/.netlify/functions/gateway */
  targetUrl: string;
  secret: string;
  timeoutMs: number;
  fetch?: typeof fetch;
  /** Guards the Node function; opens on a burst of unreachable/timed-out forwards. */
  breaker?: Breaker;
  budget?: RetryBudget;
  /**
   * The runtime's word that a failed fetch never sent its request (connection refused): such a
   * forward may be sent again even without an Idempotency-Key. Each runtime shapes that error
   * its own way (src/runtime/fetch-errors.ts); without one, only keyed forwards are resent.
   */
  neverSent?: (err: unknown) => boolean;
}

/** A failure before any response: refused, reset, DNS. Says nothing about whether the request arrived. */
class Unreachable extends Error {}

/** The forwarder's breaker: counts unreachable and timed-out forwards, not the Node side's own answers. */
export const createForwardBreaker = (onChange?: BreakerOptions['onChange']) =>
  createBreaker('forwarder', {
    isFailure: (e) => e instanceof Unreachable || (e instanceof AppError && e.code === 'upstream_timeout'),
    onChange,
  });

const PASS_REQUEST_HEADERS = ['content-type', 'idempotency-key', 'accept'];
const DROP_RESPONSE_HEADERS = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'server-timing', 'x-request-id']);
const EMPTY = new Uint8Array();

export const forwardTo = (options: ForwardOptions) => {
  const sign = createForwardSigner(options.secret);
  const breaker = options.breaker ?? createForwardBreaker();
  const budget = options.budget ?? new RetryBudget();
  const doFetch: typeof fetch = options.fetch ?? ((input, init) => fetch(input, init));
  const neverSent = options.neverSent ?? (() => false);
  const base = options.targetUrl.replace(/\/+$/, '');

  return (_route: RouteSpec): Handler<AppEnv> =>
    async function forward(c) {
      const metrics = c.get('metrics');
      metrics.served('forwarded');
      const url = new URL(c.req.url);
      const pathWithQuery = url.pathname + url.search;
      const body = c.req.method === 'GET' || c.req.method === 'HEAD' ? EMPTY : await takeBody(c);
      const headers = forwardHeaders(c);
      const hasKey = headers.has('idempotency-key');
      const span = startForwardSpan(metrics.span, c.req.method, base + url.pathname, headers);
      let status: number | undefined;
      let failed: unknown;
      const started = now();
      // One bound for every attempt: the forward timeout, inside the request's own deadline.
      const bound: Deadline = { deadline: Math.min(metrics.deadline ?? Infinity, started + options.timeoutMs), signal: metrics.signal };
      try {
        const res = await withRetry(
          async () => {
            // A fresh nonce per attempt: the Node side refuses a signature it has seen.
            headers.set(
              SIGNATURE_HEADER,
              await sign({ method: c.req.method, pathWithQuery, body, idempotencyKey: headers.get('idempotency-key') ?? undefined }),
            );
            return breaker.execute(() => send(base + pathWithQuery, c.req.method, headers, body, bound, metrics, doFetch));
          },
          {
            scope: 'write',
            // Again only when the Node side de-duplicates (a key) or provably never got it.
            retryable: (err) => err instanceof Unreachable && (hasKey || neverSent(err.cause)),
            maxAttempts: 2,
            budget,
            deadline: bound.deadline,
            now,
            onRetry: () => metrics.retried?.(),
          },
        );
        status = res.status;
        return res;
      } catch (err) {
        failed = err;
        throw toForwardError(err);
      } finally {
        metrics.timings.push({ name: 'forward', durMs: now() - started });
        endForwardSpan(span, status, failed);
      }
    };
};

function forwardHeaders(c: Context<AppEnv>): Headers {
  const headers = new Headers();
  for (const name of PASS_REQUEST_HEADERS) {
    const v = c.req.header(name);
    if (v !== undefined) headers.set(name, v);
  }
  headers.set('x-request-id', c.get('requestId'));
  return headers;
}

/** The forward timed out (outcome unknown) or its client left (nobody waits for it). */
const cutForward = (bound: Deadline) => (why: FireReason, cause: unknown) =>
  why === 'aborted' ? cutShort(why, bound) : new AppError(504, 'upstream_timeout', TIMEOUT_MESSAGE, { cause });

async function send(
  url: string,
  method: string,
  headers: Headers,
  body: Uint8Array<ArrayBuffer>,
  bound: Deadline,
  metrics: { upstreamTiming?: string },
  doFetch: typeof fetch,
): Promise<Response> {
  return withAbort(
    bound,
    Infinity,
    async (signal) => {
      let res: Response;
      try {
        res = await doFetch(url, { method, headers, body: body.byteLength ? body : undefined, signal, redirect: 'manual' });
      } catch (err) {
        if (signal.aborted) throw err;
        throw new Unreachable('forward failed before a response', { cause: err });
      }
      // Read the whole body inside the bound, so a stalled upstream cannot hold us.
      let payload: ArrayBuffer;
      try {
        payload = await res.arrayBuffer();
      } catch (err) {
        if (signal.aborted) throw err;
        // The request arrived (there is a status); only the answer was lost.
        throw new AppError(504, 'upstream_timeout', TIMEOUT_MESSAGE, { cause: err });
      }
      const out = new Headers();
      // append: forEach gives each Set-Cookie on its own (the rest once, combined); set kept only the last cookie.
      res.headers.forEach((v, k) => {
        if (!DROP_RESPONSE_HEADERS.has(k)) out.append(k, v);
      });
      const upstreamTiming = res.headers.get('server-timing');
      if (upstreamTiming) metrics.upstreamTiming = upstreamTiming.replace(/(^|,\s*)([\w-]+)/g, '$1node-$2');
      return new Response(res.status === 204 || res.status === 304 ? null : payload, { status: res.status, headers: out });
    },
    cutForward(bound),
  );
}

const TIMEOUT_MESSAGE = 'The transactional backend did not answer in time; the outcome is unknown. Retry with the same Idempotency-Key.';

function toForwardError(err: unknown): unknown {
  if (err instanceof Unreachable) {
    return new AppError(503, 'upstream_unavailable', 'The transactional backend is unreachable; try again shortly.', {
      retryAfterSec: 2,
      cause: err,
    });
  }
  return err;
}
