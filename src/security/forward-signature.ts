/**
 * Signing of edge → Node forwards, on Web Crypto only (runs in workerd, Deno and Node).
 * The signature is HMAC-SHA256 over a version, timestamp, nonce, method, path+query, the
 * Idempotency-Key and the SHA-256 of the body, keyed by a shared secret. The verifier is
 * stateless: it checks the MAC (constant time) and the timestamp's window, and hands back the
 * nonce and until when it could be accepted. Whether the nonce was used before is the database's
 * to say, for every instance at once (src/idempotency/nonces.ts) — no memory to fill or to lose.
 */

export const SIGNATURE_HEADER = 'x-poolgate-signature';
export const MIN_SECRET_LENGTH = 32;

const enc = new TextEncoder();

const hex = (buf: ArrayBuffer) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
const b64url = (buf: ArrayBuffer) =>
  btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\+/g, '-')
    .replace(/\//g, '_')
    .replace(/=+$/, '');
function fromB64url(s: string): Uint8Array | undefined {
  try {
    const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/'));
    return Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
  } catch {
    return undefined;
  }
}

interface Signed {
  method: string;
  pathWithQuery: string;
  body: Uint8Array;
  /** The Idempotency-Key header, signed so that a replayer cannot swap it. */
  idempotencyKey?: string | undefined;
}

async function canonical(t: number, nonce: string, req: Signed): Promise<Uint8Array> {
  const bodyHash = hex(await crypto.subtle.digest('SHA-256', req.body as BufferSource));
  const key = req.idempotencyKey ?? '';
  return enc.encode(`v2\n${t}\n${nonce}\n${req.method.toUpperCase()}\n${req.pathWithQuery}\n${key}\n${bodyHash}`);
}

function importKey(secret: string, usage: 'sign' | 'verify'): Promise<CryptoKey> {
  return crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [usage]);
}

export interface SignInput extends Signed {
  /** Seconds since the epoch; defaults to now. */
  timestampSec?: number;
  nonce?: string;
}

/** Returns a signer bound to `secret` (the key is imported once). */
export function createForwardSigner(secret: string): (input: SignInput) => Promise<string> {
  const key = importKey(secret, 'sign');
  return async (input) => {
    const t = input.timestampSec ?? Math.floor(Date.now() / 1000);
    const nonce = input.nonce ?? crypto.randomUUID();
    const mac = await crypto.subtle.sign('HMAC', await key, (await canonical(t, nonce, input)) as BufferSource);
    return `t=${t},n=${nonce},v2=${b64url(mac)}`;
  };
}

export interface VerifierOptions {
  secret: string;
  /** How old a signature may be (its timestamp ≥ now − maxAgeSec − skew). */
  maxAgeSec?: number;
  /** How far the edge's clock may run ahead of or behind this one. */
  clockSkewSec?: number;
  /** Milliseconds since the epoch. */
  clock?: () => number;
}

export type VerifyResult =
  | { ok: true; nonce: string; /** After this (ms since the epoch) the signature can no longer be accepted. */ acceptableUntilMs: number }
  | { ok: false; reason: 'missing' | 'malformed' | 'stale' | 'bad_signature' };

/** Returns a stateless verifier bound to `secret`. */
export function createForwardVerifier(
  options: VerifierOptions,
): (req: Signed & { header: string | null | undefined }) => Promise<VerifyResult> {
  const key = importKey(options.secret, 'verify');
  const maxAge = options.maxAgeSec ?? 60;
  const skew = options.clockSkewSec ?? 30;
  const clock = options.clock ?? Date.now;

  return async (req) => {
    if (!req.header) return { ok: false, reason: 'missing' };
    const m = /^t=(\d{1,12}),n=([\w-]{8,64}),v2=([\w-]{43})$/.exec(req.header);
    if (!m) return { ok: false, reason: 'malformed' };
    const t = Number(m[1]);
    const nonce = m[2]!;
    const mac = fromB64url(m[3]!);
    if (!mac) return { ok: false, reason: 'malformed' };
    const nowSec = clock() / 1000;
    if (t < nowSec - maxAge - skew || t > nowSec + skew) return { ok: false, reason: 'stale' };
    const valid = await crypto.subtle.verify('HMAC', await key, mac as BufferSource, (await canonical(t, nonce, req)) as BufferSource);
    if (!valid) return { ok: false, reason: 'bad_signature' };
    return { ok: true, nonce, acceptableUntilMs: (t + maxAge + skew) * 1000 };
  };
}
