import { describe, expect, it } from 'vitest';
import { AppError } from '../errors.js';
import { formatToken, hasReplayed, laterLsn, lsnValue, parseToken, tokenCookie, tokenFromCookie } from './consistency.js';

describe('the consistency token', () => {
  it('reads a WAL position as PostgreSQL writes it, and compares positions as numbers, not text', () => {
    expect(lsnValue('0/3000060')).toBe(0x3000060n);
    expect(lsnValue('16/B374D848')).toBe((0x16n << 32n) | 0xb374d848n);
    expect(lsnValue('0/3000060x')).toBeUndefined();
    expect(hasReplayed('0/A0', '0/9F')).toBe(true); // "0/A0" < "0/9F" as text
    expect(hasReplayed('1/0', '0/FFFFFFFF')).toBe(true);
    expect(hasReplayed('0/9F', '0/A0')).toBe(false);
    expect(hasReplayed(undefined, '0/1')).toBe(false);
    expect(laterLsn('0/9F', '0/A0')).toBe('0/A0');
    expect(laterLsn(undefined, '0/1')).toBe('0/1');
  });

  it('round-trips, ignores fields of a later version, and spells positions one way', () => {
    expect(parseToken(formatToken({ lsn: '16/B374D848' }))).toEqual({ lsn: '16/B374D848' });
    expect(parseToken(' lsn=0/00a0 ; gen=users:3')).toEqual({ lsn: '0/A0' });
    expect(parseToken(undefined)).toBeUndefined();
    expect(parseToken('')).toBeUndefined();
  });

  it.each([
    ['lsn=banana', /not a WAL position/],
    ['lsn', /key=value/],
    ['gen=1', /has no lsn/],
    [`lsn=0/1;${'x=1;'.repeat(200)}`, /longer than 512/],
  ])('refuses %j with 400 invalid_consistency_token', (raw, why) => {
    let caught: unknown;
    try {
      parseToken(raw);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(AppError);
    expect(caught).toMatchObject({ status: 400, code: 'invalid_consistency_token' });
    expect((caught as Error).message).toMatch(why);
  });

  it('travels in a short-lived HttpOnly cookie and is found among other cookies', () => {
    const cookie = tokenCookie({ lsn: '0/A0' });
    expect(cookie).toMatch(/^poolgate_consistency=lsn%3D0%2FA0; Path=\/; Max-Age=300; HttpOnly; SameSite=Lax$/);
    const sent = `a=1; ${cookie.split(';')[0]}; b=2`;
    expect(parseToken(tokenFromCookie(sent))).toEqual({ lsn: '0/A0' });
    expect(tokenFromCookie('a=1')).toBeUndefined();
  });
});
