/**
 * Node side of forwarding: a request must carry a valid, fresh edge signature before any
 * database work happens. Every failure (missing, malformed, wrong key, tampered, stale) gets the
 * same 401, so a caller learns nothing about which check failed. The signature's nonce is kept on
 * the context: a transactional route records it in its own transaction (src/idempotency/nonces.ts),
 * which refuses a replay, with the same 401, across every instance and restart.
 */
import type { MiddlewareHandler } from 'hono';
import { AppError } from '../errors.js';
import { createForwardVerifier, SIGNATURE_HEADER, type VerifierOptions } from '../security/forward-signature.js';
import type { AppEnv } from '../routes/types.js';
import { takeBody } from '../routes/input.js';

export interface VerifyForwardOptions extends VerifierOptions {
  /** Called with the reason of each refusal (for logs and stats), never shown to the caller. */
  onReject?: (reason: string) => void;
}

export const verifyForward = (options: VerifyForwardOptions): MiddlewareHandler<AppEnv> => {
  const verify = createForwardVerifier(options);
  return async function verifyForward(c, next) {
    const url = new URL(c.req.url);
    const body = await takeBody(c);
    const result = await verify({
      method: c.req.method,
      pathWithQuery: url.pathname + url.search,
      header: c.req.header(SIGNATURE_HEADER),
      idempotencyKey: c.req.header('idempotency-key'),
      body,
    });
    if (!result.ok) {
      options.onReject?.(result.reason);
      throw new AppError(401, 'unauthorized', 'This endpoint only accepts requests signed by the poolgate edge.');
    }
    c.set('forward', { nonce: result.nonce, acceptableUntilMs: result.acceptableUntilMs });
    await next();
  };
};
