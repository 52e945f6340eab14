/**
 * `npm start` (and `npm run dev:edge`): the fitness API in the local topology, as `poolgate dev
 * --app <module>` runs a user's app — the same machinery (src/local/topology.ts), with the example's
 * own worker entry (worker.ts, bundled by the repository's build) and the demo user's curl.
 */
import { buildWorker } from '../../local/build.js';
import { main, type LocalApp } from '../../local/topology.js';
import { fitness } from '../app.js';
import { DEMO_USER_ID } from '../seed.js';

export const fitnessLocal: LocalApp = {
  app: fitness,
  buildWorker: () => buildWorker(),
  command: 'npm start',
  // Only requests that answer with this database: the demo user is there when it was seeded.
  tryLines: ({ edgeUrl, seeded }) =>
    seeded
      ? [`poolgate: try  curl ${edgeUrl}/api/users/${DEMO_USER_ID}`]
      : [
          `poolgate: try  curl ${edgeUrl}/health/ready`,
          `poolgate: no demo data on DATABASE_URL; set SEED=true to load it (user ${DEMO_USER_ID})`,
        ],
};

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/\\/g, '/'))) void main(fitnessLocal, process.argv.slice(2));
