#!/usr/bin/env node
// `poolgate` command (package.json "bin"). In a development install it runs the TypeScript
// sources through tsx; in a production install (no tsx) it runs the built dist/lib/ instead.
//   poolgate neon-proxy --database-url <url> [--port 4444]   local Neon-compatible proxy
//   poolgate start                                           the whole local topology (npm start)
//   poolgate gateway                                         the Node gateway alone (npm run start:node)
let local = new URL('./', import.meta.url);
let ext = '.ts';
try {
  const { register } = await import('tsx/esm/api');
  register();
} catch {
  local = new URL('../../dist/lib/local/', import.meta.url);
  ext = '.js';
}
const load = (path) => import(new URL(path + ext, local).href);

const [command, ...args] = process.argv.slice(2);
switch (command) {
  case 'neon-proxy': {
    const { runNeonProxyCli } = await load('neon-proxy/cli');
    process.exitCode = await runNeonProxyCli(args);
    break;
  }
  case 'start':
    await load('topology').then((m) => m.main());
    break;
  case 'gateway':
    await load('../runtime/node').then((m) => m.main());
    break;
  default:
    console.error(`poolgate: unknown command "${command ?? ''}" (use neon-proxy, start or gateway)`);
    process.exitCode = 1;
}
