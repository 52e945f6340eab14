/**
 * Migrations against DATABASE_URL with a pool of one: poolgate's own tables and, given an app,
 * its pending migrations. `poolgate migrate [--app <module>]` calls `runMigrations`; so does the
 * deploy step for targets that do not migrate on start (the Netlify function). Run directly
 * (built: `node dist/lib/runtime/migrate.js [--app <module>]`, what `npm run migrate` does) it is
 * that same command. Safe to run from several places at once (the run takes a lock).
 */
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { ConfigError, databaseTarget, parseConfig } from '../config.js';
import { createPgPoolDatabase } from '../db/connectors/pg-pool.js';
import { migrate, MigrationError, type MigratingApp, type MigrationReport } from '../db/migrate.js';
import { describeStartupFailure } from '../errors.js';
import { StartupError } from './node.js';
import { nodeLoop } from './node-loop.js';

/**
 * Applies poolgate's tables and `app`'s pending migrations; returns the ids applied and a warning
 * line for each applied migration edited since. Throws ConfigError (no or a bad DATABASE_URL),
 * MigrationError (a bad list or app name, a failing step) or, when the database cannot be reached,
 * StartupError naming the cause — each one line for `startupErrorLine`.
 * @example const { applied, warnings } = await runMigrations(process.env, app);
 */
export async function runMigrations(env: Record<string, string | undefined>, app: MigratingApp = {}): Promise<MigrationReport> {
  const config = parseConfig(env);
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'is required to migrate (the database to apply the schema to)');
  const database = createPgPoolDatabase(
    // One connection, out of POOL_RESERVE (what the gateways leave for migrations): outside the budget.
    { ...config.pool, min: 0, max: 1, pipelineLanes: 0, budget: undefined, connectionString: config.databaseUrl },
    { Pool: pg.Pool, Client: pg.Client, loop: nodeLoop },
  );
  try {
    const db = database.forRequest({ acquired() {}, queried() {}, served() {}, internal: true });
    return await migrate((fn) => db.transaction(fn), app);
  } catch (err) {
    if (err instanceof MigrationError) throw err;
    const line = describeStartupFailure(err, databaseTarget(config.databaseUrl));
    throw line ? new StartupError(line, { cause: err }) : err;
  } finally {
    await database.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void import('../cli.js').then(async ({ runCli }) => (process.exitCode = await runCli(['migrate', ...process.argv.slice(2)])));
}
