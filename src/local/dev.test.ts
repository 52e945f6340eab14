import { describe, expect, it } from 'vitest';
import { missingPeersLine } from './dev.js';

const RANGES = {
  esbuild: '^0.28.2',
  miniflare: '^5.20261117.0-beta',
  '@electric-sql/pglite': '^0.5.14',
  '@electric-sql/pglite-socket': '^0.2.17',
};
const only =
  (...present: string[]) =>
  (name: string) =>
    present.includes(name);

describe('missingPeersLine', () => {
  it('nothing when every package it needs is there', () => {
    expect(missingPeersLine({}, RANGES, () => true)).toBeUndefined();
    expect(missingPeersLine({ DATABASE_URL: 'postgres://x' }, RANGES, only('esbuild', 'miniflare'))).toBeUndefined();
  });

  it('one missing: names it and the npm i -D with its range', () => {
    expect(missingPeersLine({ DATABASE_URL: 'postgres://x' }, RANGES, only('esbuild'))).toBe(
      'poolgate: poolgate dev needs miniflare in your project; add it with: npm i -D miniflare@^5.20261117.0-beta',
    );
  });

  it('PGlite only without DATABASE_URL, and says why', () => {
    expect(missingPeersLine({}, RANGES, only('esbuild', 'miniflare'))).toBe(
      'poolgate: poolgate dev needs @electric-sql/pglite and @electric-sql/pglite-socket in your project (PGlite is the embedded database when DATABASE_URL is unset); add them with: npm i -D @electric-sql/pglite@^0.5.14 @electric-sql/pglite-socket@^0.2.17',
    );
  });
});
