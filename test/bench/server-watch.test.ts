/**
 * The bench's server watch (bench/server-watch.ts) in its own process, against the real PostgreSQL
 * of TEST_DATABASE_URL: it counts the client backends it sees, its own connection among them, under
 * their application_name, and an operator's connects every few ms are each admitted and counted;
 * a connect the server refuses is counted by its SQLSTATE.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { startServerWatch } from '../../bench/server-watch.js';
import { onRealPostgres, PGLITE_CANNOT, realPostgresUrl } from '../helpers/db.js';

const app = `watch-test-${process.pid}`;

describe.skipIf(!realPostgresUrl)(onRealPostgres('the server watch', PGLITE_CANNOT.serverView), () => {
  it('samples backends by application_name and counts an operator connects, admitted and refused', async () => {
    const holder = new pg.Client({ connectionString: realPostgresUrl, application_name: `${app}-holder` });
    await holder.connect();
    const nobody = new URL(realPostgresUrl!);
    nobody.pathname = `/no_such_database_${process.pid}`;
    try {
      const watch = await startServerWatch(
        {
          samplerUrl: realPostgresUrl!,
          samplerApp: `${app}-sampler`,
          operatorUrl: realPostgresUrl!,
          operatorApp: `${app}-operator`,
          operatorEveryMs: 20,
          samplerIntervalMs: 10,
        },
        { mine: app, notHolder: `!${app}-holder` },
      );
      await new Promise((r) => setTimeout(r, 400));
      const seen = await watch.stop();
      expect(seen.samples).toBeGreaterThan(5);
      expect(seen.byApp[`${app}-holder`]).toBe(1);
      expect(seen.byApp[`${app}-sampler`]).toBe(1);
      expect(seen.peaks.mine).toBeGreaterThanOrEqual(2); // holder + sampler, + the operator when a sample caught it
      expect(seen.peaks.notHolder).toBeLessThan(seen.peakAll);
      expect(seen.operator.attempted).toBeGreaterThan(3);
      expect(seen.operator.admitted).toBe(seen.operator.attempted);

      const refused = await startServerWatch(
        {
          samplerUrl: realPostgresUrl!,
          samplerApp: `${app}-sampler`,
          operatorUrl: nobody.toString(),
          operatorApp: `${app}-operator`,
          operatorEveryMs: 20,
          samplerIntervalMs: 10,
        },
        {},
      );
      await new Promise((r) => setTimeout(r, 200));
      const op = (await refused.stop()).operator;
      expect(op.admitted).toBe(0);
      expect(op.refused['3D000']).toBe(op.attempted); // invalid_catalog_name
    } finally {
      await holder.end();
    }
  });
});
