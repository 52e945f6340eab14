import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createForwardSigner, createForwardVerifier, MIN_SECRET_LENGTH } from './forward-signature.js';

const SECRET = 'a-forward-secret-of-forty-characters-xyz';
const enc = new TextEncoder();
const T0 = 1_800_000_000; // seconds

function setup(options: { maxAgeSec?: number; clockSkewSec?: number } = {}) {
  let nowMs = T0 * 1000;
  const verify = createForwardVerifier({ secret: SECRET, clock: () => nowMs, ...options });
  return { verify, sign: createForwardSigner(SECRET), advance: (ms: number) => (nowMs += ms) };
}

const req = { method: 'POST', pathWithQuery: '/api/workouts?x=1', body: enc.encode('{"kind":"run"}') };
const accepted = (nonce: string, untilSec: number) => ({ ok: true, nonce, acceptableUntilMs: untilSec * 1000 });

describe('forward signatures', () => {
  it('a signed request verifies, and hands back its nonce and until when it could be accepted', async () => {
    const { verify, sign } = setup();
    const header = await sign({ ...req, timestampSec: T0, nonce: 'nonce-0001' });
    expect(header).toMatch(/^t=\d+,n=[\w-]+,v2=[\w-]{43}$/);
    // Stateless: a replay verifies too; the database refuses the nonce (src/idempotency/nonces.ts).
    expect(await verify({ ...req, header })).toEqual(accepted('nonce-0001', T0 + 60 + 30));
    expect(await verify({ ...req, header })).toEqual(accepted('nonce-0001', T0 + 60 + 30));
  });

  it('covers the Idempotency-Key: adding, dropping or swapping it breaks the signature', async () => {
    const { verify, sign } = setup();
    const header = await sign({ ...req, idempotencyKey: 'key-1', timestampSec: T0, nonce: 'nonce-0002' });
    expect(await verify({ ...req, idempotencyKey: 'key-1', header })).toMatchObject({ ok: true });
    for (const idempotencyKey of [undefined, 'key-2', 'key-1 '])
      expect(await verify({ ...req, idempotencyKey, header })).toEqual({ ok: false, reason: 'bad_signature' });
    const keyless = await sign({ ...req, timestampSec: T0 });
    expect(await verify({ ...req, idempotencyKey: 'key-1', header: keyless })).toEqual({ ok: false, reason: 'bad_signature' });
  });

  it('the method is compared case-insensitively (canonical form is upper case)', async () => {
    const { verify, sign } = setup();
    const header = await sign({ ...req, method: 'post', timestampSec: T0 });
    expect(await verify({ ...req, header })).toMatchObject({ ok: true });
  });

  it('refuses a missing or malformed header', async () => {
    const { verify } = setup();
    for (const header of [undefined, null, '']) expect(await verify({ ...req, header })).toEqual({ ok: false, reason: 'missing' });
    for (const header of [
      'garbage',
      't=1,n=short,v2=x',
      `t=${T0},n=abcdefgh,v2=${'A'.repeat(42)}`,
      `t=${T0},n=abc/defgh,v2=${'A'.repeat(43)}`,
      `n=abcdefgh,t=${T0},v2=${'A'.repeat(43)}`,
      `t=${T0},n=abcdefgh,v1=${'A'.repeat(43)}`,
    ]) {
      expect(await verify({ ...req, header }), header).toEqual({ ok: false, reason: 'malformed' });
    }
  });

  it('refuses a wrong key, and any change to method, path, query or body', async () => {
    const { verify, sign } = setup();
    const other = createForwardSigner('another-forward-secret-forty-characters');
    expect(await verify({ ...req, header: await other({ ...req, timestampSec: T0 }) })).toEqual({ ok: false, reason: 'bad_signature' });
    const variants = [
      { ...req, method: 'PUT' },
      { ...req, pathWithQuery: '/api/workouts?x=2' },
      { ...req, pathWithQuery: '/api/users?x=1' },
      { ...req, body: enc.encode('{"kind":"ran"}') },
      { ...req, body: new Uint8Array() },
    ];
    for (const v of variants) {
      const header = await sign({ ...req, timestampSec: T0 });
      expect(await verify({ ...v, header })).toEqual({ ok: false, reason: 'bad_signature' });
    }
  });

  it('refuses a changed timestamp or nonce in the header', async () => {
    const { verify, sign } = setup();
    const header = await sign({ ...req, timestampSec: T0, nonce: 'nonce-0001' });
    expect(await verify({ ...req, header: header.replace(`t=${T0}`, `t=${T0 + 1}`) })).toEqual({ ok: false, reason: 'bad_signature' });
    expect(await verify({ ...req, header: header.replace('nonce-0001', 'nonce-0002') })).toEqual({ ok: false, reason: 'bad_signature' });
  });

  it('accepts a timestamp from maxAge + skew seconds ago to skew seconds ahead, refuses beyond', async () => {
    const { verify, sign } = setup({ maxAgeSec: 60, clockSkewSec: 30 });
    expect(await verify({ ...req, header: await sign({ ...req, timestampSec: T0 - 90 }) })).toMatchObject({ ok: true });
    expect(await verify({ ...req, header: await sign({ ...req, timestampSec: T0 + 30 }) })).toMatchObject({ ok: true });
    expect(await verify({ ...req, header: await sign({ ...req, timestampSec: T0 - 91 }) })).toEqual({ ok: false, reason: 'stale' });
    expect(await verify({ ...req, header: await sign({ ...req, timestampSec: T0 + 31 }) })).toEqual({ ok: false, reason: 'stale' });
  });

  it('keeps no state: a flood of valid signatures leaves the next one accepted', async () => {
    const { verify, sign } = setup();
    for (let i = 0; i < 2_000; i++) await verify({ ...req, header: await sign({ ...req, timestampSec: T0 }) });
    expect(await verify({ ...req, header: await sign({ ...req, timestampSec: T0 }) })).toMatchObject({ ok: true });
  });

  it('property: any single-byte change to the body, or any other path, breaks the signature', async () => {
    const { verify, sign } = setup();
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 1, maxLength: 256 }),
        fc.nat(),
        fc.integer({ min: 1, max: 255 }),
        fc.webPath(),
        async (body, at, flip, path) => {
          const i = at % body.length;
          const header = await sign({ method: 'POST', pathWithQuery: '/api/x', body, timestampSec: T0 });
          const tampered = Uint8Array.from(body);
          tampered[i] = tampered[i]! ^ flip;
          expect(await verify({ method: 'POST', pathWithQuery: '/api/x', body: tampered, header })).toEqual({
            ok: false,
            reason: 'bad_signature',
          });
          if (path !== '/api/x')
            expect(await verify({ method: 'POST', pathWithQuery: path, body, header })).toEqual({ ok: false, reason: 'bad_signature' });
          expect(await verify({ method: 'POST', pathWithQuery: '/api/x', body, header })).toMatchObject({ ok: true });
        },
      ),
      { numRuns: 150, seed: 4242 },
    );
  });

  it('property: the verifier never throws on arbitrary headers', async () => {
    const { verify } = setup();
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 200 }), async (header) => {
        const r = await verify({ ...req, header });
        expect(r.ok).toBe(false);
      }),
      { numRuns: 200, seed: 4242 },
    );
  });

  it('requires secrets of at least 32 characters (config enforces it)', () => {
    expect(MIN_SECRET_LENGTH).toBe(32);
  });
});
