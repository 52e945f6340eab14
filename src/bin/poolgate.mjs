#!/usr/bin/env node
// The `poolgate` command (package.json "bin"); everything else is in src/cli.ts. In a source
// checkout with its development dependencies it runs the TypeScript through tsx; in an installed
// package (which ships dist/lib/ and this file) it runs the compiled dist/lib/cli.js.
import { existsSync } from 'node:fs';

const source = new URL('../cli.ts', import.meta.url);
let cli = new URL('../../dist/lib/cli.js', import.meta.url);
if (existsSync(source)) {
  try {
    const { register } = await import('tsx/esm/api');
    register();
    cli = source;
  } catch {
    // No tsx (`npm ci --omit=dev` in a checkout): the build, if there is one.
  }
}
const { runCli } = await import(cli.href);
process.exitCode = await runCli(process.argv.slice(2));
