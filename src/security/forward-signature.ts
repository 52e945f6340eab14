/**
 * Signing of edge → Node forwards, on Web Crypto only (runs in workerd, Deno and Node).
 * The signature is HMAC-SHA256 over a version, timestamp, nonce, method, path+query and the
 * SHA-256 of the body, keyed by a shared secret. The Node side checks it with
 * `crypto.subtle.verify` (constant time), refuses timestamps more than `maxAgeSec` away, and
 * remembers nonces for that long so a captured request cannot be replayed.
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

async function canonical(t: number, nonce: string, method: string, pathWithQuery: string, body: Uint8Array): Promise<Uint8Array> {
  const bodyHash = hex(await crypto.subtle.digest('SHA-256', body as BufferSource));
  return enc.encode(`v1\n${t}\n${nonce}\n${method.toUpperCase()}\n${pathWithQuery}\n${bodyHash}`);
}

function importKey(secret: string, usage: 'sign' | 'verify'): Promise<CryptoKey> {
  return crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [usage]);
}

export interface SignInput {
  method: string;
  pathWithQuery: string;
  body: Uint8Array;
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
    const mac = await crypto.subtle.sign(
      'HMAC',
      await key,
      (await canonical(t, nonce, input.method, input.pathWithQuery, input.body)) as BufferSource,
    );
    return `t=${t},n=${nonce},v1=${b64url(mac)}`;
  };
}

export interface VerifierOptions {
  secret: string;
  maxAgeSec?: number;
  /** Milliseconds since the epoch. */
  clock?: () => number;
  /** Nonces remembered at most; when full of live ones, verification fails closed. */
  maxNonces?: number;
}

export type VerifyResult = { ok: true } | { ok: false; reason: 'missing' | 'malformed' | 'stale' | 'bad_signature' | 'replayed' | 'busy' };

/** Returns a verifier bound to `secret`; it keeps the nonces it has accepted. */
export function createForwardVerifier(
  options: VerifierOptions,
): (req: { method: string; pathWithQuery: string; header: string | null | undefined; body: Uint8Array }) => Promise<VerifyResult> {
  const key = importKey(options.secret, 'verify');
  const maxAge = options.maxAgeSec ?? 300;
  const clock = options.clock ?? Date.now;
  const maxNonces = options.maxNonces ?? 200_000;
  const seen = new Map<string, number>(); // nonce → expiry (ms)

  const forget = (nowMs: number) => {
    for (const [n, exp] of seen) {
      if (exp > nowMs) break; // expiries grow with insertion time, so the oldest come first
      seen.delete(n);
    }
  };

  return async ({ method, pathWithQuery, header, body }) => {
    if (!header) return { ok: false, reason: 'missing' };
    const m = /^t=(\d{1,12}),n=([\w-]{8,64}),v1=([\w-]{43})$/.exec(header);
    if (!m) return { ok: false, reason: 'malformed' };
    const t = Number(m[1]);
    const nonce = m[2]!;
    const mac = fromB64url(m[3]!);
    if (!mac) return { ok: false, reason: 'malformed' };
    const nowMs = clock();
    if (Math.abs(nowMs / 1000 - t) > maxAge) return { ok: false, reason: 'stale' };
    const data = await canonical(t, nonce, method, pathWithQuery, body);
    const valid = await crypto.subtle.verify('HMAC', await key, mac as BufferSource, data as BufferSource);
    if (!valid) return { ok: false, reason: 'bad_signature' };
    forget(nowMs);
    if (seen.has(nonce)) return { ok: false, reason: 'replayed' };
    if (seen.size >= maxNonces) return { ok: false, reason: 'busy' };
    // A timestamp is accepted until t + maxAge ≤ now + 2·maxAge, so that long covers it.
    seen.set(nonce, nowMs + 2 * maxAge * 1000);
    return { ok: true };
  };
}
