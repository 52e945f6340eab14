/**
 * Each runtime's shape of "this fetch never sent its request: the connection was refused", the
 * one failure after which a forward without an Idempotency-Key may be sent again. A runtime
 * whose errors cannot tell refused from lost gets no classifier, so nothing is resent blindly.
 */

/** Deno: TypeError('fetch failed') whose cause's message names the refused TCP connect. */
export const denoNeverSent = (err: unknown): boolean =>
  /tcp connect error: Connection refused/.test(String((err as { cause?: unknown } | undefined)?.cause));

// workerd answers a refused connection and one lost mid-request alike ("Network connection lost."),
// so it has no classifier: only keyed forwards are resent there.
