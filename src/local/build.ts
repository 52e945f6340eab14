/**
 * The repository's build of the example's deploy bundles: the worker (for miniflare/workerd; `npm
 * start` runs it), the Netlify Edge function (for Deno) and the Netlify Node function, and the small
 * static site Netlify publishes. `npm run build` runs tsc (src/ → dist/lib/, the Node gateway) and
 * then this; the edge entries are bundled with worker-bundle.ts's options, as `poolgate dev` bundles
 * a user's app and the runtime tests theirs, so what is tested is what ships. Not in the package.
 */
import { build } from 'esbuild';
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { edge } from './worker-bundle.js';

export { edge };

const root = fileURLToPath(new URL('../../', import.meta.url));

export async function buildWorker(outfile = `${root}dist/worker/worker.js`): Promise<string> {
  await build({ ...edge, entryPoints: [`${root}src/fitness/entries/worker.ts`], outfile });
  return outfile;
}

export async function buildNetlifyEdge(outfile = `${root}dist/netlify/edge-functions/poolgate.js`): Promise<string> {
  await build({ ...edge, conditions: ['deno', 'worker', 'browser'], entryPoints: [`${root}src/fitness/entries/netlify-edge.ts`], outfile });
  return outfile;
}

export async function buildNetlifyFunction(outfile = `${root}dist/netlify/functions/gateway.mjs`): Promise<string> {
  await build({
    entryPoints: [`${root}src/fitness/entries/netlify-function.ts`],
    outfile,
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: 'node24',
    logLevel: 'warning',
    // pg requires CommonJS modules at run time; give the ESM bundle a require().
    banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
    external: ['pg-native'],
  });
  return outfile;
}

/** netlify.toml publishes this folder; the API itself is served by the edge function on /api/*. */
export async function buildNetlifySite(dir = `${root}dist/public`): Promise<string> {
  await mkdir(dir, { recursive: true });
  const page = `<!doctype html>
<meta charset="utf-8">
<title>poolgate</title>
<h1>poolgate</h1>
<p>The API is served under <code>/api/</code>; <code>/health</code>, <code>/health/ready</code>, <code>/stats</code> and <code>/metrics</code> show its state.</p>
`;
  await writeFile(`${dir}/index.html`, page);
  return `${dir}/index.html`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const out = await Promise.all([buildWorker(), buildNetlifyEdge(), buildNetlifyFunction(), buildNetlifySite()]);
  for (const f of out) console.log(`built ${f.replace(root, '')}`);
}
