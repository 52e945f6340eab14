/**
 * `poolgate dev --app <module>`: for a user's app what `npm start` is for the example — embedded
 * PGlite (or DATABASE_URL), the local Neon proxy, the Node gateway and the app's edge bundle in
 * workerd (topology.ts), one command, on EDGE_PORT, NODE_PORT and NEON_PROXY_PORT. Its tools are
 * optional peers of poolgate, checked first: a missing one is one line naming it and the `npm i -D`
 * that adds it, before anything starts. Nothing here loads them until that check has passed.
 */
import { join } from 'node:path';
import type { PoolgateApp } from '../definition.js';

/** Always needed: the edge bundle (esbuild) and workerd (miniflare). */
const TOOLS = ['esbuild', 'miniflare'];
/** Needed for the embedded default, when DATABASE_URL is unset. */
const EMBEDDED = ['@electric-sql/pglite', '@electric-sql/pglite-socket'];

/** Resolved from here, as the topology's own imports will be. */
function installed(name: string): boolean {
  try {
    import.meta.resolve(name);
    return true;
  } catch {
    return false;
  }
}

const listed = (names: string[]) => (names.length === 1 ? names[0]! : `${names.slice(0, -1).join(', ')} and ${names.at(-1)}`);

/**
 * The one line when a package `poolgate dev` needs is missing, else undefined. `peerRanges` are
 * poolgate's peerDependencies, so the command it names installs versions that fit.
 * @example missingPeersLine(process.env, pkg.peerDependencies) // 'poolgate: poolgate dev needs esbuild … npm i -D esbuild@^0.28.2'
 */
export function missingPeersLine(
  env: Record<string, string | undefined>,
  peerRanges: Record<string, string>,
  isInstalled: (name: string) => boolean = installed,
): string | undefined {
  const needed = env.DATABASE_URL ? TOOLS : [...TOOLS, ...EMBEDDED];
  const missing = needed.filter((name) => !isInstalled(name));
  if (missing.length === 0) return undefined;
  const why = missing.some((name) => EMBEDDED.includes(name)) ? ' (PGlite is the embedded database when DATABASE_URL is unset)' : '';
  const specs = missing.map((name) => (peerRanges[name] ? `${name}@${peerRanges[name]}` : name));
  return `poolgate: poolgate dev needs ${listed(missing)} in your project${why}; add ${missing.length > 1 ? 'them' : 'it'} with: npm i -D ${specs.join(' ')}`;
}

/** The user's app as the CLI loaded it: the module's absolute path and the export that holds it. */
export interface LoadedApp {
  app: PoolgateApp;
  path: string;
  exportName: 'default' | 'app';
}

/**
 * Runs the topology for `loaded` until Ctrl-C (process.env configures it, as for `npm start`).
 * The edge bundle is written under the project's node_modules/.cache/poolgate/.
 */
export async function runDev(loaded: LoadedApp, cwd: string): Promise<void> {
  const [{ main }, { bundleAppWorker }] = await Promise.all([import('./topology.js'), import('./worker-bundle.js')]);
  const outfile = join(cwd, 'node_modules', '.cache', 'poolgate', 'dev-worker.js');
  await main(
    {
      app: loaded.app,
      command: 'poolgate dev',
      buildWorker: () => bundleAppWorker({ appPath: loaded.path, exportName: loaded.exportName, outfile }),
      tryLines: ({ edgeUrl }) => [`poolgate: ready; your app at the edge is ${edgeUrl} (Ctrl-C stops everything)`],
    },
    [],
  );
}
