/**
 * `npm run migrate` (built: `node dist/lib/runtime/migrate.js`): applies the schema's pending
 * migrations to DATABASE_URL and exits — the deploy step for targets that do not migrate on start
 * (the Netlify function). Safe to run from several places at once (migrations take a lock).
 */
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { ConfigError, parseConfig } from '../config.js';
import { createPgPoolDatabase } from '../db/connectors/pg-pool.js';
import { migrate } from '../fitness/migrations.js';
import { startupErrorLine } from './node.js';

export async function runMigrations(env: Record<string, string | undefined>): Promise<number[]> {
  const config = parseConfig(env);
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'is required to migrate (the database to apply the schema to)');
  const database = createPgPoolDatabase(
    { ...config.pool, min: 0, max: 1, connectionString: config.databaseUrl },
    { Pool: pg.Pool, Client: pg.Client },
  );
  try {
    const db = database.forRequest({ acquired() {}, queried() {}, served() {}, internal: true });
    return await migrate((fn) => db.transaction(fn));
  } finally {
    await database.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runMigrations(process.env).then(
    (applied) => console.log(applied.length ? `poolgate: applied migrations ${applied.join(', ')}` : 'poolgate: schema up to date'),
    (err: unknown) => {
      console.error(startupErrorLine(err));
      process.exit(1);
    },
  );
}
