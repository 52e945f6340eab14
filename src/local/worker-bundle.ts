/**
 * How an edge entry becomes one ESM file workerd runs: esbuild's options (the same for workerd and
 * Deno), and the entry `poolgate dev` generates for a user's app module. The repository's build
 * (build.ts) bundles the example's entries with the same options, so what is tested is what runs.
 */
import { build, type BuildOptions } from 'esbuild';
import { dirname, join } from 'node:path';

/** How an edge entry is bundled (workerd and Deno alike); the package tests bundle a scratch project's worker with it. */
export const edge: BuildOptions = {
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  mainFields: ['browser', 'module', 'main'],
  conditions: ['workerd', 'worker', 'browser'],
  target: 'es2022',
  logLevel: 'warning',
  legalComments: 'none',
};

export interface AppWorkerOptions {
  /** The app's module, an absolute path (TypeScript or JavaScript). */
  appPath: string;
  /** Its export holding the app: `default` or `app`, as `poolgate migrate --app` finds it. */
  exportName: 'default' | 'app';
  /** Where the bundle goes. */
  outfile: string;
}

/**
 * The worker a user would write (`export default createWorker(app)` from `poolgate/workerd`),
 * generated for their module and bundled from their project, where `poolgate/workerd` resolves.
 * @example const path = await bundleAppWorker({ appPath: '/work/app.ts', exportName: 'default', outfile: '/tmp/worker.js' });
 */
export async function bundleAppWorker({ appPath, exportName, outfile }: AppWorkerOptions): Promise<string> {
  const contents = [
    `import { createWorker } from 'poolgate/workerd';`,
    `import { ${exportName} as app } from ${JSON.stringify(appPath)};`,
    `export default createWorker(app);`,
  ].join('\n');
  const resolveDir = dirname(appPath);
  await build({ ...edge, stdin: { contents, resolveDir, sourcefile: join(resolveDir, 'poolgate-dev-worker.js'), loader: 'js' }, outfile });
  return outfile;
}
