/**
 * Edge side of transactional routes: instead of running them here, send them, signed, to the
 * Node function that owns the pg Pool. Method, path, query, body, request id and idempotency
 * key travel; the response comes back as it was. A forward that provably never reached the Node
 * function (connection refused) answers 503 + Retry-After; one that timed out answers 504, since
 * the write may or may not have happened — it is never retried blindly here.
 */
import type { Handler } from 'hono';
import { AppError } from '../errors.js';
import { createBreaker, type Breaker } from '../resilience/breaker.js';
import { backoffMs, RetryBudget } from '../resilience/retry.js';
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
  /** Guards the Node function; opens on a burst of unreachable/timed-out forwards. */
  breaker?: Breaker;
  budget?: RetryBudget;
}

/** A failure before any response: refused, reset, DNS. Says nothing about whether the request arrived. */
class Unreachable extends Error {}

/** The forwarder's breaker: counts unreachable and timed-out forwards, not the Node side's own answers. */
export const createForwardBreaker = () =>
  createBreaker('forwarder', { isFailure: (e) => e instanceof Unreachable || (e instanceof AppError && e.code === 'upstream_timeout') });

/**
 * May a failed forward be sent again? Only when it provably never arrived (connection refused),
 * or when it carries an Idempotency-Key, so that the Node side de-duplicates a second arrival.
 */
function mayResend(err: unknown, hasKey: boolean): boolean {
  if (!(err instanceof Unreachable)) return false;
  const code = (err.cause as { cause?: { code?: unknown } } | undefined)?.cause?.code;
  return hasKey || code === 'ECONNREFUSED';
}

const PASS_REQUEST_HEADERS = ['content-type', 'idempotency-key', 'accept'];
const DROP_RESPONSE_HEADERS = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'server-timing', 'x-request-id']);

export const forwardTo = (options: ForwardOptions) => {
  const sign = createForwardSigner(options.secret);
  const breaker = options.breaker ?? createForwardBreaker();
  const budget = options.budget ?? new RetryBudget();
  const doFetch: typeof fetch = options.fetch ?? ((input, init) => fetch(input, init));
  const base = options.targetUrl.replace(/\/+$/, '');

  return (_route: RouteSpec): Handler<AppEnv> =>
    async function forward(c) {
      const metrics = c.get('metrics');
      metrics.served('forwarded');
      const url = new URL(c.req.url);
      const pathWithQuery = url.pathname + url.search;
      const body =
        c.req.method === 'GET' || c.req.method === 'HEAD' ? new Uint8Array() : await readBodyBytes(c.req.raw, c.get('bodyLimitBytes'));

      const headers = new Headers();
      for (const name of PASS_REQUEST_HEADERS) {
        const v = c.req.header(name);
        if (v !== undefined) headers.set(name, v);
      }
      headers.set('x-request-id', c.get('requestId'));

      const hasKey = headers.has('idempotency-key');
      const left = metrics.deadline === undefined ? Infinity : metrics.deadline - now();
      const timeoutMs = Math.min(options.timeoutMs, left);
      const started = now();
      budget.deposit();
      try {
        for (let attempt = 0; ; attempt++) {
          try {
            // A fresh nonce per attempt: the Node side refuses a signature it has seen.
            headers.set(SIGNATURE_HEADER, await sign({ method: c.req.method, pathWithQuery, body }));
            return await breaker.execute(() =>
              send(base + pathWithQuery, c.req.method, headers, body, timeoutMs - (now() - started), metrics, doFetch),
            );
          } catch (err) {
            if (attempt >= 1 || !mayResend(err, hasKey) || now() - started >= timeoutMs || !budget.trySpend()) throw toForwardError(err);
            metrics.retried?.();
            await new Promise((r) => setTimeout(r, backoffMs(attempt)));
          }
        }
      } finally {
        metrics.timings.push({ name: 'forward', durMs: now() - started });
      }
    };
};

async function send(
  url: string,
  method: string,
  headers: Headers,
  body: Uint8Array<ArrayBuffer>,
  timeoutMs: number,
  metrics: { upstreamTiming?: string },
  doFetch: typeof fetch = fetch,
): Promise<Response> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), Math.max(1, timeoutMs));
  try {
    let res: Response;
    try {
      res = await doFetch(url, {
        method,
        headers,
        body: body.byteLength ? body : undefined,
        signal: controller.signal,
        redirect: 'manual',
      });
    } catch (err) {
      if (controller.signal.aborted) throw new AppError(504, 'upstream_timeout', TIMEOUT_MESSAGE, { cause: err });
      throw new Unreachable('forward failed before a response', { cause: err });
    }
    // Read the whole body inside the deadline, so a stalled upstream cannot hold us.
    let payload: ArrayBuffer;
    try {
      payload = await res.arrayBuffer();
    } catch (err) {
      // The request arrived (there is a status); only the answer was lost.
      throw new AppError(504, 'upstream_timeout', TIMEOUT_MESSAGE, { cause: err });
    }
    const out = new Headers();
    res.headers.forEach((v, k) => {
      if (!DROP_RESPONSE_HEADERS.has(k)) out.set(k, v);
    });
    const upstreamTiming = res.headers.get('server-timing');
    if (upstreamTiming) metrics.upstreamTiming = upstreamTiming.replace(/(^|,\s*)([\w-]+)/g, '$1node-$2');
    return new Response(res.status === 204 || res.status === 304 ? null : payload, { status: res.status, headers: out });
  } finally {
    clearTimeout(timer);
  }
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
